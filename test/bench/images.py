#!/usr/bin/python3
"""
images.py - part (e) of test/bench/run: images through ComfyUI.

    /usr/bin/python3 images.py throughput --dsn DSN --sim-state DIR \
        [--postmaster-pid PID] [--images 200] [--concurrency 8] \
        [--image-bytes 4000000] [--size 1024x1024] [--repeats 3]
    /usr/bin/python3 images.py queue --dsn DSN --sim-state DIR \
        [--requests 50] [--run-time 0.2] [--timeout 120]
    /usr/bin/python3 images.py report [--throughput FILE] [--queue FILE] ...

The simulator (test/sim/igny8_sim.py, its state directory DIR) plays
ComfyUI; the alias (dall-e-2: workflow sdxl-lightning-4step on the comfyui
provider) must route there, with comfyui's max_concurrent at least
--concurrency (throughput) or --requests (queue).

throughput: --repeats rounds, each of two runs of --images images of
  exactly --image-bytes bytes (the image_bytes directive), --concurrency
  at a time (one connection per thread, each thread taking the next image
  as soon as it has its last):
    direct  a Python client makes the three HTTP requests the worker makes,
            on one keep-alive connection per thread: POST /prompt (the body
            the extension builds from the workflow: same graph, bindings
            and defaults), GET /history/{id} on the worker's schedule (first
            100 ms after the submit, then every 100 ms times 1.5 per poll up
            to 1 s) until it is not {}, GET /view of the first image; then,
            untimed, POST /history {"delete": [id]} as the worker does;
    igny8   SELECT image, ... FROM igny8_generate_image(prompt, alias, size)
            over one PostgreSQL connection per thread.
  Each image is timed from the start of its first request to the last byte
  of its answer, and checked afterwards (untimed): a PNG whose IHDR gives
  the size asked for, every chunk's CRC right, IEND last, and exactly
  --image-bytes bytes; igny8 rows also need mime_type image/png, the width
  and height asked for, provider comfyui, attempts 1.  After each igny8 run
  ai_usage_log must have exactly --images new rows, all successful image
  rows.  Also measured: igny8_image.duration_ms (the extension's own
  time), and the CPU time used during each run by the simulator, this
  client, the client backends and (with --postmaster-pid) the igny8_ai
  workers.  With --postmaster-pid, the memory of that server's igny8_ai
  workers (VmRSS, RssAnon, RssShmem, summed over the workers, and the
  part of RssShmem in the dynamic shared memory segments they keep mapped)
  is read before the first image, sampled every 50 ms during each igny8
  run (the highest sum kept), read right after its last answer and again
  after a second idle.

queue: --requests connections, released at once by a barrier, each asking
  for one image whose sampling takes --run-time s (run_time directive) with
  the per-call option {"timeout": --timeout}; the simulator runs one prompt
  at a time, so the last waits for all the others.  Measured: the time
  from the release to the last answer, the most prompts ComfyUI held at
  once (GET /queue every 50 ms), the most requests igny8_ai had in flight
  and waiting (igny8_service_status), and the usage rows: all successful,
  each attempt 1, and no prompt deleted from the queue or interrupted.

throughput and queue print one JSON object, and exit 1 when a check failed
(its "checks_failed" says which).  report turns those files into the rows
of test/bench/run's Markdown table ("metric<TAB>value<TAB>command").
"""

import argparse
import copy
import http.client
import json
import os
import random
import struct
import sys
import threading
import time
import urllib.parse
import uuid
import zlib

import psycopg2

sys.dont_write_bytecode = True          # no __pycache__ in the source tree
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "sim"))
from burst import cpu_seconds, memory_kb, worker_pids  # noqa: E402
from latency import percentile  # noqa: E402
import simctl  # noqa: E402

ALIAS = "dall-e-2"
PROMPT = "A lighthouse at dusk"
SAMPLE_INTERVAL_S = 0.05
# the worker's history polls (src/image.c): the first after 100 ms, then
# each wait 1.5 times the last (integer milliseconds) up to 1 s
POLL_FIRST_MS = 100
POLL_MAX_MS = 1000
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

IGNY8_SQL = ("SELECT image, mime_type, width, height, provider, attempts, "
             "duration_ms FROM igny8_generate_image(%s, %s, %s, %s)")


def poll_wait_ms(polls):
    """The wait before the next history poll after POLLS pending ones."""
    wait = POLL_FIRST_MS
    for _ in range(polls):
        if wait >= POLL_MAX_MS:
            break
        wait = wait * 3 // 2
    return min(wait, POLL_MAX_MS)


