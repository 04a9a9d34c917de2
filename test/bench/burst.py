#!/usr/bin/python3
"""
burst.py - part (c) of test/bench/run: many AI requests in flight at once.

    /usr/bin/python3 burst.py --dsn DSN --callers N [--postmaster-pid PID]
                              [--warm-up]
    /usr/bin/python3 burst.py --url http://127.0.0.1:PORT --callers N
                              [--warm-up | --connect-at-release]

Opens N connections, one per thread, and only once every one of them is
connected releases all the threads at the same instant (a threading.Barrier)
to make one call each, against a backend that takes a fixed time to answer:

  --dsn   a PostgreSQL connection per thread, running
          SELECT igny8_generate_text('Write about clouds', 'gpt-4')
  --url   (the baseline) a keep-alive HTTP connection per thread to the
          backend itself, POSTing to /api/chat the body the extension sends

With --warm-up, every connection first makes one call of its own, before
the barrier, as the pooled connections of an application have: the same
call, with a simulator directive in its prompt ([[sim ollama:delay=0]]) so
that it is answered at once.  Without it, the call after the release is
the connection's first.  With --connect-at-release (--url only), each
thread opens its HTTP connection after the release, with its call: the
baseline of a burst whose workers have no connection to the backend yet
(a "cold" one), since the other --url modes connect before the release.

If all N requests are in flight at once, the last answer arrives about one
backend delay after the release.  Both modes share the client's structure
(threads, barrier, timing), so the difference between them is what the
extension adds.

With --postmaster-pid, from the release until 1 s after the last answer, a
sampler reads /proc/PID/status of the igny8_ai background workers (children
of that postmaster whose process title contains "igny8_ai worker": other
PostgreSQL servers on the machine have workers of the same name) every
50 ms, and keeps the sample with the highest VmRSS.

Prints one JSON object: wall time from release to the last answer, the
spread of the release, per-call latency percentiles, failures, and per
worker the memory before, at the highest sample and 1 s after the burst
(VmRSS, VmHWM, RssAnon, RssShmem in kB, and "cpu_s", its CPU time so far),
the CPU time the --cpu-pid processes used, and from the release to the last
answer the CPU time of this client ("client_cpu_s") and, with --dsn, of
the N backends serving its connections ("backends_cpu_s").  Exits 1 unless every call
was answered; "aborted": true means not every connection could be opened
("connected" says how many were).
"""

import argparse
import http.client
import json
import os
import sys
import threading
import time
import urllib.parse

import psycopg2

sys.dont_write_bytecode = True          # no __pycache__ in the source tree
from latency import ALIAS, PROMPT, ollama_body, percentile  # noqa: E402

SQL = "SELECT igny8_generate_text(%s, %s)"
# the warm-up call's prompt: the simulator answers it without its delay
WARM_UP_PROMPT = "[[sim ollama:delay=0]] " + PROMPT
WORKER_TITLE = "igny8_ai worker"
SAMPLE_INTERVAL_S = 0.05
MEM_FIELDS = ("VmRSS", "VmHWM", "RssAnon", "RssShmem")


class SqlCaller:
    """One PostgreSQL connection that calls igny8_generate_text."""

    def __init__(self, dsn):
        self.conn = psycopg2.connect(dsn, connect_timeout=60)
        self.conn.autocommit = True
        self.pid = self.conn.get_backend_pid()

    def call(self, prompt=PROMPT):
        with self.conn.cursor() as cur:
            cur.execute(SQL, (prompt, ALIAS))
            if not cur.fetchone()[0]:
                raise RuntimeError("empty answer")

    def warm_up(self):
        self.call(WARM_UP_PROMPT)

    def close(self):
        self.conn.close()


class HttpCaller:
    """One HTTP connection to the backend, opened before the release, or
    with connect_now False by its first request."""

    pid = None

    def __init__(self, url, body, warm_up_body, connect_now=True):
        u = urllib.parse.urlsplit(url)
        self.body = body
        self.warm_up_body = warm_up_body
        self.conn = http.client.HTTPConnection(u.hostname, u.port, timeout=120)
        if connect_now:
            self.conn.connect()

    def call(self, body=None):
        self.conn.request("POST", "/api/chat", body=body or self.body,
                          headers={"Content-Type": "application/json"})
        resp = self.conn.getresponse()
        data = resp.read()
        if resp.status != 200:
            raise RuntimeError("HTTP %d" % resp.status)
        if not json.loads(data)["message"]["content"]:
            raise RuntimeError("empty answer")

    def warm_up(self):
        self.call(self.warm_up_body)

    def close(self):
        self.conn.close()


