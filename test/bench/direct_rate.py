#!/usr/bin/python3
"""
direct_rate.py - the direct-HTTP baseline of test/bench/run's goals part.

    /usr/bin/python3 direct_rate.py --url http://127.0.0.1:PORT \
        --clients N --seconds T [--batch B] [--model qwen3:32b]

Sends POST /api/chat, with the JSON body igny8_ai itself sends for the
benchmark's call (latency.py's ollama_body), straight to the backend with
curl: `curl -Z --parallel-max N -K <config of B requests>`, one curl after
the other until T seconds have passed.  curl keeps N keep-alive connections
and N requests in flight, as N pgbench clients keep N calls in flight, so
the rate is what the same machine does with HTTP alone, no SQL.  Every
answer must be HTTP 200 (curl's exit status and --write-out say).

Prints one JSON object: requests, seconds, requests_per_s, failed.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from latency import ollama_body  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", required=True, help="backend base URL")
    ap.add_argument("--clients", type=int, required=True)
    ap.add_argument("--seconds", type=float, required=True)
    ap.add_argument("--batch", type=int, default=5000,
                    help="requests per curl process")
    ap.add_argument("--model", default="qwen3:32b")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        body = os.path.join(tmp, "body.json")
        with open(body, "wb") as f:
            f.write(ollama_body(args.model))
        config = os.path.join(tmp, "requests.cfg")
        with open(config, "w") as f:
            for _ in range(args.batch):
                f.write('url = "%s/api/chat"\noutput = "/dev/null"\n' % args.url)
        cmd = ["curl", "-s", "--no-progress-meter", "-Z", "--parallel-max", str(args.clients),
               "-H", "Content-Type: application/json",
               "--data-binary", "@" + body, "-w", "%{http_code}\\n",
               "-K", config]
        requests = failed = 0
        start = time.perf_counter()
        while time.perf_counter() - start < args.seconds:
            out = subprocess.run(cmd, stdout=subprocess.PIPE, check=False)
            codes = out.stdout.decode().split()
            requests += len(codes)
            failed += sum(1 for c in codes if c != "200")
            if out.returncode != 0:
                failed += args.batch - len(codes)
        elapsed = time.perf_counter() - start
    json.dump({"requests": requests, "seconds": elapsed,
               "requests_per_s": requests / elapsed, "failed": failed},
              sys.stdout)
    print()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
