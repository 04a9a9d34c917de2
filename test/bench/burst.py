#!/usr/bin/python3
"""
burst.py - part (c) of test/bench/run: many AI requests in flight at once.

    /usr/bin/python3 burst.py --dsn DSN --callers N --postmaster-pid PID

Opens N PostgreSQL connections, one per thread, and only once every one of
them is connected releases all the threads at the same instant (a
threading.Barrier) to run

    SELECT igny8_generate_text('Write about clouds', 'gpt-4')

against a backend that takes a fixed time to answer.  If the extension keeps
all N requests in flight at once, the last answer arrives about one backend
delay after the release.

From the release until 1 s after the last answer, a sampler reads
/proc/PID/status of the igny8_ai background workers (children of
--postmaster-pid whose process title contains "igny8_ai worker": other
PostgreSQL servers on the machine have workers of the same name) every
50 ms, and keeps the sample with the highest VmRSS.

Prints one JSON object: wall time from release to the last answer, the
spread of the release, per-call latency percentiles, failures, and per
worker the memory before, at the highest sample and 1 s after the burst
(VmRSS, VmHWM, RssAnon, RssShmem in kB).
"""

import argparse
import json
import os
import sys
import threading
import time

import psycopg2

SQL = "SELECT igny8_generate_text('Write about clouds', 'gpt-4')"
WORKER_TITLE = "igny8_ai worker"
SAMPLE_INTERVAL_S = 0.05
MEM_FIELDS = ("VmRSS", "VmHWM", "RssAnon", "RssShmem")


def worker_pids(postmaster_pid):
    """PIDs of the igny8_ai workers of one PostgreSQL server."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry) as f:
                stat = f.read()
            # the field after "(comm)" is the state, then the parent's pid
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid != postmaster_pid:
                continue
            with open("/proc/%s/cmdline" % entry, "rb") as f:
                title = f.read().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError, ValueError):
            continue                    # gone meanwhile
        if WORKER_TITLE in title:
            pids.append(int(entry))
    return sorted(pids)


def memory_kb(pid):
    """The MEM_FIELDS of /proc/PID/status, in kB, or None if it is gone."""
    out = {}
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                name, _, value = line.partition(":")
                if name in MEM_FIELDS:
                    out[name] = int(value.split()[0])
    except OSError:
        return None
    return out


class MemorySampler(threading.Thread):
    """Keeps, per worker, the sample with the highest VmRSS seen."""

    def __init__(self, pids):
        super().__init__(daemon=True)
        self.pids = pids
        self.peak = {pid: None for pid in pids}
        self.stopping = threading.Event()

    def run(self):
        while not self.stopping.is_set():
            for pid in self.pids:
                m = memory_kb(pid)
                if m and (self.peak[pid] is None
                          or m["VmRSS"] > self.peak[pid]["VmRSS"]):
                    self.peak[pid] = m
            self.stopping.wait(SAMPLE_INTERVAL_S)

    def stop(self):
        self.stopping.set()
        self.join()


def percentile(sorted_values, p):
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return None
    rank = max(1, -(-len(sorted_values) * p // 100))
    return sorted_values[int(rank) - 1]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dsn", required=True)
    ap.add_argument("--callers", type=int, default=1000)
    ap.add_argument("--postmaster-pid", type=int, required=True)
    ap.add_argument("--timeout", type=float, default=120.0,
                    help="give up on the burst after this many seconds")
    args = ap.parse_args()
    n = args.callers

    threading.stack_size(512 * 1024)    # 1000 threads: keep them small
    barrier = threading.Barrier(n + 1)  # the callers and this thread
    started = [None] * n                # perf_counter() at release
    finished = [None] * n               # perf_counter() at the answer
    errors = []                         # (index, message)
    lock = threading.Lock()
    conns = [None] * n

    def caller(i):
        try:
            conn = psycopg2.connect(args.dsn, connect_timeout=60)
            conn.autocommit = True
            conns[i] = conn
        except psycopg2.Error as exc:
            with lock:
                errors.append((i, "connect: %s" % str(exc).strip()))
            barrier.abort()             # nobody waits for a missing caller
            return
        try:
            barrier.wait()
        except threading.BrokenBarrierError:
            return
        try:
            cur = conn.cursor()
            started[i] = time.perf_counter()
            cur.execute(SQL)
            text = cur.fetchone()[0]
            finished[i] = time.perf_counter()
            if not text:
                raise RuntimeError("empty answer")
        except Exception as exc:        # report every failure, keep going
            with lock:
                errors.append((i, str(exc).strip().splitlines()[0]))

    pids = worker_pids(args.postmaster_pid)
    before = {pid: memory_kb(pid) for pid in pids}

    threads = [threading.Thread(target=caller, args=(i,), daemon=True)
               for i in range(n)]
    t_connect = time.perf_counter()
    for t in threads:
        t.start()

    sampler = MemorySampler(pids)
    try:
        barrier.wait(timeout=args.timeout)
    except threading.BrokenBarrierError:
        for t in threads:
            t.join(timeout=5)
        json.dump({"callers": n, "connected": sum(c is not None for c in conns),
                   "errors": errors[:10], "nerrors": len(errors),
                   "aborted": True}, sys.stdout)
        sys.stdout.write("\n")
        return 1
    release = time.perf_counter()
    release_epoch = time.time()         # to compare with the backend's log
    connect_s = release - t_connect
    sampler.start()

    deadline = release + args.timeout
    for t in threads:
        t.join(timeout=max(0.0, deadline - time.perf_counter()))
    hung = sum(t.is_alive() for t in threads)
    time.sleep(1.0)                     # let the workers settle, then sample
    sampler.stop()
    after = {pid: memory_kb(pid) for pid in pids}

    for c in conns:
        if c is not None:
            try:
                c.close()
            except psycopg2.Error:
                pass

    ok = [i for i in range(n) if finished[i] is not None]
    latencies = sorted(finished[i] - started[i] for i in ok)
    result = {
        "callers": n,
        "answered": len(ok),
        "nerrors": len(errors),
        "errors": errors[:10],
        "hung": hung,
        "connect_s": connect_s,
        "release_epoch": release_epoch,
        # from the release to the last answer
        "wall_s": (max(finished[i] for i in ok) - release) if ok else None,
        # how long the release itself took: the last caller to send its query
        "release_spread_s": (max(started[i] for i in ok) - release) if ok else None,
        "latency_p50_s": percentile(latencies, 50),
        "latency_p99_s": percentile(latencies, 99),
        "latency_max_s": latencies[-1] if latencies else None,
        "workers": [{"pid": pid, "before": before[pid],
                     "peak": sampler.peak[pid], "after": after[pid]}
                    for pid in pids],
    }
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0 if (len(ok) == n and not hung) else 1


if __name__ == "__main__":
    sys.exit(main())