def worker_pids(postmaster_pid):
    """PIDs of the igny8_ai workers of one PostgreSQL server."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry) as f:
                stat = f.read()
            # after "(comm)" come the state, then the parent's pid
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


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# pid -> True when its CPU time is read from /proc/PID/stat: chosen at the
# first reading, so that a "before" and an "after" come from one source
_CPU_FROM_STAT = {}


def cpu_seconds(pid):
    """CPU time of a process so far (user + system), or None if it is gone.

    A single-threaded process (a backend, a worker) is read from
    /proc/PID/schedstat, in nanoseconds: the utime and stime of
    /proc/PID/stat are whole clock ticks (10 ms), and a backend that makes
    one call uses less than a tick, so a sum over a burst's backends read
    from there comes out as 0.  schedstat counts only the main thread,
    though, so a process with more than one thread at its first reading
    (the simulator) is read from /proc/PID/stat, which counts all its
    threads, the ended ones too; so is every process on a kernel whose
    schedstat reads 0 (no CONFIG_SCHED_INFO).  The source chosen at a
    process's first reading is kept for its later ones."""
    from_stat = _CPU_FROM_STAT.get(pid)
    try:
        if from_stat is not False:       # None (first reading) or True
            with open("/proc/%d/stat" % pid) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            # num_threads is field 20 of stat(5), utime and stime 14 and
            # 15; field 3 is fields[0] here
            ticks = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
        if not from_stat:                # None or False
            with open("/proc/%d/schedstat" % pid) as f:
                ns = int(f.read().split()[0])
        if from_stat is None:
            from_stat = int(fields[17]) > 1 or (ns == 0 and ticks > 0)
            _CPU_FROM_STAT[pid] = from_stat
    except OSError:
        return None
    return ticks if from_stat else ns / 1e9


def memory_kb(pid):
    """The MEM_FIELDS of /proc/PID/status, in kB, and the CPU time so far
    as "cpu_s", or None if the process is gone."""
    out = {"cpu_s": cpu_seconds(pid)}
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
    """Keeps, per process, the sample with the highest VmRSS seen."""

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


