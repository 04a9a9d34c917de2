#!/usr/bin/python3
"""
jobs_images_memory.py - part jobs_images_memory of test/bench/run: the
workers' memory while a long queue of image jobs drains through a
one-at-a-time ComfyUI.

    /usr/bin/python3 jobs_images_memory.py --dsn DSN --sim-state DIR
        [--jobs 1000] [--size 512x512] [--run-time 0.02]

The comfyui provider must be the only one enabled, with max_concurrent 1
(test/bench/run sets that up).  In one transaction, queues --jobs image
jobs (igny8_submit_image with alias dall-e-2, the simulator's directive
[[sim comfyui:run_time=S]]: each prompt samples for S seconds in ComfyUI's
single execution queue); COMMIT.  The workers claim up to their share of
igny8_ai.max_running_jobs (and igny8_ai.max_running_jobs_per_account) at
once; those wait for the provider's one place in the worker.

The igny8_ai workers' pids come from igny8_worker_status().  Their
/proc/PID/status (VmRSS, RssAnon, RssShmem; and, once a second, from
/proc/PID/smaps, the part of RssShmem in /dev/shm) is read before the submit,
every 100 ms until no job of the run is queued or running, and one idle
second after that; per worker: start / max / end, and a per-100-jobs
trace of the sum.

Checks: every job succeeded with one attempt, its image a PNG of the size
asked; exactly --jobs successful comfyui usage rows for them.

Prints one JSON object.
"""

import argparse
import json
import os
import re
import sys
import threading
import time

import psycopg2

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "sim"))
from burst import memory_kb  # noqa: E402
from images import dsm_rss_kb  # noqa: E402
import simctl  # noqa: E402

ALIAS = "dall-e-2"
SAMPLE_S = 0.1
FIELDS = ("VmRSS", "RssAnon", "RssShmem", "DsmRss")