def check_png(data, width, height, nbytes):
    """None if DATA is a whole PNG of WIDTHxHEIGHT and NBYTES bytes (every
    chunk's CRC right), else what is wrong."""
    if data is None:
        return "no image"
    if nbytes is not None and len(data) != nbytes:
        return "%d bytes, not %d" % (len(data), nbytes)
    if data[:8] != PNG_SIGNATURE:
        return "not a PNG"
    pos, first, last = 8, True, None
    while pos + 12 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        end = pos + 12 + length
        if end > len(data):
            return "chunk %r cut off" % kind
        crc = struct.unpack(">I", data[end - 4:end])[0]
        if zlib.crc32(data[pos + 4:end - 4]) & 0xFFFFFFFF != crc:
            return "bad CRC in chunk %r" % kind
        if first:
            if kind != b"IHDR":
                return "first chunk is %r" % kind
            w, h = struct.unpack(">II", data[pos + 8:pos + 16])
            if (w, h) != (width, height):
                return "IHDR says %dx%d, %dx%d was asked for" % (w, h, width,
                                                                 height)
            first = False
        last = kind
        pos = end
    if last != b"IEND" or pos != len(data):
        return "no IEND at the end"
    return None


def first_line(exc):
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# ---------------------------------------------------------------------------
# The simulator
# ---------------------------------------------------------------------------

class Sim:
    def __init__(self, state_dir):
        self.ports = simctl.load_ports(state_dir)
        self.comfyui = ("127.0.0.1", self.ports["comfyui"])
        self.pid = self.ports["pid"]

    def control(self, method, path, params=None, body=None):
        return simctl.control(self.ports, method, path, params, body)

    def reset(self):
        self.control("POST", "/reset")

    def log(self, **params):
        return self.control("GET", "/log", params)

    def requests(self, tag):
        """The ComfyUI requests of one run (its tag: the prompt's directive
        labels its polls and downloads too; the history deletes that follow
        carry no tag, so all of them count), by kind."""
        out = {"prompt": 0, "history": 0, "view": 0, "forget": 0, "other": 0}
        for x in self.log(role="comfyui"):
            path = x["path"].split("?")[0]
            if path.startswith("/api/"):
                path = path[4:]
            if x["method"] == "POST" and path == "/history":
                out["forget"] += 1
            elif x.get("tag") != tag:
                continue
            elif x["method"] == "POST" and path == "/prompt":
                out["prompt"] += 1
            elif path.startswith("/history/"):
                out["history"] += 1
            elif path == "/view":
                out["view"] += 1
            else:
                out["other"] += 1
        return out

    def queue_length(self, conn):
        """Prompts ComfyUI holds: running and waiting."""
        conn.request("GET", "/queue")
        resp = conn.getresponse()
        q = json.loads(resp.read())
        return len(q["queue_running"]) + len(q["queue_pending"])


# ---------------------------------------------------------------------------
# The two clients: direct HTTP, and igny8_generate_image
# ---------------------------------------------------------------------------

class Workflow:
    """The alias's workflow as the extension fills it in."""

    def __init__(self, cur, alias):
        cur.execute("""
            SELECT w.graph, w.bindings, w.defaults
              FROM igny8_models m JOIN igny8_workflows w ON w.name = m.workflow
             WHERE m.alias = %s AND m.enabled AND m.workflow IS NOT NULL
             LIMIT 1""", (alias,))
        row = cur.fetchone()
        if row is None:
            sys.exit("alias %s has no enabled ComfyUI workflow" % alias)
        self.graph, self.bindings, self.defaults = row

    def body(self, prompt, width, height, seed, prompt_id, client_id):
        graph = copy.deepcopy(self.graph)
        values = {"prompt": prompt, "negative_prompt": "", "width": width,
                  "height": height, "steps": self.defaults.get("steps"),
                  "cfg": self.defaults.get("cfg"), "seed": seed,
                  "filename_prefix": "igny8_" + prompt_id}
        for name, (node, inp) in self.bindings.items():
            if values.get(name) is not None:
                graph[node]["inputs"][inp] = values[name]
        return {"prompt": graph, "client_id": client_id,
                "prompt_id": prompt_id}

    def normalized(self, body):
        """A /prompt body without what changes from call to call."""
        graph = copy.deepcopy(body["prompt"])
        for name in ("prompt", "seed", "filename_prefix"):
            if name in self.bindings:
                node, inp = self.bindings[name]
                graph[node]["inputs"][inp] = None
        return {"prompt": graph, "keys": sorted(body)}


class DirectClient:
    """The worker's three requests, from Python, on one keep-alive
    connection."""

    def __init__(self, host_port, workflow, index):
        self.conn = http.client.HTTPConnection(*host_port, timeout=120)
        self.conn.connect()
        self.workflow = workflow
        self.client_id = "igny8_ai-bench-direct-%d" % index

    def request(self, method, path, body=None):
        headers = {}
        if body is not None:
            body = json.dumps(body, separators=(",", ":")).encode()
            headers["Content-Type"] = "application/json"
        self.conn.request(method, path, body=body, headers=headers)
        resp = self.conn.getresponse()
        data = resp.read()
        if resp.status != 200:
            raise RuntimeError("%s %s: HTTP %d %s" % (
                method, path.split("?")[0], resp.status, data[:200]))
        return data

    def generate(self, prompt, width, height):
        """The image's bytes, and the row fields igny8 would give."""
        prompt_id = str(uuid.uuid4())
        seed = random.randrange(2 ** 53)
        body = self.workflow.body(prompt, width, height, seed, prompt_id,
                                  self.client_id)
        accepted = json.loads(self.request("POST", "/prompt", body))
        prompt_id = accepted.get("prompt_id", prompt_id)
        polls = 0
        time.sleep(POLL_FIRST_MS / 1000.0)
        while True:
            entry = json.loads(self.request("GET", "/history/" + prompt_id))
            if entry:
                break
            time.sleep(poll_wait_ms(polls) / 1000.0)
            polls += 1
        item = entry[prompt_id]
        if item["status"]["status_str"] != "success":
            raise RuntimeError("prompt failed: %s" % item["status"])
        image = next(img for out in item["outputs"].values()
                     for img in out.get("images", []))
        query = urllib.parse.urlencode({"filename": image["filename"],
                                        "subfolder": image["subfolder"],
                                        "type": image.get("type", "output")})
        data = self.request("GET", "/view?" + query)
        self.forget = prompt_id
        return data, None

    def after(self):
        """Untimed: what the worker does once the image is in (its history
        entry goes)."""
        self.request("POST", "/history", {"delete": [self.forget]})

    def close(self):
        self.conn.close()


