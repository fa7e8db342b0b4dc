"""What the durable spool costs: acknowledged deliveries/s with the spool on vs. bypassed.

Same server, same run, same ~2 KB signed GitHub payload over keep-alive connections
from separate processes. "Spool on": an event with a route, so each 200 waits for
its commit (body + job, fsync'd, group-committed across concurrent requests).
"Bypassed": an event with no route, answered 200 "ignored" after the same
verification and parsing, with nothing written. The route's hook is a long
sleep with `concurrency: 1`: one hook starts and the rest stay queued, so the
figure is the receiver plus the spool, not hook spawning (see bench/run.py for
hooks executed end to end).
Usage: python bench/spool_cost.py [--seconds 5] [--clients 4]
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import http.client
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SECRET = "bench-secret"
BODY = json.dumps({"ref": "refs/heads/main", "pad": "x" * 1900}).encode()
CONFIG = """
max_queue: 1000000
endpoints:
  - path: /webhook
    provider: github
    secret_env: WEBHOOK_SECRET
    routes:
      - event: push
        run: [/bin/sleep, "600"]
        timeout_s: 600
        concurrency: 1
"""


def client(port: int, seconds: float, event: str, worker: int, out: multiprocessing.Queue) -> None:
    sig = "sha256=" + hmac.new(SECRET.encode(), BODY, hashlib.sha256).hexdigest()
    conn = http.client.HTTPConnection("127.0.0.1", port)
    latencies, n, deadline = [], 0, time.monotonic() + seconds
    while time.monotonic() < deadline:
        headers = {"Content-Type": "application/json", "X-GitHub-Event": event, "X-Hub-Signature-256": sig,
                   "X-GitHub-Delivery": f"{event}-{worker}-{n}-{time.time_ns()}"}
        t = time.perf_counter()
        conn.request("POST", "/webhook", body=BODY, headers=headers)
        resp = conn.getresponse()
        resp.read()
        latencies.append(time.perf_counter() - t)
        assert resp.status == 200, resp.status
        n += 1
    out.put(latencies)


def drive(port: int, seconds: float, clients: int, event: str) -> tuple[float, float, float]:
    q: multiprocessing.Queue = multiprocessing.Queue()
    procs = [multiprocessing.Process(target=client, args=(port, seconds, event, w, q)) for w in range(clients)]
    for p in procs:
        p.start()
    lat = sorted(x for _ in procs for x in q.get())
    for p in procs:
        p.join()
    return len(lat) / seconds, lat[len(lat) // 2] * 1000, lat[int(len(lat) * 0.99)] * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--clients", type=int, default=4)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "config.yaml"
        config.write_text(CONFIG)
        # The log goes outside the watched config directory: its writes would
        # otherwise wake the reload watcher on every line.
        log_dir = tempfile.mkdtemp()
        log_path = Path(log_dir) / "sidecar.log"
        with open(log_path, "w") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "sidecar", "serve", "--config", str(config), "--listen", "127.0.0.1:0",
                 "--grace", "0"],
                stdout=log, env={**os.environ, "WEBHOOK_SECRET": SECRET})
            try:
                port = 0
                while not port:
                    time.sleep(0.05)
                    for line in log_path.read_text().splitlines():
                        if '"server.listening"' in line:
                            port = json.loads(line)["port"]
                print(f"{os.cpu_count()} cores, {args.clients} keep-alive clients, {args.seconds:g} s per run,"
                      " info-level logging to a file")
                rows = [("spool bypassed (ignored)", drive(port, args.seconds, args.clients, "issues")),
                        ("spool on (accepted)", drive(port, args.seconds, args.clients, "push"))]
                base = rows[0][1][0]
                for label, (rate, p50, p99) in rows:
                    print(f"{label:26s} {rate:7.0f} req/s ({rate / base:4.0%})  p50 {p50:5.2f} ms  p99 {p99:6.2f} ms")
                commits = [line for line in log_path.read_text().splitlines() if '"delivery.accepted"' in line]
                print(f"accepted deliveries logged: {len(commits)}")
            finally:
                proc.terminate()
                proc.wait(60)


if __name__ == "__main__":
    main()