def read(pids, smaps=False):
    """/proc/PID/status of each worker; with SMAPS also "DsmRss", the part
    of RssShmem in /dev/shm mappings (the payload area's dynamic shared
    memory; the rest of RssShmem is mostly shared_buffers pages)."""
    out = {p: memory_kb(p) for p in pids}
    if smaps:
        for p in pids:
            if out[p]:
                out[p]["DsmRss"] = dsm_rss_kb(p)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dsn", required=True)
    ap.add_argument("--sim-state", required=True)
    ap.add_argument("--jobs", type=int, default=1000)
    ap.add_argument("--size", default="512x512")
    ap.add_argument("--run-time", type=float, default=0.02)
    ap.add_argument("--timeout", type=float, default=1200)
    args = ap.parse_args()
    width, height = (int(v) for v in args.size.split("x"))

    ports = simctl.load_ports(args.sim_state)
    simctl.control(ports, "POST", "/reset")
    conn = psycopg2.connect(args.dsn)
    conn.autocommit = True
    cur = conn.cursor()
    cur.execute("SELECT pid FROM igny8_worker_status() WHERE pid IS NOT NULL ORDER BY worker")
    pids = [r[0] for r in cur.fetchall()]
    cur.execute("SELECT coalesce(max(id), 0) FROM ai_usage_log")
    u0 = cur.fetchone()[0]
    cur.execute("SELECT coalesce(max(id), 0) FROM igny8_jobs")
    j0 = cur.fetchone()[0]

    start = read(pids, smaps=True)
    peak = {p: dict(start[p]) for p in pids}
    trace = []          # (s since commit, finished jobs, VmRSS sum kB)
    state = {"finished": 0}
    stopping = threading.Event()

    def sample(t0):
        n = 0
        while not stopping.is_set():
            now = read(pids, smaps=(n % 10 == 0))     # smaps once a second
            n += 1
            for p in pids:
                if now[p]:
                    for k in FIELDS:
                        peak[p][k] = max(peak[p].get(k, 0), now[p].get(k, 0))
            trace.append((time.time() - t0, state["finished"],
                          sum(now[p]["VmRSS"] for p in pids if now[p])))
            stopping.wait(SAMPLE_S)

    conn.autocommit = False
    cur.execute("""
        SELECT count(igny8_submit_image(format(%s, g), %s, %s))
          FROM generate_series(1, %s) g""",
                ("A lighthouse at dusk, number %%s [[sim comfyui:run_time=%g]]"
                 % args.run_time, ALIAS, args.size, args.jobs))
    if cur.fetchone()[0] != args.jobs:
        raise RuntimeError("not every job was queued")
    conn.commit()
    t_commit = time.time()
    conn.autocommit = True
    sampler = threading.Thread(target=sample, args=(t_commit,), daemon=True)
    sampler.start()
    max_running = 0
    while time.time() - t_commit < args.timeout:
        cur.execute("SELECT count(*) FILTER (WHERE state IN ('queued', 'running')),"
                    " count(*) FILTER (WHERE state = 'running')"
                    " FROM igny8_jobs WHERE id > %s", (j0,))
        unfinished, running = cur.fetchone()
        max_running = max(max_running, running)
        state["finished"] = args.jobs - unfinished
        if unfinished == 0:
            break
        time.sleep(0.2)
    t_done = time.time() - t_commit
    stopping.set()
    sampler.join()
    time.sleep(1)
    end = read(pids, smaps=True)

    cur.execute("""
        SELECT count(*) FILTER (WHERE state = 'succeeded' AND attempts = 1
                                AND width = %s AND height = %s
                                AND substr(image, 1, 8) = '\\x89504e470d0a1a0a'::bytea),
               count(*) FILTER (WHERE state <> 'succeeded'),
               avg(octet_length(image))
          FROM igny8_jobs WHERE id > %s""", (width, height, j0))
    ok, not_ok, avg_bytes = cur.fetchone()
    cur.execute("""
        SELECT coalesce(error_code, '') || ' ' || coalesce(error_detail, error_message, ''),
               count(*)
          FROM igny8_jobs WHERE id > %s AND state <> 'succeeded'
         GROUP BY 1 ORDER BY 2 DESC""", (j0,))
    # "... (max_concurrent 1, 123 waiting)": the count varies, not the cause
    failures = {}
    for what, n in cur.fetchall():
        what = re.sub(r"\d+ waiting", "N waiting", what)
        failures[what] = failures.get(what, 0) + n
    cur.execute("""
        SELECT count(*), count(*) FILTER (WHERE u.success AND u.provider = 'comfyui')
          FROM ai_usage_log u JOIN igny8_jobs j ON j.request_id = u.request_id
         WHERE u.id > %s AND j.id > %s""", (u0, j0))
    u_rows, u_ok = cur.fetchone()
    cur.execute("SELECT count(*) FROM ai_usage_log WHERE id > %s", (u0,))
    u_all = cur.fetchone()[0]
    conn.close()
    counts = simctl.control(ports, "GET", "/counts")

    # the trace, one point per tenth of the jobs finished
    points, step = [], max(args.jobs // 10, 1)
    for t, fin, rss in trace:
        if not points or fin >= points[-1]["finished"] + step:
            points.append({"s": round(t, 1), "finished": fin, "VmRSS_kB": rss})
    if trace:
        points.append({"s": round(trace[-1][0], 1), "finished": trace[-1][1],
                       "VmRSS_kB": trace[-1][2]})

    checks_ok = (ok == args.jobs and not_ok == 0 and u_rows == args.jobs
                 and u_ok == args.jobs and u_all == args.jobs)
    out = {
        "jobs": args.jobs, "size": args.size, "run_time_s": args.run_time,
        "drain_s": t_done, "images_per_s": args.jobs / t_done,
        "max_running_seen": max_running,
        "image_bytes_avg": float(avg_bytes) if avg_bytes else None,
        "workers": [{"pid": p, "start": start[p], "max": peak[p], "end": end[p]}
                    for p in pids],
        "trace": points,
        "samples": len(trace),
        "succeeded_png_1_attempt": ok, "not_succeeded": not_ok,
        "failures": failures,
        "usage_rows": u_rows, "usage_success_comfyui": u_ok, "usage_rows_all": u_all,
        "sim_counts": counts,
        "checks_ok": checks_ok,
    }
    json.dump(out, sys.stdout, indent=1)
    print()
    return 0 if checks_ok else 1


if __name__ == "__main__":
    sys.exit(main())
