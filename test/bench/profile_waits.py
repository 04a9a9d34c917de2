#!/usr/bin/python3
"""Helpers of test/bench/profile.

  profile_waits.py --dsn DSN --seconds S [--interval 0.01]
      Samples pg_stat_activity every INTERVAL seconds for S seconds: the
      wait_event_type / wait_event (and state) of the igny8_ai workers and of
      pgbench's client backends.  Prints JSON: the counts, and a one-line
      summary in percent of the samples of each group.  A process with no
      wait event is on a CPU or waiting for one ("CPU").

  profile_waits.py --children REPORT --funcs F1,F2,...
      Inclusive shares of those functions in a `perf report --children` output.

  profile_waits.py --probes --workers PIDS --backends PIDS < perf-script-output
      Counts uprobe hits per group of processes.

  profile_waits.py --dsos REPORT
      The top self shares of a `perf report --sort dso` output.

  profile_waits.py --areas REPORT
      Reads the output of `perf report --no-children --sort sym --stdio -g
      none` and prints the share of the samples of each area (latch/epoll
      wake-up, curl, usage INSERT/executor, ...), one line.
"""
import argparse
import collections
import json
import re
import sys
import time

QUERY = """
SELECT CASE WHEN backend_type = 'igny8_ai worker' THEN 'worker' ELSE 'backend' END,
       coalesce(wait_event_type, 'CPU'), coalesce(wait_event, ''), coalesce(state, '')
  FROM pg_stat_activity
 WHERE pid <> pg_backend_pid()
   AND (backend_type = 'igny8_ai worker'
        OR (application_name = 'pgbench' AND backend_type = 'client backend'))
"""


def sample(dsn, seconds, interval):
    import psycopg2
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    cur = conn.cursor()
    counts = {"worker": collections.Counter(), "backend": collections.Counter()}
    nsamples = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        cur.execute(QUERY)
        for group, wtype, wevent, state in cur.fetchall():
            key = wtype if wtype == "CPU" else "%s:%s" % (wtype, wevent)
            if group == "backend":
                key += " (%s)" % state
            counts[group][key] += 1
        nsamples += 1
        time.sleep(interval)
    conn.close()
    summary = []
    for group in ("worker", "backend"):
        total = sum(counts[group].values()) or 1
        parts = ", ".join("%s %.1f%%" % (k, 100.0 * v / total)
                          for k, v in counts[group].most_common())
        summary.append("%ss: %s" % (group, parts))
    json.dump({"samples": nsamples, "interval": interval,
               "counts": {g: dict(c) for g, c in counts.items()},
               "summary": "%d samples; %s" % (nsamples, "; ".join(summary))},
              sys.stdout)


# area: a regular expression on the symbol name, first match wins
AREAS = [
    ("spinlocks/LWLocks", r"s_lock|spin_delay|LWLock|perform_spin_delay|native_queued_spin|_raw_spin|queued_spin"),
    ("XLogFlush/WAL", r"XLog|xlog|WAL|issue_xlog_fsync|fdatasync|pg_fsync|ext4|jbd2|blk_|nvme|submit_bio|iomap|filemap_|file_write_and_wait|CRC|crc32|pg_comp_crc"),
    ("latch/epoll wake-up", r"WaitEventSet|WaitLatch|SetLatch|ResetLatch|latch|epoll|ep_poll|ep_|do_epoll|futex|kill|signal|sigsuspend|sig|schedule|__schedule|finish_task_switch|pick_next|switch_to|try_to_wake_up|ttwu|enqueue_task|dequeue_task|update_curr|update_load|psi_|ProcSignal|procsignal|pg_atomic|sched"),
    ("curl and socket I/O", r"[Cc]url|multi_|http|tcp_|ip_|__dev_queue|net_|sock_|sk_|skb|__sys_sendto|__sys_recvfrom|loopback|nf_|__netif|inet_|__x64_sys_send|__x64_sys_recv|process_backlog|napi"),
    ("JSON build/parse", r"cJSON|json|Json|escape_json|print_string|parse_value|parse_string|parse_object"),
    ("memory contexts/malloc", r"AllocSet|palloc|pfree|MemoryContext|repalloc|malloc|free|_int_malloc|_int_free|cfree|mem(cpy|set|move)|__memcpy|__memset|__memmove|clear_page|page_fault|handle_mm|do_anonymous|alloc_pages|__alloc"),
    ("usage INSERT/executor/transaction", r"Exec|exec_|heap_|_bt|btinsert|index_|SPI_|spi_|Portal|Plan|plan|Snapshot|Transaction|Xact|xact|AtEO|AtCommit|AtStart|Relation|relcache|CatalogCache|SearchSys|Buffer|buf_|hash_search|hash_bytes|tuplestore|tts_|slot_|heapam|visibilitymap|pgstat|igny8_usage|ResourceOwner|LockRelease|LockAcquire|Lock|lock|fmgr|Datum|datum|CopyFrom|expression|Eval|eval|text_to|cstring|toast|numeric|int8|timestamptz|uuid"),
    ("protocol/backend (pq, parse, SQL function call)", r"pq_|socket_|secure_|postgres_main|PostgresMain|exec_bind|exec_execute|printtup|SendRow|ReadCommand|pgbench|igny8_generate|igny8_dispatch|igny8_slot|unix_|__sys_|do_syscall|entry_SYSCALL|syscall|__x64|ksys|vfs_|fsnotify|rw_verify|copy_user|_copy_to|_copy_from"),
    ("igny8_ai worker other", r"igny8_"),
]


