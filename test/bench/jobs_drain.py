#!/usr/bin/python3
"""
jobs_drain.py - part jobs_drain of test/bench/run: how fast the workers
drain a queue of submitted text jobs.

    /usr/bin/python3 jobs_drain.py --dsn DSN --jobs 10000 [--per-call 10000]
        [--postmaster-pid PID] [--timeout 600]

In ONE transaction, queues --jobs text jobs with igny8_submit_batch
(--per-call prompts a call, at most 10,000), then COMMITs.  The workers
cannot see a job before that commit, so all of them are queued at once
without holding the workers back in any other way: the clock starts when
COMMIT returns.  Then polls igny8_jobs every 100 ms until no job of the
run is queued or running (or --timeout).

The drain time is from the commit to the last finished_at of the run
(finished_at is now() of the transaction that wrote the result; its commit
comes a little later); the poller's own end (the first poll that saw every
job finished, up to 100 ms late) is reported too.  The same machine's
clock on both sides.

Checks, after the run: every job succeeded with the canned content and one
attempt; ai_usage_log has exactly one successful row per job (joined by
request_id) and no other row since the start; both tables are logged
(relpersistence 'p').

With --rounds N, all of this N times in a row (the first round on the
table as it was, the next ones on a table holding the previous rounds'
finished jobs); the median rate of the rounds too.

Prints one JSON object.
"""

import argparse
import json
import sys
import time

import psycopg2

sys.dont_write_bytecode = True
from burst import cpu_seconds, worker_pids  # noqa: E402

ALIAS = "gpt-4"
POLL_S = 0.1


def scalar(cur, sql, params=None):
    cur.execute(sql, params)
    return cur.fetchone()[0]


def wal(cur):
    cur.execute("SELECT wal_records, wal_bytes, wal_write, wal_sync FROM pg_stat_wal")
    return [int(v) for v in cur.fetchone()]


