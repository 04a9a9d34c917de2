#!/usr/bin/python3
"""
jobs_latency.py - part jobs_latency of test/bench/run: from the COMMIT that
submits a job to the backend receiving its request.

    /usr/bin/python3 jobs_latency.py --dsn DSN --sim-state DIR --jobs 500
        [--warmup 20]

One connection submits one text job per transaction, one after another:
BEGIN; SELECT igny8_submit_text('... [[sim ollama:tag=jlN]]', 'gpt-4');
COMMIT.  The client reads time.time() right before sending COMMIT and right
after it returns, then waits for the job's NOTIFY igny8_ai_jobs (LISTEN on
a second connection) before the next one, so only one job is ever in the
system.  The backend is the simulator's Ollama role (no delay): its log
gives, per request, t_start, the time.time() at which it read the request
line.  Same machine, same clock.

Reported per job (microseconds):
  arrival   t_start - (COMMIT returned)   the goal's figure
  arrival_from_commit_sent   t_start - (COMMIT sent)
  notify    NOTIFY received - (COMMIT returned): the whole round trip,
            including the finish transaction and its WAL flush
and the phases of the arrival: COMMIT returned -> the claim transaction's
start (started_at); -> the attempt's start (its usage row's created_at,
set before the transaction that records the attempt as sent, whose WAL
flush comes before the send); -> the arrival.

Checks: every job succeeded with one attempt and one successful usage row;
the simulator got exactly one request per tag.

Prints one JSON object.
"""

import argparse
import json
import os
import select
import sys
import time

import psycopg2
import psycopg2.extensions

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "sim"))
from latency import percentile  # noqa: E402
import simctl  # noqa: E402

ALIAS = "gpt-4"


def summary(values_s):
    us = sorted(v * 1e6 for v in values_s)
    return {"count": len(us), "p50_us": percentile(us, 50),
            "p90_us": percentile(us, 90), "p99_us": percentile(us, 99),
            "min_us": us[0], "max_us": us[-1], "mean_us": sum(us) / len(us)}


def wait_notify(lconn, job_id, timeout):
    """Wait for the NOTIFY of a finished job; returns when it came."""
    deadline = time.time() + timeout
    while True:
        lconn.poll()
        while lconn.notifies:
            n = lconn.notifies.pop(0)
            t = time.time()
            try:
                payload = json.loads(n.payload)
            except ValueError:
                continue
            if payload.get("id") == job_id:
                return t, payload.get("state")
        left = deadline - time.time()
        if left <= 0:
            return None, None
        select.select([lconn], [], [], left)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dsn", required=True)
    ap.add_argument("--sim-state", required=True)
    ap.add_argument("--jobs", type=int, default=500)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--timeout", type=float, default=30)
    args = ap.parse_args()

    ports = simctl.load_ports(args.sim_state)
    simctl.control(ports, "POST", "/reset")

    lconn = psycopg2.connect(args.dsn)
    lconn.set_isolation_level(psycopg2.extensions.ISOLATION_LEVEL_AUTOCOMMIT)
    lconn.cursor().execute("LISTEN igny8_ai_jobs")
    conn = psycopg2.connect(args.dsn)
    cur = conn.cursor()
    cur.execute("SELECT coalesce(max(id), 0) FROM ai_usage_log")
    u0 = cur.fetchone()[0]
    conn.commit()

    runs = []           # (tag, job id, t_sent, t_returned, t_notify, state)
    hung = 0
    for i in range(args.warmup + args.jobs):
        tag = "jl%d" % i
        cur.execute("SELECT igny8_submit_text(%s, %s)",
                    ("Write about clouds [[sim ollama:tag=%s]]" % tag, ALIAS))
        job_id = cur.fetchone()[0]
        t_sent = time.time()
        conn.commit()
        t_returned = time.time()
        t_notify, state = wait_notify(lconn, job_id, args.timeout)
        if t_notify is None:
            hung += 1
        if i >= args.warmup:
            runs.append((tag, job_id, t_sent, t_returned, t_notify, state))

    arrivals = {}
    dup = 0
    for rec in simctl.control(ports, "GET", "/log", {"role": "ollama"}):
        tag = rec.get("tag")
        if tag:
            if tag in arrivals:
                dup += 1
            arrivals[tag] = rec["t_start"]

    ids = [r[1] for r in runs]
    conn.autocommit = True
    cur.execute("""
        SELECT count(*) FILTER (WHERE j.state = 'succeeded' AND j.attempts = 1),
               count(*) FILTER (WHERE j.state <> 'succeeded')
          FROM igny8_jobs j WHERE j.id = ANY(%s)""", (ids,))
    ok, not_ok = cur.fetchone()
    cur.execute("""
        SELECT count(*), count(*) FILTER (WHERE u.success)
          FROM ai_usage_log u JOIN igny8_jobs j ON j.request_id = u.request_id
         WHERE u.id > %s AND j.id = ANY(%s)""", (u0, ids))
    u_rows, u_ok = cur.fetchone()
    # where the time goes: the claim transaction's start (started_at) and
    # the attempt's start (its usage row's created_at: when the worker
    # decided to send it, before the transaction that records it as sent)
    cur.execute("""
        SELECT j.id, extract(epoch FROM j.started_at), extract(epoch FROM u.created_at)
          FROM igny8_jobs j JOIN ai_usage_log u ON u.request_id = j.request_id
         WHERE u.id > %s AND j.id = ANY(%s)""", (u0, ids))
    phases = {r[0]: (float(r[1]), float(r[2])) for r in cur.fetchall()}
    conn.close()
    lconn.close()

    missing = [r[0] for r in runs if r[0] not in arrivals]
    arrival = [arrivals[r[0]] - r[3] for r in runs if r[0] in arrivals]
    arrival_sent = [arrivals[r[0]] - r[2] for r in runs if r[0] in arrivals]
    commit = [r[3] - r[2] for r in runs]
    notify = [r[4] - r[3] for r in runs if r[4] is not None]
    claim = [phases[r[1]][0] - r[3] for r in runs if r[1] in phases]
    attempt = [phases[r[1]][1] - phases[r[1]][0] for r in runs if r[1] in phases]
    send = [arrivals[r[0]] - phases[r[1]][1] for r in runs
            if r[1] in phases and r[0] in arrivals]
    checks_ok = (ok == args.jobs and not missing and dup == 0 and hung == 0
                 and u_rows == args.jobs and u_ok == args.jobs)
    out = {
        "jobs": args.jobs, "warmup": args.warmup,
        "arrival": summary(arrival) if arrival else None,
        "arrival_from_commit_sent": summary(arrival_sent) if arrival_sent else None,
        "commit": summary(commit),
        "notify": summary(notify) if notify else None,
        "phase_claim_start": summary(claim) if claim else None,
        "phase_claim_to_attempt": summary(attempt) if attempt else None,
        "phase_attempt_to_arrival": summary(send) if send else None,
        "negative_arrivals": sum(1 for v in arrival if v < 0),
        "succeeded": ok, "not_succeeded": not_ok,
        "usage_rows": u_rows, "usage_success": u_ok,
        "missing_at_backend": len(missing), "duplicate_requests": dup,
        "hung": hung,
        "checks_ok": checks_ok,
    }
    json.dump(out, sys.stdout, indent=1)
    print()
    return 0 if checks_ok else 1


if __name__ == "__main__":
    sys.exit(main())