def first_line(exc):
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    target = ap.add_mutually_exclusive_group(required=True)
    target.add_argument("--dsn", help="call igny8_generate_text here")
    target.add_argument("--url", help="POST /api/chat to this backend")
    ap.add_argument("--callers", type=int, default=1000)
    ap.add_argument("--postmaster-pid", type=int,
                    help="sample the memory of this server's igny8_ai workers")
    ap.add_argument("--cpu-pid", type=int, action="append", default=[],
                    help="also report the CPU time this process uses "
                    "(e.g. the backend); may be repeated")
    ap.add_argument("--model", default="qwen3:32b",
                    help="provider-side model of the alias (--url body only)")
    ap.add_argument("--timeout", type=float, default=120.0,
                    help="give up on the burst after this many seconds")
    ap.add_argument("--warm-up", action="store_true",
                    help="each connection makes one call (answered at once) "
                    "before the release, like a pooled connection")
    ap.add_argument("--connect-at-release", action="store_true",
                    help="(--url) open each connection after the release, "
                    "with its call, as the workers of a cold burst do")
    args = ap.parse_args()
    if args.connect_at_release and (args.dsn or args.warm_up):
        ap.error("--connect-at-release goes with --url, without --warm-up")
    n = args.callers
    if args.dsn:
        def connect():
            return SqlCaller(args.dsn)
    else:
        body = ollama_body(args.model)
        warm_up_body = json.loads(body)
        warm_up_body["messages"][0]["content"] = WARM_UP_PROMPT
        warm_up_body = json.dumps(warm_up_body, separators=(",", ":")).encode()

        def connect():
            return HttpCaller(args.url, body, warm_up_body,
                              not args.connect_at_release)

    threading.stack_size(512 * 1024)    # 1000 threads: keep them small
    release = {}

    def mark_release():
        # run by the last thread to arrive, before any thread is released
        release["t"] = time.perf_counter()
        release["epoch"] = time.time()  # to compare with the backend's log

    barrier = threading.Barrier(n + 1, action=mark_release)
    started = [None] * n                # perf_counter() before the call
    finished = [None] * n               # perf_counter() after the answer
    errors = []                         # (caller index, message)
    lock = threading.Lock()
    callers = [None] * n
    backend_cpu_before = [None] * n     # CPU of each caller's backend

    def run(i):
        try:
            callers[i] = connect()
            if args.warm_up:
                callers[i].warm_up()
        except Exception as exc:
            with lock:
                errors.append((i, "connect: " + first_line(exc)))
            barrier.abort()             # nobody waits for a missing caller
            return
        if callers[i].pid is not None:
            backend_cpu_before[i] = cpu_seconds(callers[i].pid)
        try:
            barrier.wait()
        except threading.BrokenBarrierError:
            return
        try:
            started[i] = time.perf_counter()
            callers[i].call()
            finished[i] = time.perf_counter()
        except Exception as exc:        # report every failure, keep going
            with lock:
                errors.append((i, first_line(exc)))

    pids = worker_pids(args.postmaster_pid) if args.postmaster_pid else []
    before = {pid: memory_kb(pid) for pid in pids}
    cpu_before = {pid: cpu_seconds(pid) for pid in args.cpu_pid}
    sampler = MemorySampler(pids)

    threads = [threading.Thread(target=run, args=(i,), daemon=True)
               for i in range(n)]
    t_connect = time.perf_counter()
    for t in threads:
        t.start()
    try:
        barrier.wait(timeout=args.timeout)
    except threading.BrokenBarrierError:
        for t in threads:
            t.join(timeout=5)
        json.dump({"callers": n, "aborted": True,
                   "connected": sum(c is not None for c in callers),
                   "nerrors": len(errors), "errors": errors[:10]}, sys.stdout)
        sys.stdout.write("\n")
        return 1
    client_cpu_release = sum(os.times()[:2])
    sampler.start()

    deadline = release["t"] + args.timeout
    for t in threads:
        t.join(timeout=max(0.0, deadline - time.perf_counter()))
    hung = sum(t.is_alive() for t in threads)
    client_cpu = sum(os.times()[:2]) - client_cpu_release
    backends_cpu = 0.0
    for i in range(n):
        if callers[i] is not None and backend_cpu_before[i] is not None:
            now = cpu_seconds(callers[i].pid)
            if now is not None:
                backends_cpu += now - backend_cpu_before[i]
    time.sleep(1.0)                     # let the workers settle, then sample
    sampler.stop()
    after = {pid: memory_kb(pid) for pid in pids}
    cpu_after = {pid: cpu_seconds(pid) for pid in args.cpu_pid}

    for c in callers:
        if c is not None:
            try:
                c.close()
            except Exception:
                pass

    ok = [i for i in range(n) if finished[i] is not None]
    latencies = sorted(finished[i] - started[i] for i in ok)
    rel = release["t"]
    result = {
        "callers": n,
        "aborted": False,
        "warm_up": args.warm_up,
        "answered": len(ok),
        "nerrors": len(errors),
        "errors": errors[:10],
        "hung": hung,
        "connect_s": rel - t_connect,
        "release_epoch": release["epoch"],
        # from the release to the last answer
        "wall_s": (max(finished[i] for i in ok) - rel) if ok else None,
        # how long the release itself took: the last caller to start its call
        "release_spread_s": (max(started[i] for i in ok) - rel) if ok else None,
        "latency_p50_s": percentile(latencies, 50),
        "latency_p99_s": percentile(latencies, 99),
        "latency_max_s": latencies[-1] if latencies else None,
        "workers": [{"pid": pid, "before": before[pid],
                     "peak": sampler.peak[pid], "after": after[pid]}
                    for pid in pids],
        # CPU seconds used from before the connections were opened to 1 s
        # after the last answer
        "cpu_s": {str(pid): (cpu_after[pid] - cpu_before[pid])
                  if None not in (cpu_after[pid], cpu_before[pid]) else None
                  for pid in args.cpu_pid},
        # from the release to the last answer (the sampler thread included)
        "client_cpu_s": client_cpu,
        "backends_cpu_s": backends_cpu if args.dsn else None,
    }
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0 if (len(ok) == n and not hung) else 1


if __name__ == "__main__":
    sys.exit(main())
