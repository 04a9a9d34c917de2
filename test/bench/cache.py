#!/usr/bin/python3
"""
cache.py - part "cache" of test/bench/run: the latency of a response-cache
hit against a miss.

    /usr/bin/python3 cache.py --dsn DSN --calls N [--warmup W]
        [--alias gpt-4] [--uncached-alias gpt-3.5-turbo]

The alias ALIAS must be cached (a row of igny8_cache_settings) and
UNCACHED must not be; both served by the same instant backend.  Over ONE
PostgreSQL connection, runs N rounds of three timed igny8_chat calls, each
round with a prompt of its own, temperature 0:

  miss      the round's prompt on ALIAS, the first time: looked up, not
            found, sent to the backend, its answer stored
  hit       the same call again: answered from igny8_response_cache
  uncached  the same prompt on UNCACHED: no lookup at all (the baseline)

Each call is checked: miss must return cached = false, hit cached = true,
uncached cached = false.  Timing: time.perf_counter_ns() around execute and
fetch.  Prints one JSON object: for each operation its count, p50, p99,
mean, min and max in microseconds, and the number of calls whose cached
flag was not the expected one.
"""

import argparse
import json
import statistics
import sys
import time
import uuid

import psycopg2

SQL = "SELECT cached FROM igny8_chat(%s::jsonb, %s, '{\"temperature\": 0}')"


def percentile(sorted_values, p):
    """Nearest-rank percentile of an ascending list."""
    rank = max(1, -(-len(sorted_values) * p // 100))
    return sorted_values[int(rank) - 1]


def summary(values_ns):
    us = sorted(v / 1000.0 for v in values_ns)
    return {"count": len(us), "p50_us": percentile(us, 50),
            "p99_us": percentile(us, 99), "mean_us": statistics.mean(us),
            "min_us": us[0], "max_us": us[-1]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dsn", required=True)
    ap.add_argument("--calls", type=int, required=True)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--alias", default="gpt-4")
    ap.add_argument("--uncached-alias", default="gpt-3.5-turbo")
    args = ap.parse_args()

    conn = psycopg2.connect(args.dsn)
    conn.autocommit = True
    cur = conn.cursor()
    run = uuid.uuid4().hex[:8]
    times = {"miss": [], "hit": [], "uncached": []}
    wrong = 0

    def call(messages, alias):
        t0 = time.perf_counter_ns()
        cur.execute(SQL, (messages, alias))
        cached = cur.fetchone()[0]
        return time.perf_counter_ns() - t0, cached

    for i in range(args.warmup + args.calls):
        messages = json.dumps([{"role": "user",
                                "content": "Bench cache %s round %d" % (run, i)}])
        for op, alias, want in (("miss", args.alias, False),
                                ("hit", args.alias, True),
                                ("uncached", args.uncached_alias, False)):
            ns, cached = call(messages, alias)
            if cached != want:
                wrong += 1
            if i >= args.warmup:
                times[op].append(ns)

    out = {op: summary(v) for op, v in times.items()}
    out["wrong_cached_flag"] = wrong
    json.dump(out, sys.stdout)
    print()
    return 0 if wrong == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