class Igny8Client:
    """igny8_generate_image over one PostgreSQL connection."""

    def __init__(self, dsn, alias, options):
        self.conn = psycopg2.connect(dsn, connect_timeout=60)
        self.conn.autocommit = True
        self.cur = self.conn.cursor()
        self.cur.execute("SELECT pg_backend_pid()")
        self.backend_pid = self.cur.fetchone()[0]
        self.alias = alias
        self.options = json.dumps(options)

    def generate(self, prompt, width, height):
        self.cur.execute(IGNY8_SQL, (prompt, self.alias,
                                     "%dx%d" % (width, height), self.options))
        image, mime, w, h, provider, attempts, duration_ms = \
            self.cur.fetchone()
        row = {"mime_type": mime, "width": w, "height": h,
               "provider": provider, "attempts": attempts,
               "duration_ms": duration_ms}
        return (bytes(image) if image is not None else None), row

    def after(self):
        pass

    def close(self):
        self.conn.close()


def check_row(row, width, height):
    """What is wrong with the igny8_image row's fields, or None."""
    if row is None:
        return None
    want = {"mime_type": "image/png", "width": width, "height": height,
            "provider": "comfyui", "attempts": 1}
    bad = ["%s = %r" % (k, row[k]) for k, v in want.items() if row[k] != v]
    return ", ".join(bad) if bad else None


# ---------------------------------------------------------------------------
# Worker memory
# ---------------------------------------------------------------------------

class Workers:
    """The igny8_ai workers of one server: their memory, summed."""

    def __init__(self, postmaster_pid):
        self.pids = worker_pids(postmaster_pid) if postmaster_pid else []

    def read(self, smaps=False):
        """{"VmRSS", "RssAnon", "RssShmem"} in kB summed over the workers,
        "VmHWM_max" the highest of them, and per pid; with SMAPS also
        "DsmRss", the part of RssShmem in dynamic shared memory segments
        (/dev/shm: the payload area) the workers have mapped."""
        per = {pid: memory_kb(pid) for pid in self.pids}
        alive = [m for m in per.values() if m]
        extra = {}
        if smaps:
            extra["DsmRss"] = sum(dsm_rss_kb(pid) for pid in self.pids)
        return dict(extra, **{
            "VmRSS": sum(m.get("VmRSS", 0) for m in alive),
            "RssAnon": sum(m.get("RssAnon", 0) for m in alive),
            "RssShmem": sum(m.get("RssShmem", 0) for m in alive),
            "VmHWM_max": max((m.get("VmHWM", 0) for m in alive), default=0),
            "workers": len(alive),
            "per_pid": {str(pid): m and {"VmRSS": m.get("VmRSS"),
                                         "RssAnon": m.get("RssAnon")}
                        for pid, m in per.items()},
        })


def dsm_rss_kb(pid):
    """kB resident of a process's mappings of /dev/shm files (PostgreSQL's
    dynamic shared memory), 0 if it is gone."""
    total, in_dsm = 0, False
    try:
        with open("/proc/%d/smaps" % pid) as f:
            for line in f:
                fields = line.split()
                if line[0] in "0123456789abcdef" and "-" in fields[0]:
                    # a mapping's first line: range, perms, ..., path
                    in_dsm = len(fields) >= 6 and \
                        fields[5].startswith("/dev/shm/")
                elif in_dsm and line.startswith("Rss:"):
                    total += int(line.split()[1])
    except OSError:
        return 0
    return total


class Sampler(threading.Thread):
    """Reads FN every 50 ms and keeps the highest value of each KEY."""

    def __init__(self, fn, keys):
        super().__init__(daemon=True)
        self.fn, self.keys = fn, keys
        self.peak = {k: None for k in keys}
        self.stopping = threading.Event()
        self.error = None

    def run(self):
        while not self.stopping.is_set():
            try:
                v = self.fn()
            except Exception as exc:     # report it, stop sampling
                self.error = first_line(exc)
                return
            for k in self.keys:
                if v.get(k) is not None and (self.peak[k] is None
                                             or v[k] > self.peak[k]):
                    self.peak[k] = v[k]
            self.stopping.wait(SAMPLE_INTERVAL_S)

    def stop(self):
        self.stopping.set()
        self.join()


