"""A simple load loop: signed GitHub deliveries over keep-alive connections.

Starts `python -m sidecar serve` on an ephemeral port with a table whose route
runs /bin/true, then drives it from separate client processes for a few seconds.
Prints requests/s for valid deliveries (200) and for rejected ones (401).
Usage: python bench/load.py [--seconds 5] [--clients 2]
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
BODY = json.dumps({"ref": "refs/heads/main", "pad": "x" * 1900}).encode()  # ~2 KB, like a small push
CONFIG = """
max_queue: 100000
endpoints:
  - path: /webhook
    provider: github
    secret_env: WEBHOOK_SECRET
    routes:
      - event: push
        run: [/bin/true]
"""


def client(port: int, seconds: float, valid: bool, result: multiprocessing.Queue) -> None:
    sig = "sha256=" + hmac.new(SECRET.encode() if valid else b"wrong", BODY, hashlib.sha256).hexdigest()
    headers = {"Content-Type": "application/json", "X-GitHub-Event": "push", "X-Hub-Signature-256": sig}
    conn = http.client.HTTPConnection("127.0.0.1", port)
    count, latencies, deadline = 0, [], time.monotonic() + seconds
    while time.monotonic() < deadline:
        t = time.perf_counter()
        conn.request("POST", "/webhook", body=BODY, headers=headers)
        resp = conn.getresponse()
        resp.read()
        latencies.append(time.perf_counter() - t)
        assert resp.status == (200 if valid else 401), resp.status
        count += 1
    conn.close()
    result.put((count, latencies))


def drive(port: int, seconds: float, clients: int, valid: bool) -> tuple[float, float, float]:
    q: multiprocessing.Queue = multiprocessing.Queue()
    procs = [multiprocessing.Process(target=client, args=(port, seconds, valid, q)) for _ in range(clients)]
    for p in procs:
        p.start()
    results = [q.get() for _ in procs]
    for p in procs:
        p.join()
    total = sum(c for c, _ in results)
    lat = sorted(x for _, ls in results for x in ls)
    return total / seconds, lat[len(lat) // 2] * 1000, lat[int(len(lat) * 0.99)] * 1000


def wait_port(log: Path, timeout: float = 15) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in log.read_text().splitlines():
            if '"server.listening"' in line:
                return int(json.loads(line)["port"])
        time.sleep(0.05)
    raise SystemExit(f"sidecar did not start:\n{log.read_text()}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--clients", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "config.yaml"
        config.write_text(CONFIG)
        # Logs go to a file, so a full pipe never stalls the server.
        log = open(Path(tmp) / "sidecar.log", "w+")  # noqa: SIM115 - closed in finally
        proc = subprocess.Popen(
            [sys.executable, "-m", "sidecar", "serve", "--config", str(config), "--listen", "127.0.0.1:0"],
            stdout=log, env={**os.environ, "WEBHOOK_SECRET": SECRET})
        try:
            port = wait_port(Path(log.name))
            print(f"machine: {os.cpu_count()} cores; {args.clients} keep-alive clients, {args.seconds:g} s each run")
            for valid in (True, False):
                rate, p50, p99 = drive(port, args.seconds, args.clients, valid)
                label = "valid deliveries (200)" if valid else "bad signature (401)"
                print(f"{label:26s} {rate:8.0f} req/s   p50 {p50:6.2f} ms   p99 {p99:6.2f} ms")
        finally:
            proc.terminate()
            proc.wait(30)
            log.close()


if __name__ == "__main__":
    main()
