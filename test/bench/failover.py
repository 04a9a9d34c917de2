#!/usr/bin/python3
"""
Part (d) of test/bench/run: how fast routing leaves a dead self-hosted
backend and comes back to it.

One connection sends igny8_chat() calls for alias gpt-4 back to back (a pause
of --interval between them).  After --warm seconds the simulator's Ollama
role is taken down (its port then refuses connections, as when the SSH tunnel
drops); once the fallback has served --settle calls without touching the
self-hosted provider, the role comes back up.  Measured:

- failover: from the moment the backend went down to the first call answered
  by the fallback *without* an attempt on the self-hosted deployment (its
  circuit is open), and how many calls paid a failed attempt before that;
- recovery: from the moment the backend came back to the first call answered
  by it again (a trial after igny8_ai.circuit_cooldown, or a health probe).

Prints one JSON object.  Bounded: gives up after --limit seconds per phase.
"""
import argparse
import json
import os
import subprocess
import sys
import time

import psycopg2

CALL = ("SELECT provider, attempts FROM igny8_chat("
        "'[{\"role\": \"user\", \"content\": \"Failover probe\"}]', 'gpt-4')")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dsn", required=True)
    ap.add_argument("--sim-state", required=True,
                    help="the simulator's state directory (for simctl.py)")
    ap.add_argument("--interval", type=float, default=0.05)
    ap.add_argument("--warm", type=float, default=1.0)
    ap.add_argument("--settle", type=int, default=20)
    ap.add_argument("--limit", type=float, default=120.0)
    args = ap.parse_args()

    conn = psycopg2.connect(args.dsn)
    conn.autocommit = True
    cur = conn.cursor()

    def call():
        t = time.monotonic()
        cur.execute(CALL)
        provider, attempts = cur.fetchone()
        return t, time.monotonic() - t, provider, attempts

    simctl = [sys.executable,
              os.path.join(os.path.dirname(os.path.abspath(__file__)),
                           "..", "sim", "simctl.py"),
              "--state-dir", args.sim_state]

    def sim(*words):
        subprocess.run(simctl + list(words), check=True,
                       stdout=subprocess.DEVNULL)

    out = {"interval_s": args.interval}

    # warm up: the self-hosted backend answers
    end = time.monotonic() + args.warm
    while time.monotonic() < end:
        _, _, provider, _ = call()
        if provider != "self_hosted_ai":
            sys.exit("warm-up call answered by %s" % provider)
        time.sleep(args.interval)

    # the tunnel drops
    sim("down", "ollama")
    t_down = time.monotonic()
    paid, calls, served_clean = 0, 0, 0
    slowest = 0.0
    while time.monotonic() - t_down < args.limit:
        t, dur, provider, attempts = call()
        calls += 1
        slowest = max(slowest, dur)
        if provider == "self_hosted_ai":
            sys.exit("a call was answered by the backend that is down")
        if attempts > 1:
            paid += 1
        else:
            served_clean += 1
            if served_clean == 1:
                out["failover_s"] = t - t_down
                out["calls_that_paid_a_failed_attempt"] = paid
            if served_clean >= args.settle:
                break
        time.sleep(args.interval)
    out["calls_while_down"] = calls
    out["slowest_call_while_down_ms"] = slowest * 1000.0

    # the tunnel is back
    sim("up", "ollama")
    t_up = time.monotonic()
    calls = 0
    while time.monotonic() - t_up < args.limit:
        t, dur, provider, attempts = call()
        calls += 1
        if provider == "self_hosted_ai":
            out["recovery_s"] = t - t_up
            break
        time.sleep(args.interval)
    out["calls_until_recovered"] = calls
    print(json.dumps(out))


if __name__ == "__main__":
    main()