# ---------------------------------------------------------------------------
# throughput
# ---------------------------------------------------------------------------

def run_batch(clients, n, prompt, width, height, nbytes, cpu_pids):
    """N images through CLIENTS (one thread each, released together), each
    thread taking the next image when it has its last.  Per image: latency,
    and what is wrong with it (checked after its clock stopped); the CPU
    time each group of CPU_PIDS ({name: [pid, ...]}) and this process used
    meanwhile."""
    lock = threading.Lock()
    counter = iter(range(n))
    latencies, errors, bad, durations = [], [], [], []
    total_bytes = [0]
    finished = [None]
    release = {}

    def mark():
        release["t"] = time.perf_counter()

    barrier = threading.Barrier(len(clients) + 1, action=mark)

    def run(client):
        barrier.wait()
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            t0 = time.perf_counter()
            try:
                data, row = client.generate(prompt % i, width, height)
            except Exception as exc:
                with lock:
                    errors.append(first_line(exc))
                continue
            t1 = time.perf_counter()
            problem = check_png(data, width, height, nbytes) or \
                check_row(row, width, height)
            try:
                client.after()
            except Exception as exc:
                problem = problem or "after: " + first_line(exc)
            with lock:
                latencies.append(t1 - t0)
                if row is not None and row["duration_ms"] is not None:
                    durations.append(row["duration_ms"] / 1000.0)
                total_bytes[0] += len(data) if data else 0
                finished[0] = max(finished[0] or 0, t1)
                if problem:
                    bad.append(problem)

    threads = [threading.Thread(target=run, args=(c,), daemon=True)
               for c in clients]
    for t in threads:
        t.start()
    cpu0 = cpu_times(cpu_pids)
    barrier.wait()
    for t in threads:
        t.join()
    cpu1 = cpu_times(cpu_pids)
    wall = (finished[0] - release["t"]) if finished[0] else None
    latencies.sort()
    durations.sort()
    return {
        "images": len(latencies),
        "errors": len(errors),
        "first_errors": errors[:5],
        "bad_images": len(bad),
        "first_bad": bad[:5],
        "bytes": total_bytes[0],
        "wall_s": wall,
        "images_per_s": len(latencies) / wall if wall else None,
        "mb_per_s": total_bytes[0] / 1e6 / wall if wall else None,
        "latency_p50_s": percentile(latencies, 50),
        "latency_p95_s": percentile(latencies, 95),
        "latency_max_s": latencies[-1] if latencies else None,
        "latencies_s": latencies,
        # igny8_image.duration_ms: the extension's own measure
        "duration_p50_s": percentile(durations, 50),
        "duration_p95_s": percentile(durations, 95),
        "cpu_s": {k: cpu1[k] - cpu0[k] for k in cpu0},
    }


def cpu_times(groups):
    """CPU seconds used so far by each group of pids ({name: [pid, ...]}; a
    process gone counts 0) and, as "client", by this process."""
    out = {name: sum(cpu_seconds(pid) or 0.0 for pid in pids)
           for name, pids in groups.items()}
    t = os.times()
    out["client"] = t.user + t.system
    return out


def usage_since(cur, start_id):
    cur.execute("""
        SELECT count(*), count(*) FILTER (WHERE success),
               count(*) FILTER (WHERE success AND task_type = 'image'
                                AND images = 1 AND provider = 'comfyui'
                                AND attempt = 1),
               count(DISTINCT request_id)
          FROM ai_usage_log WHERE id > %s""", (start_id,))
    total, ok, ok_image, requests = cur.fetchone()
    return {"rows": total, "successful": ok, "successful_image_rows": ok_image,
            "failed": total - ok, "request_ids": requests}


def max_usage_id(cur):
    cur.execute("SELECT coalesce(max(id), 0) FROM ai_usage_log")
    return cur.fetchone()[0]


