#!/usr/bin/python3
"""
jobs_hol.py - part jobs_hol of test/bench/run: a slow job does not hold up
the fast ones submitted with it (no head-of-line blocking).

    /usr/bin/python3 jobs_hol.py --dsn DSN --sim-state DIR [--fast 100]
        [--slow-delay 2]

In one transaction: first ONE slow job (igny8_submit_text, prompt with the
simulator's directive [[sim ollama:delay=S tag=hol_slow]]: the backend
answers after S seconds), then --fast fast jobs (one igny8_submit_batch,
tag hol_fast, no delay); COMMIT.  The slow job has the lowest id, so it is
claimed first.  Then polls igny8_jobs every 20 ms until all are finished.

Reported: each job's finished_at relative to the time COMMIT returned
(same machine, same clock): the fast jobs' p50 / p99 / max, the slow
job's; and how many fast jobs finished before the slow one.  Checks:
every job succeeded with one attempt, one successful usage row each, and
the simulator got 1 slow and --fast fast requests.

Prints one JSON object.
"""

import argparse
import json
import os
import sys
import time

import psycopg2

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "sim"))
from latency import percentile  # noqa: E402
import simctl  # noqa: E402

ALIAS = "gpt-4"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dsn", required=True)
    ap.add_argument("--sim-state", required=True)
    ap.add_argument("--fast", type=int, default=100)
    ap.add_argument("--slow-delay", type=float, default=2)
    ap.add_argument("--timeout", type=float, default=60)
    args = ap.parse_args()

    ports = simctl.load_ports(args.sim_state)
    simctl.control(ports, "POST", "/reset")
    conn = psycopg2.connect(args.dsn)
    cur = conn.cursor()
    cur.execute("SELECT coalesce(max(id), 0) FROM ai_usage_log")
    u0 = cur.fetchone()[0]
    conn.commit()

    cur.execute("SELECT igny8_submit_text(%s, %s)",
                ("Write slowly [[sim ollama:delay=%g tag=hol_slow]]" % args.slow_delay,
                 ALIAS))
    slow_id = cur.fetchone()[0]
    cur.execute("SELECT igny8_submit_batch(%s::text[], %s)",
                (["Write fast %d [[sim ollama:tag=hol_fast]]" % i
                  for i in range(args.fast)], ALIAS))
    fast_ids = cur.fetchone()[0]
    conn.commit()
    t_commit = time.time()
    ids = [slow_id] + fast_ids

    conn.autocommit = True
    fast_all_seen = None
    while True:
        cur.execute("SELECT count(*) FILTER (WHERE state IN ('queued', 'running')),"
                    " count(*) FILTER (WHERE id <> %s AND state IN ('queued', 'running'))"
                    " FROM igny8_jobs WHERE id = ANY(%s)", (slow_id, ids))
        unfinished, fast_unfinished = cur.fetchone()
        if fast_unfinished == 0 and fast_all_seen is None:
            fast_all_seen = time.time() - t_commit
        if unfinished == 0 or time.time() - t_commit > args.timeout:
            break
        time.sleep(0.02)

    cur.execute("""
        SELECT id, state, attempts, extract(epoch FROM started_at),
               extract(epoch FROM finished_at), duration_ms
          FROM igny8_jobs WHERE id = ANY(%s)""", (ids,))
    rows = {r[0]: r for r in cur.fetchall()}
    cur.execute("""
        SELECT count(*), count(*) FILTER (WHERE u.success)
          FROM ai_usage_log u JOIN igny8_jobs j ON j.request_id = u.request_id
         WHERE u.id > %s AND j.id = ANY(%s)""", (u0, ids))
    u_rows, u_ok = cur.fetchone()
    conn.close()
    log = simctl.control(ports, "GET", "/log", {"role": "ollama"})
    sim_slow = sum(1 for r in log if r.get("tag") == "hol_slow")
    sim_fast = sum(1 for r in log if r.get("tag") == "hol_fast")

    def done_s(i):
        r = rows.get(i)
        return float(r[4]) - t_commit if r and r[4] is not None else None

    ok = sum(1 for r in rows.values() if r[1] == "succeeded" and r[2] == 1)
    fast_done = sorted(d for d in (done_s(i) for i in fast_ids) if d is not None)
    slow_done = done_s(slow_id)
    slow_start = rows[slow_id][3]
    fast_starts = sorted(float(rows[i][3]) - t_commit for i in fast_ids
                         if rows[i][3] is not None)
    checks_ok = (ok == len(ids) and u_rows == len(ids) and u_ok == len(ids)
                 and sim_slow == 1 and sim_fast == args.fast
                 and len(fast_done) == args.fast and slow_done is not None)
    out = {
        "fast": args.fast, "slow_delay_s": args.slow_delay,
        "slow_started_s": float(slow_start) - t_commit if slow_start is not None else None,
        "slow_done_s": slow_done,
        "fast_first_start_s": fast_starts[0] if fast_starts else None,
        "fast_done_p50_s": percentile(fast_done, 50),
        "fast_done_p99_s": percentile(fast_done, 99),
        "fast_done_max_s": fast_done[-1] if fast_done else None,
        "fast_all_seen_by_poller_s": fast_all_seen,
        "fast_before_slow": sum(1 for d in fast_done
                                if slow_done is not None and d < slow_done),
        "succeeded_1_attempt": ok, "jobs": len(ids),
        "usage_rows": u_rows, "usage_success": u_ok,
        "sim_requests_slow": sim_slow, "sim_requests_fast": sim_fast,
        "checks_ok": checks_ok,
    }
    json.dump(out, sys.stdout, indent=1)
    print()
    return 0 if checks_ok else 1


if __name__ == "__main__":
    sys.exit(main())
