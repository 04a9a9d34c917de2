#!/usr/bin/python3
"""
first_call.py - what the first igny8_generate_text call of a new connection
costs its backend, as an application without a connection pool pays it
(Django's default CONN_MAX_AGE = 0 opens a connection per request), and
how much of that any first statement costs.

    /usr/bin/python3 first_call.py --dsn DSN [--connections N]

Opens 2 N connections one after the other, in turn of two kinds.  On each,
it reads the backend's CPU time (burst.cpu_seconds: /proc/PID/schedstat,
nanoseconds; the backend must run on this machine) around each
statement, then closes the connection:

- the call's connections: the first call of igny8_generate_text, the
  second call, and a `SELECT 1`;
- the baseline's: a built-in function of the same two text literals,
  `SELECT length(...) + length(...)`, twice: what being a new backend's
  first statement costs a statement that writes nothing (catalog caches
  filled, memory first touched).

The time the backend spent starting up (authentication, catalog caches of
the connection) is not counted: it is over before the first statement.

Prints one JSON object, in microseconds, the medians over the connections:
"first_us", "second_us", "select1_us" and "extra_us" (each connection's
first call minus its second: what being first costs the call), the same
of the baseline ("baseline_first_us", "baseline_second_us",
"baseline_extra_us"), and "own_extra_us", extra_us minus
baseline_extra_us: what being first costs the call beyond what it costs
the built-in.  The `SELECT 1` shows what any statement costs at the
moment (a busy machine makes them all dearer).  Exits 1 unless every
statement returned a value.
"""

import argparse
import json
import statistics
import sys

import psycopg2

sys.dont_write_bytecode = True          # no __pycache__ in the source tree
from burst import cpu_seconds  # noqa: E402

PROMPT, ALIAS = "Write about clouds", "gpt-4"
SQL = "SELECT igny8_generate_text('%s', '%s')" % (PROMPT, ALIAS)
BASELINE_SQL = "SELECT length('%s') + length('%s')" % (PROMPT, ALIAS)


def cpu_us(pid):
    return cpu_seconds(pid) * 1e6


def measure(dsn, stmts):
    """The backend CPU of each statement on a new connection, or None if
    one returned nothing."""
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    try:
        pid = conn.get_backend_pid()
        cur = conn.cursor()
        t = [cpu_us(pid)]
        for stmt in stmts:
            cur.execute(stmt)
            if not cur.fetchone()[0]:
                print("empty answer to %s" % stmt, file=sys.stderr)
                return None
            t.append(cpu_us(pid))
    finally:
        conn.close()
    return [b - a for a, b in zip(t, t[1:])]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dsn", required=True)
    ap.add_argument("--connections", type=int, default=100)
    args = ap.parse_args()
    if args.connections < 1:
        ap.error("--connections must be at least 1")
    runs = {SQL: [], BASELINE_SQL: []}
    for _ in range(args.connections):
        for call, stmts in ((SQL, (SQL, SQL, "SELECT 1")),
                            (BASELINE_SQL, (BASELINE_SQL, BASELINE_SQL))):
            us = measure(args.dsn, stmts)
            if us is None:
                return 1
            runs[call].append(us)

    def median(call, i):
        return statistics.median(r[i] for r in runs[call])

    def extra(call):
        return statistics.median(r[0] - r[1] for r in runs[call])

    json.dump({"connections": args.connections,
               "first_us": median(SQL, 0),
               "second_us": median(SQL, 1),
               "select1_us": median(SQL, 2),
               "extra_us": extra(SQL),
               "baseline_first_us": median(BASELINE_SQL, 0),
               "baseline_second_us": median(BASELINE_SQL, 1),
               "baseline_extra_us": extra(BASELINE_SQL),
               "own_extra_us": extra(SQL) - extra(BASELINE_SQL)},
              sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