def throughput(args):
    width, height = (int(v) for v in args.size.split("x"))
    sim = Sim(args.sim_state)
    conn = psycopg2.connect(args.dsn)
    conn.autocommit = True
    cur = conn.cursor()
    workflow = Workflow(cur, args.alias)
    workers = Workers(args.postmaster_pid)
    out = {"images": args.images, "concurrency": args.concurrency,
           "image_bytes": args.image_bytes, "size": args.size,
           "alias": args.alias, "repeats": args.repeats, "rounds": [],
           "checks_failed": []}
    failed = out["checks_failed"]

    # the baseline: the workers idle, before any image
    sim.reset()
    time.sleep(1.0)
    out["rss_baseline"] = workers.read(smaps=True)

    # one image each way first: the direct client's /prompt body must be
    # the one the extension sends (but for the ids, seed and prompt)
    tag = "[[sim comfyui:image_bytes=%d key=%%s]]" % args.image_bytes
    ext = Igny8Client(args.dsn, args.alias, {})
    data, row = ext.generate("%s %s" % (PROMPT, tag % "warm"), width, height)
    ext.close()
    problem = check_png(data, width, height, args.image_bytes) or \
        check_row(row, width, height)
    if problem:
        failed.append("warm-up image through igny8_ai: " + problem)
    sent = [r["body"] for r in sim.log(role="comfyui", key="warm",
                                       path="/prompt")]
    mine = workflow.body("x", width, height, 0, str(uuid.uuid4()), "x")
    out["direct_body_matches_extension"] = bool(sent) and \
        workflow.normalized(sent[0]) == workflow.normalized(mine)
    if not out["direct_body_matches_extension"]:
        failed.append("the direct client's /prompt body differs from the "
                      "extension's: %s" % json.dumps(sent[:1])[:400])

    def prompt(tag):
        # "%d": the image's number within the run
        return "%s, image %%d [[sim comfyui:image_bytes=%d tag=%s]]" % (
            PROMPT, args.image_bytes, tag)

    for r in range(1, args.repeats + 1):
        rnd = {"round": r}
        sim.reset()
        # direct: the simulator alone
        clients = [DirectClient(sim.comfyui, workflow, i)
                   for i in range(args.concurrency)]
        rnd["direct"] = run_batch(clients, args.images,
                                  prompt("direct%d" % r),
                                  width, height, args.image_bytes,
                                  {"simulator": [sim.pid],
                                   "workers": workers.pids})
        for c in clients:
            c.close()
        rnd["direct"]["sim_requests"] = sim.requests("direct%d" % r)

        # igny8: the same images through the extension
        sim.reset()
        clients = [Igny8Client(args.dsn, args.alias, {})
                   for _ in range(args.concurrency)]
        start_id = max_usage_id(cur)
        rnd["rss_before"] = workers.read(smaps=True)
        sampler = Sampler(workers.read, ("VmRSS", "RssAnon"))
        sampler.start()
        rnd["igny8"] = run_batch(clients, args.images,
                                 prompt("igny8%d" % r),
                                 width, height, args.image_bytes,
                                 {"simulator": [sim.pid],
                                  "workers": workers.pids,
                                  "backends": [c.backend_pid
                                               for c in clients]})
        rnd["rss_after"] = workers.read(smaps=True)
        time.sleep(1.0)
        sampler.stop()
        rnd["rss_peak"] = sampler.peak
        rnd["rss_idle_1s"] = workers.read(smaps=True)
        for c in clients:
            c.close()
        rnd["igny8"]["sim_requests"] = sim.requests("igny8%d" % r)
        rnd["usage"] = usage_since(cur, start_id)

        for mode in ("direct", "igny8"):
            b = rnd[mode]
            if b["images"] != args.images or b["errors"] or b["bad_images"]:
                failed.append("round %d %s: %d of %d images, %d errors %s, "
                              "%d bad %s" % (r, mode, b["images"], args.images,
                                             b["errors"], b["first_errors"],
                                             b["bad_images"], b["first_bad"]))
        u = rnd["usage"]
        if not (u["rows"] == u["successful_image_rows"] == u["request_ids"]
                == args.images):
            failed.append("round %d: ai_usage_log got %r for %d images"
                          % (r, u, args.images))
        out["rounds"].append(rnd)

    # per-image latencies of all rounds together
    for mode in ("direct", "igny8"):
        lat = sorted(v for rnd in out["rounds"]
                     for v in rnd[mode]["latencies_s"])
        out[mode] = {"latency_p50_s": percentile(lat, 50),
                     "latency_p95_s": percentile(lat, 95),
                     "latency_max_s": lat[-1] if lat else None}
        for rnd in out["rounds"]:
            del rnd[mode]["latencies_s"]
    conn.close()
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")
    return 1 if failed else 0


# ---------------------------------------------------------------------------
# queue
# ---------------------------------------------------------------------------