def run_round(args, pids):
    """Queue args.jobs jobs in one transaction, commit, wait until they are
    finished; the figures and checks of that round."""
    conn = psycopg2.connect(args.dsn)
    cur = conn.cursor()
    j0 = scalar(cur, "SELECT coalesce(max(id), 0) FROM igny8_jobs")
    u0 = scalar(cur, "SELECT coalesce(max(id), 0) FROM ai_usage_log")
    persistence = {}
    cur.execute("SELECT relname, relpersistence FROM pg_class"
                " WHERE relname IN ('igny8_jobs', 'ai_usage_log') AND relkind = 'r'")
    for name, p in cur.fetchall():
        persistence[name] = p
    conn.commit()

    # the queue: one transaction, the workers see none of it before COMMIT
    t_submit = time.time()
    done = 0
    while done < args.jobs:
        n = min(args.per_call, args.jobs - done)
        prompts = ["Write about clouds, number %d" % (done + i) for i in range(n)]
        cur.execute("SELECT cardinality(igny8_submit_batch(%s::text[], %s))",
                    (prompts, ALIAS))
        if cur.fetchone()[0] != n:
            raise RuntimeError("igny8_submit_batch did not return %d ids" % n)
        done += n
    w0 = wal(cur)
    cpu0 = {p: cpu_seconds(p) for p in pids}
    t_before_commit = time.time()
    conn.commit()
    t_commit = time.time()

    conn.autocommit = True
    max_running = 0
    polls = 0
    t_seen = None
    while True:
        cur.execute("SELECT count(*) FILTER (WHERE state = 'queued'),"
                    " count(*) FILTER (WHERE state = 'running')"
                    " FROM igny8_jobs WHERE id > %s", (j0,))
        queued, running = cur.fetchone()
        polls += 1
        max_running = max(max_running, running)
        if queued == 0 and running == 0:
            t_seen = time.time()
            break
        if time.time() - t_commit > args.timeout:
            break
        time.sleep(POLL_S)
    cpu1 = {p: cpu_seconds(p) for p in pids}
    w1 = wal(cur)

    cur.execute("""
        SELECT count(*),
               count(*) FILTER (WHERE state = 'succeeded'),
               count(*) FILTER (WHERE state = 'failed'),
               count(*) FILTER (WHERE state NOT IN ('succeeded', 'failed')),
               count(*) FILTER (WHERE state = 'succeeded' AND content = %s
                                AND attempts = 1 AND inflight IS NULL),
               extract(epoch FROM min(started_at)),
               extract(epoch FROM max(finished_at)),
               percentile_cont(0.5) WITHIN GROUP (ORDER BY duration_ms),
               percentile_cont(0.99) WITHIN GROUP (ORDER BY duration_ms),
               count(DISTINCT request_id)
          FROM igny8_jobs WHERE id > %s""", (args.expect, j0))
    (total, ok, failed, other, ok_content, first_start, last_finish,
     dur_p50, dur_p99, distinct_requests) = cur.fetchone()
    cur.execute("""
        SELECT count(*), count(*) FILTER (WHERE success),
               count(*) FILTER (WHERE NOT success), count(DISTINCT request_id)
          FROM ai_usage_log WHERE id > %s""", (u0,))
    u_total, u_ok, u_failed, u_requests = cur.fetchone()
    # every job has exactly one successful usage row, under its request_id
    cur.execute("""
        SELECT count(*) FROM (
            SELECT j.id FROM igny8_jobs j
              JOIN ai_usage_log u ON u.request_id = j.request_id AND u.id > %s
             WHERE j.id > %s AND u.success AND u.attempt = 1
             GROUP BY j.id HAVING count(*) = 1) x""", (u0, j0))
    jobs_with_one_row = cur.fetchone()[0]
    conn.close()

    drain_s = float(last_finish) - t_commit if last_finish else None
    checks_ok = (total == args.jobs and ok == args.jobs and ok_content == args.jobs
                 and u_total == args.jobs and u_ok == args.jobs and u_failed == 0
                 and u_requests == args.jobs and distinct_requests == args.jobs
                 and jobs_with_one_row == args.jobs
                 and persistence == {"igny8_jobs": "p", "ai_usage_log": "p"})
    return {
        "jobs": args.jobs,
        "per_call": args.per_call,
        "submit_s": t_before_commit - t_submit,
        "commit_s": t_commit - t_before_commit,
        "first_start_s": float(first_start) - t_commit if first_start else None,
        "drain_s": drain_s,
        "jobs_per_s": args.jobs / drain_s if drain_s else None,
        "seen_s": t_seen - t_commit if t_seen else None,
        "polls": polls,
        "max_running_seen": max_running,
        "duration_ms_p50": dur_p50,
        "duration_ms_p99": dur_p99,
        "rows": {"total": total, "succeeded": ok, "failed": failed, "other": other,
                 "succeeded_with_content_1_attempt": ok_content,
                 "distinct_request_ids": distinct_requests},
        "usage": {"total": u_total, "success": u_ok, "failed": u_failed,
                  "distinct_request_ids": u_requests,
                  "jobs_with_exactly_one_successful_row": jobs_with_one_row},
        "persistence": persistence,
        "wal": dict(zip(("records", "bytes", "writes", "syncs"),
                        [b - a for a, b in zip(w0, w1)])),
        "workers_cpu_s": sum((cpu1[p] or 0) - (cpu0[p] or 0) for p in pids) if pids else None,
        "workers": len(pids),
        "checks_ok": checks_ok,
        "timed_out": t_seen is None,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dsn", required=True)
    ap.add_argument("--jobs", type=int, default=10000)
    ap.add_argument("--per-call", type=int, default=10000,
                    help="prompts per igny8_submit_batch call (max 10000)")
    ap.add_argument("--postmaster-pid", type=int,
                    help="to read the workers' CPU time")
    ap.add_argument("--expect", default="Clouds are visible masses of water droplets.",
                    help="the content every job must have")
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--rounds", type=int, default=1,
                    help="queue and drain that many times, one after another")
    args = ap.parse_args()

    pids = worker_pids(args.postmaster_pid) if args.postmaster_pid else []
    rounds = [run_round(args, pids) for _ in range(args.rounds)]
    rates = sorted(r["jobs_per_s"] or 0 for r in rounds)
    out = {"rounds": rounds,
           "median_jobs_per_s": rates[len(rates) // 2],
           "checks_ok": all(r["checks_ok"] for r in rounds)}
    json.dump(out, sys.stdout, indent=1)
    print()
    return 0 if out["checks_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
