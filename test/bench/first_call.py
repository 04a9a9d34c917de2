#!/usr/bin/python3
"""
first_call.py - what the first igny8_generate_text call of a new connection
costs its backend, as an application without a connection pool pays it
(Django's default CONN_MAX_AGE = 0 opens a connection per request).

    /usr/bin/python3 first_call.py --dsn DSN [--connections N]

Opens N connections one after the other.  On each, it reads the backend's
CPU time (burst.cpu_seconds: /proc/PID/schedstat, nanoseconds; the
backend must run on this machine) around three statements: the
connection's first call of igny8_generate_text, its second call, and a
`SELECT 1`, then closes the connection.  The time the backend spent starting up (authentication,
catalog caches) is not counted: it is over before the first statement.

Prints one JSON object: the medians over the connections, in microseconds,
of the first call, the second call and the `SELECT 1` ("first_us",
"second_us", "select1_us"), and "extra_us", the median of each
connection's first call minus its second: what being first costs.  The
`SELECT 1` shows what any statement costs at the moment (a busy machine
makes them all dearer).  Exits 1 unless every call returned the answer.
"""

import argparse
import json
import statistics
import sys

import psycopg2

sys.dont_write_bytecode = True          # no __pycache__ in the source tree
from burst import cpu_seconds  # noqa: E402

SQL = "SELECT igny8_generate_text('Write about clouds', 'gpt-4')"


def cpu_us(pid):
    return cpu_seconds(pid) * 1e6


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dsn", required=True)
    ap.add_argument("--connections", type=int, default=100)
    args = ap.parse_args()
    if args.connections < 1:
        ap.error("--connections must be at least 1")
    first, second, select1, extra = [], [], [], []
    for _ in range(args.connections):
        conn = psycopg2.connect(args.dsn)
        conn.autocommit = True
        try:
            pid = conn.get_backend_pid()
            cur = conn.cursor()
            t = [cpu_us(pid)]
            for stmt in (SQL, SQL, "SELECT 1"):
                cur.execute(stmt)
                if not cur.fetchone()[0]:
                    print("empty answer to %s" % stmt, file=sys.stderr)
                    return 1
                t.append(cpu_us(pid))
        finally:
            conn.close()
        first.append(t[1] - t[0])
        second.append(t[2] - t[1])
        select1.append(t[3] - t[2])
        extra.append(first[-1] - second[-1])
    json.dump({"connections": args.connections,
               "first_us": statistics.median(first),
               "second_us": statistics.median(second),
               "select1_us": statistics.median(select1),
               "extra_us": statistics.median(extra)}, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