def queue(args):
    sim = Sim(args.sim_state)
    conn = psycopg2.connect(args.dsn)
    conn.autocommit = True
    cur = conn.cursor()
    cur.execute("SELECT max_concurrent FROM igny8_providers "
                "WHERE id = 'comfyui'")
    out = {"requests": args.requests, "run_time_s": args.run_time,
           "timeout_s": args.timeout, "size": args.size,
           "comfyui_max_concurrent": cur.fetchone()[0], "checks_failed": []}
    failed = out["checks_failed"]
    width, height = (int(v) for v in args.size.split("x"))
    sim.reset()
    start_id = max_usage_id(cur)

    n = args.requests
    options = {"timeout": args.timeout}
    prompt = "Queued %%d [[sim comfyui:run_time=%s tag=queue]]" % args.run_time
    callers = [Igny8Client(args.dsn, args.alias, options) for _ in range(n)]
    release = {}

    def mark():
        release["t"] = time.perf_counter()

    barrier = threading.Barrier(n + 1, action=mark)
    finished = [None] * n
    rows = [None] * n
    errors = []
    lock = threading.Lock()

    def run(i):
        barrier.wait()
        try:
            data, row = callers[i].generate(prompt % i, width, height)
            finished[i] = time.perf_counter()
            problem = check_png(data, width, height, None) or \
                check_row(row, width, height)
            rows[i] = row
            if problem:
                with lock:
                    errors.append("image %d: %s" % (i, problem))
        except Exception as exc:
            with lock:
                errors.append("image %d: %s" % (i, first_line(exc)))

    # what ComfyUI holds, and igny8_ai's in flight and waiting, every 50 ms
    qconn = http.client.HTTPConnection(*sim.comfyui, timeout=30)
    scur = psycopg2.connect(args.dsn)
    scur.autocommit = True
    scur_c = scur.cursor()

    def sample():
        scur_c.execute("SELECT in_flight, queued FROM igny8_service_status "
                       "WHERE provider = 'comfyui'")
        in_flight, queued = scur_c.fetchone()
        return {"comfyui_queue": sim.queue_length(qconn),
                "igny8_in_flight": in_flight, "igny8_queued": queued}

    sampler = Sampler(sample, ("comfyui_queue", "igny8_in_flight",
                               "igny8_queued"))
    threads = [threading.Thread(target=run, args=(i,), daemon=True)
               for i in range(n)]
    for t in threads:
        t.start()
    sampler.start()
    barrier.wait()
    deadline = release["t"] + args.timeout + 30
    for t in threads:
        t.join(timeout=max(0.0, deadline - time.perf_counter()))
    hung = sum(t.is_alive() for t in threads)
    sampler.stop()
    qconn.close()
    scur.close()

    done = [f - release["t"] for f in finished if f is not None]
    done.sort()
    out.update({
        "answered": len(done),
        "errors": len(errors),
        "first_errors": errors[:5],
        "hung": hung,
        "wall_s": done[-1] if done else None,
        "latency_min_s": done[0] if done else None,
        "latency_p50_s": percentile(done, 50),
        "latency_max_s": done[-1] if done else None,
        "attempts_all_1": all(r is not None and r["attempts"] == 1
                              for r in rows),
        "peak": sampler.peak,
        "sampler_error": sampler.error,
        "usage": usage_since(cur, start_id),
    })
    log = sim.log(role="comfyui")
    out["sim"] = {
        "prompts": sum(1 for x in log
                       if x["path"] in ("/prompt", "/api/prompt")
                       and x["method"] == "POST"),
        "queue_deletes": sum(1 for x in log if x["path"] == "/queue"
                             and x["method"] == "POST"),
        "interrupts": sum(1 for x in log if x["path"] == "/interrupt"),
        "history_polls": sum(1 for x in log
                             if x["path"].startswith("/history/")),
        # sampling alone: run_time s per prompt, one prompt at a time
        "sampling_s": n * args.run_time,
    }
    for c in callers:
        c.close()
    conn.close()
    u = out["usage"]
    if len(done) != n or errors or hung:
        failed.append("%d of %d answered, %d errors %s, %d hung"
                      % (len(done), n, len(errors), errors[:3], hung))
    if not (u["rows"] == u["successful_image_rows"] == n):
        failed.append("ai_usage_log got %r for %d requests" % (u, n))
    if out["sim"]["prompts"] != n or out["sim"]["queue_deletes"] or \
            out["sim"]["interrupts"]:
        failed.append("the simulator saw %r" % out["sim"])
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")
    return 1 if failed else 0


# ---------------------------------------------------------------------------
# report: the rows of test/bench/run's Markdown table
# ---------------------------------------------------------------------------

def mb(kb):
    return "%.1f" % (kb / 1024.0) if kb is not None else "?"