def areas(path):
    shares = collections.Counter()
    total = 0.0
    line_re = re.compile(r"^\s+([0-9.]+)%\s+\[([.k])\]\s+(.*?)\s*$")
    for line in open(path, errors="replace"):
        m = line_re.match(line)
        if not m:
            continue
        pct, space, sym = float(m.group(1)), m.group(2), m.group(3)
        total += pct
        for name, rx in AREAS:
            if re.search(rx, sym):
                shares[name] += pct
                break
        else:
            shares["other (kernel)" if space == "k" else "other (user)"] += pct
    if total == 0:
        print("no samples")
        return
    print(", ".join("%s %.0f%%" % (k, 100.0 * v / total) for k, v in shares.most_common()))


def children(path, funcs):
    """Inclusive shares (perf report --children --sort sym) of some functions."""
    want = funcs.split(",")
    got = {}
    line_re = re.compile(r"^\s+([0-9.]+)%\s+([0-9.]+)%\s+\[[.k]\]\s+(\S+)")
    for line in open(path, errors="replace"):
        m = line_re.match(line)
        if m and m.group(3) in want and m.group(3) not in got:
            got[m.group(3)] = float(m.group(1))
    print(", ".join("%s %.1f%%" % (f, got.get(f, 0.0)) for f in want))


def dsos(path):
    """Self shares by DSO (perf report --no-children --sort dso), top 6."""
    line_re = re.compile(r"^\s+([0-9.]+)%\s+(\S+)")
    out = []
    for line in open(path, errors="replace"):
        m = line_re.match(line)
        if m:
            out.append("%s %.0f%%" % (m.group(2), float(m.group(1))))
    print(", ".join(out[:6]))


def probes(workers, backends):
    """Counts of the uprobe hits (perf script -F pid,event on stdin) per group:
    prints "group event count" lines; group is worker, backend or other."""
    group = {}
    for pid in workers.split(","):
        group[pid] = "worker"
    for pid in backends.split(","):
        group[pid] = "backend"
    counts = collections.Counter()
    ev_re = re.compile(r"^\s*(\d+)\s+\S*?:(\w+):?\s*$")
    for line in sys.stdin:
        m = ev_re.match(line)
        if m:
            counts[(group.get(m.group(1), "other"), m.group(2))] += 1
    for (g, e), c in sorted(counts.items()):
        print(g, e, c)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dsn")
    ap.add_argument("--seconds", type=float, default=3)
    ap.add_argument("--interval", type=float, default=0.01)
    ap.add_argument("--areas")
    ap.add_argument("--children")
    ap.add_argument("--funcs")
    ap.add_argument("--dsos")
    ap.add_argument("--probes", action="store_true")
    ap.add_argument("--workers")
    ap.add_argument("--backends")
    a = ap.parse_args()
    if a.probes:
        probes(a.workers, a.backends)
    elif a.children:
        children(a.children, a.funcs)
    elif a.dsos:
        dsos(a.dsos)
    elif a.areas:
        areas(a.areas)
    else:
        sample(a.dsn, a.seconds, a.interval)


if __name__ == "__main__":
    main()
