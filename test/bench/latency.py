#!/usr/bin/python3
"""
latency.py - part (a) of test/bench/run: the latency igny8_ai adds to a call.

    /usr/bin/python3 latency.py --dsn DSN --url http://127.0.0.1:PORT \
        --calls N [--warmup W] [--model qwen3:32b]

Over ONE PostgreSQL connection and ONE keep-alive HTTP connection, runs N
rounds of three timed operations, in this order every round:

  select1   SELECT 1                                   (the SQL round-trip floor)
  igny8     SELECT igny8_generate_text('Write about clouds', 'gpt-4')
  direct    POST /api/chat straight to the backend, with the JSON body the
            extension itself sends for that call

Interleaving the three (rather than running N of one, then N of the next)
spreads any CPU noise from other processes evenly over them.  Every operation
is timed the same way: time.perf_counter_ns() around a synchronous call that
returns once the whole answer has been read and decoded.

Prints one JSON object: for each operation its count, p50, p99, mean, min
and max in microseconds.
"""

import argparse
import http.client
import json
import sys
import time
import urllib.parse

import psycopg2

PROMPT = "Write about clouds"
ALIAS = "gpt-4"
IGNY8_SQL = "SELECT igny8_generate_text(%s, %s)"


def ollama_body(model):
    """The body igny8_ai's Ollama protocol sends for IGNY8_SQL (see
    src/provider_ollama.c and the seed rows of igny8_models/igny8_providers:
    max_tokens 8000, think false, keep_alive 30m)."""
    return json.dumps({
        "model": model,
        "messages": [{"role": "user", "content": PROMPT}],
        "stream": False,
        "options": {"num_predict": 8000},
        "keep_alive": "30m",
        "think": False,
    }, separators=(",", ":")).encode()


def percentile(sorted_values, p):
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return None
    rank = max(1, -(-len(sorted_values) * p // 100))    # ceil(n * p / 100)
    return sorted_values[int(rank) - 1]


def summary(samples_ns):
    us = sorted(v / 1000.0 for v in samples_ns)
    return {
        "count": len(us),
        "p50_us": percentile(us, 50),
        "p99_us": percentile(us, 99),
        "mean_us": sum(us) / len(us),
        "min_us": us[0],
        "max_us": us[-1],
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dsn", required=True, help="libpq connection string")
    ap.add_argument("--url", required=True, help="backend base URL")
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--warmup", type=int, default=100,
                    help="untimed rounds first (connections, caches)")
    ap.add_argument("--model", default="qwen3:32b",
                    help="provider-side model of the alias (body only)")
    args = ap.parse_args()

    url = urllib.parse.urlsplit(args.url)
    body = ollama_body(args.model)
    headers = {"Content-Type": "application/json",
               "User-Agent": "igny8_ai-bench/1.0"}

    conn = psycopg2.connect(args.dsn)
    conn.autocommit = True              # one statement, one transaction
    cur = conn.cursor()
    http_conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)

    def select1():
        cur.execute("SELECT 1")
        cur.fetchone()

    def igny8():
        cur.execute(IGNY8_SQL, (PROMPT, ALIAS))
        text = cur.fetchone()[0]
        if not text:
            raise RuntimeError("igny8_generate_text returned nothing")

    def direct():
        http_conn.request("POST", "/api/chat", body=body, headers=headers)
        resp = http_conn.getresponse()
        data = resp.read()
        if resp.status != 200:
            raise RuntimeError("backend answered HTTP %d" % resp.status)
        # the extension decodes the answer too
        if not json.loads(data)["message"]["content"]:
            raise RuntimeError("backend answer has no content")
        if resp.will_close:
            raise RuntimeError("backend closed the keep-alive connection")

    ops = (("select1", select1), ("igny8", igny8), ("direct", direct))
    samples = {name: [] for name, _ in ops}
    clock = time.perf_counter_ns

    for _ in range(args.warmup):
        for _, op in ops:
            op()
    for _ in range(args.calls):
        for name, op in ops:
            t0 = clock()
            op()
            samples[name].append(clock() - t0)

    http_conn.close()
    conn.close()
    json.dump({name: summary(v) for name, v in samples.items()}, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