def report(args):
    """Print "metric<TAB>value<TAB>command" rows; append the failed checks
    to --notes as Markdown list items."""
    rows = []
    notes = []

    def row(metric, value, command="same run"):
        rows.append("%s\t%s\t%s" % (metric, value, command))

    busy = (" (CPU busy before: %s)" % args.busy_throughput
            if args.busy_throughput else "")
    if args.throughput:
        with open(args.throughput) as f:
            t = json.load(f)
        rounds = t["rounds"]
        size = t["size"]
        what = "%d images of %s bytes (%s PNG), %d at a time" % (
            t["images"], "{:,}".format(t["image_bytes"]), size,
            t["concurrency"])

        def per_round(mode, fmt, sep="; "):
            return sep.join(fmt(r[mode]) for r in rounds)

        def rate(b):
            if not b["wall_s"]:
                return "?"
            return "%.1f images/s, %.1f MB/s" % (b["images_per_s"],
                                                 b["mb_per_s"])
        row("(e) **throughput, %s, through igny8_generate_image** "
            "(round 1; 2; 3 ...)" % what,
            "**%s**%s" % (per_round("igny8", rate), busy),
            args.throughput_command)
        row("(e) baseline: the same images, a Python client making the "
            "worker's three requests straight to the simulator",
            per_round("direct", rate))
        row("(e) wall time of each run, first to last image (igny8; direct)",
            "%s s; %s s" % (
                per_round("igny8", lambda b: "%.2f" % b["wall_s"], ", "),
                per_round("direct", lambda b: "%.2f" % b["wall_s"], ", ")))
        i, d = t["igny8"], t["direct"]
        row("(e) per-image latency p50 / p95 / max, %d rounds together "
            "(igny8; direct)" % len(rounds),
            "%.0f / %.0f / %.0f ms; %.0f / %.0f / %.0f ms" % (
                1000 * i["latency_p50_s"], 1000 * i["latency_p95_s"],
                1000 * i["latency_max_s"], 1000 * d["latency_p50_s"],
                1000 * d["latency_p95_s"], 1000 * d["latency_max_s"]))
        row("(e) **added latency per image** (igny8 − direct), p50 / p95",
            "**%.0f / %.0f ms**" % (
                1000 * (i["latency_p50_s"] - d["latency_p50_s"]),
                1000 * (i["latency_p95_s"] - d["latency_p95_s"])))
        row("(e) added latency by round (igny8 − direct), p50 / p95",
            "; ".join("%.0f / %.0f ms" % (
                1000 * (r["igny8"]["latency_p50_s"]
                        - r["direct"]["latency_p50_s"]),
                1000 * (r["igny8"]["latency_p95_s"]
                        - r["direct"]["latency_p95_s"])) for r in rounds))
        row("(e) igny8_image.duration_ms (the extension's own measure, "
            "without the bytea's way to the client), p50 / p95 by round",
            per_round("igny8", lambda b: "%.0f / %.0f ms" % (
                1000 * b["duration_p50_s"], 1000 * b["duration_p95_s"])))

        def cpu(mode, keys):
            n = float(t["images"])
            return " / ".join(
                "%.1f" % (1000 * sum(r[mode]["cpu_s"].get(k, 0)
                                     for r in rounds) / n / len(rounds))
                if k in rounds[0][mode]["cpu_s"] else "-" for k in keys)
        keys = ("workers", "backends", "simulator", "client")
        row("(e) CPU ms per image, mean of the rounds: igny8_ai workers / "
            "client backends / simulator / Python client (igny8; direct)",
            "%s; %s" % (cpu("igny8", keys), cpu("direct", keys)),
            "/proc/PID/schedstat (the threaded simulator: /proc/PID/stat); "
            "os.times() of images.py, from the "
            "release to the last image (%s CPUs)" % os.cpu_count())

        def checked(mode):
            n = sum(r[mode]["images"] for r in rounds)
            bad = sum(r[mode]["bad_images"] + r[mode]["errors"]
                      for r in rounds)
            return "%d / %d %s" % (n - bad, t["images"] * len(rounds),
                                   "ok" if not bad else "(%d bad)" % bad)
        row("(e) images right: a PNG, IHDR %s, every CRC right, exactly %s "
            "bytes; igny8 rows also image/png, provider comfyui, attempts 1 "
            "(igny8; direct)" % (size, "{:,}".format(t["image_bytes"])),
            "%s; %s" % (checked("igny8"), checked("direct")),
            "checked by images.py after each image's clock stopped")
        row("(e) ai_usage_log after each igny8 round: new rows / successful "
            "image rows of comfyui with attempt 1 / failed / distinct "
            "request_ids",
            "; ".join("%(rows)d / %(successful_image_rows)d / %(failed)d / "
                      "%(request_ids)d" % r["usage"] for r in rounds),
            "`SELECT count(*) ... FROM ai_usage_log WHERE id > <before>`")

        def reqs(mode):
            q = rounds[0][mode]["sim_requests"]
            n = float(t["images"])
            return "%.2f / %.2f / %.2f / %.2f" % (
                q["prompt"] / n, q["history"] / n, q["view"] / n,
                q["forget"] / n)
        row("(e) simulator requests per image, round 1: POST /prompt / "
            "GET /history/{id} / GET /view / POST /history (igny8; direct)",
            "%s; %s" % (reqs("igny8"), reqs("direct")),
            "`simctl log --role comfyui`")
        row("(e) the direct client's POST /prompt body is the extension's "
            "(prompt_id, client_id, seed, prompt and file name aside)",
            "yes" if t.get("direct_body_matches_extension") else "NO",
            "images.py: the warm-up call's body in the simulator's log")
        base = t["rss_baseline"]
        if base["workers"]:
            def mem(key, peak=True):
                return "%s; %s MB" % (mb(base[key]), "; ".join(
                    ("%s / " % mb(r["rss_peak"][key]) if peak else "") +
                    "%s / %s" % (mb(r["rss_after"][key]),
                                 mb(r["rss_idle_1s"][key]))
                    for r in rounds))
            row("(e) igny8_ai workers' VmRSS, sum of %d: before the first "
                "image; each round: highest sample / right after its last "
                "image / 1 s later" % base["workers"], mem("VmRSS"),
                "/proc/PID/status, sampled every 50 ms")
            row("(e) the same, RssAnon (private memory)", mem("RssAnon"),
                "same")
            row("(e) the same, shared memory (RssShmem); of it, the payload "
                "area's dynamic shared memory segments the workers keep "
                "mapped: before; each round: right after / 1 s later",
                "%s (%s); %s MB" % (
                    mb(base["RssShmem"]), mb(base["DsmRss"]), "; ".join(
                        "%s (%s) / %s (%s)" % (
                            mb(r["rss_after"]["RssShmem"]),
                            mb(r["rss_after"]["DsmRss"]),
                            mb(r["rss_idle_1s"]["RssShmem"]),
                            mb(r["rss_idle_1s"]["DsmRss"]))
                        for r in rounds)),
                "/proc/PID/status; Rss of the /dev/shm mappings in "
                "/proc/PID/smaps")

            def excess(key, r):
                return (r["rss_idle_1s"][key] - base[key]) / 1024.0
            worst = max(rounds, key=lambda r: excess("VmRSS", r))
            last, first = rounds[-1], rounds[0]
            verdict = (
                "RSS returned to baseline within %.1f MB (VmRSS of the "
                "workers "
                "together, 1 s after each round, baseline %s MB; largest "
                "after round %d: private %+.1f MB, payload area segments "
                "kept mapped %+.1f MB); from round 1 to round %d: VmRSS "
                "%+.1f MB, private %+.1f MB"
                % (max(excess("VmRSS", worst), 0), mb(base["VmRSS"]),
                   worst["round"], excess("RssAnon", worst),
                   excess("DsmRss", worst), len(rounds),
                   (last["rss_idle_1s"]["VmRSS"]
                    - first["rss_idle_1s"]["VmRSS"]) / 1024.0,
                   (last["rss_idle_1s"]["RssAnon"]
                    - first["rss_idle_1s"]["RssAnon"]) / 1024.0))
            row("(e) **verdict, worker memory**", "**%s**" % verdict,
                "the rows above")
            sys.stderr.write("(e) " + verdict + "\n")
        for c in t["checks_failed"]:
            notes.append("(e) throughput: " + c)
    if args.queue:
        with open(args.queue) as f:
            q = json.load(f)
        busy = (" (CPU busy before: %s)" % args.busy_queue
                if args.busy_queue else "")
        row("(e) **%d image requests at once, ComfyUI running one prompt at "
            "a time, run_time %g s each; call timeout %g s**: release to the "
            "last answer" % (q["requests"], q["run_time_s"], q["timeout_s"]),
            "**%.2f s** (sampling alone: %.1f s)%s" % (
                q["wall_s"] or 0, q["sim"]["sampling_s"], busy),
            args.queue_command)
        row("(e) answered / errors / hung; latency from the release: first / "
            "p50 / last",
            "%d / %d / %d; %.2f / %.2f / %.2f s" % (
                q["answered"], q["errors"], q["hung"], q["latency_min_s"] or 0,
                q["latency_p50_s"] or 0, q["latency_max_s"] or 0))
        u = q["usage"]
        row("(e) usage rows / successful image rows with attempt 1 / failed; "
            "every igny8_image.attempts = 1",
            "%d / %d / %d; %s" % (u["rows"], u["successful_image_rows"],
                                  u["failed"],
                                  "yes" if q["attempts_all_1"] else "NO"),
            "ai_usage_log")
        pk = q["peak"]
        row("(e) most prompts ComfyUI held at once (running + waiting) / most "
            "comfyui requests in flight in igny8_ai / most waiting for a "
            "place "
            "(comfyui max_concurrent %d)" % q["comfyui_max_concurrent"],
            "%s / %s / %s" % (pk["comfyui_queue"], pk["igny8_in_flight"],
                              pk["igny8_queued"]),
            "GET /queue and igny8_service_status every 50 ms")
        sq = q["sim"]
        row("(e) simulator: POST /prompt / queue deletes / interrupts / "
            "history polls",
            "%d / %d / %d / %d" % (sq["prompts"], sq["queue_deletes"],
                                   sq["interrupts"], sq["history_polls"]),
            "`simctl log --role comfyui`")
        for c in q["checks_failed"]:
            notes.append("(e) queue: " + c)
    sys.stdout.write("".join(r + "\n" for r in rows))
    if args.notes and notes:
        with open(args.notes, "a") as f:
            f.write("".join("- %s\n" % n.replace("\n", " ") for n in notes))
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="part", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--dsn", required=True, help="libpq connection string")
    common.add_argument("--sim-state", required=True,
                        help="the simulator's state directory (ports.json)")
    common.add_argument("--alias", default=ALIAS)
    t = sub.add_parser("throughput", parents=[common])
    t.add_argument("--postmaster-pid", type=int,
                   help="report the memory of this server's igny8_ai workers")
    t.add_argument("--images", type=int, default=200)
    t.add_argument("--concurrency", type=int, default=8)
    t.add_argument("--image-bytes", type=int, default=4000000)
    t.add_argument("--size", default="1024x1024")
    t.add_argument("--repeats", type=int, default=3)
    q = sub.add_parser("queue", parents=[common])
    q.add_argument("--requests", type=int, default=50)
    q.add_argument("--run-time", type=float, default=0.2)
    q.add_argument("--timeout", type=float, default=120.0,
                   help="the per-call timeout option, in seconds")
    q.add_argument("--size", default="512x512")
    r = sub.add_parser("report", help="the rows of test/bench/run's report")
    r.add_argument("--throughput", help="throughput's JSON")
    r.add_argument("--queue", help="queue's JSON")
    r.add_argument("--throughput-command", default="images.py throughput")
    r.add_argument("--queue-command", default="images.py queue")
    r.add_argument("--busy-throughput")
    r.add_argument("--busy-queue")
    r.add_argument("--notes", help="append failed checks here")
    args = ap.parse_args()
    return {"throughput": throughput, "queue": queue,
            "report": report}[args.part](args)


if __name__ == "__main__":
    sys.exit(main())
