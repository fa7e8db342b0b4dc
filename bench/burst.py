"""A burst at the default settings: 20,000 signed pushes in 10 s (16 keep-alive connections, paced) to a
sidecar with its defaults (max_queue, max_workers) and a `cat > /dev/null` hook; every answer counted.
The promise: a burst is what the durable spool is for, so none of it is refused (no 503).

    .venv/bin/python bench/burst.py [--count 20000] [--seconds 10] [--connections 16]

Prints one JSON object: the answers by status, acknowledged/s, how long the hooks took to catch up.
"""

from __future__ import annotations

import argparse
import collections
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
import workload  # noqa: E402

CONFIG = """spool_dir: spool
endpoints:
  - path: /webhook
    provider: github
    secret_env: WEBHOOK_SECRET
    routes:
      - event: push
        name: noop
        run: [/bin/sh, -c, 'cat > /dev/null']
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def finished(log: Path) -> int:
    return log.read_text(errors="replace").count('"msg":"hook.finished"') if log.exists() else 0


def send(port: int, n: int, seconds: float, statuses: collections.Counter[int], lock: threading.Lock) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    start = time.monotonic()
    for i in range(n):
        delay = start + i * seconds / n - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        try:
            conn.request("POST", "/webhook", body=workload.BODY,
                         headers={**workload.headers(), "X-GitHub-Delivery": uuid.uuid4().hex})
            answer = conn.getresponse()
            answer.read()
            status = answer.status
        except (OSError, http.client.HTTPException):
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            status = 0
        with lock:
            statuses[status] += 1
    conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
    statuses: collections.Counter[int] = collections.Counter()
    lock = threading.Lock()
    with tempfile.TemporaryDirectory(prefix="bench-burst-") as tmp:
        directory = Path(tmp)
        (directory / "config.yaml").write_text(CONFIG)
        log, port = directory / "sidecar.log", free_port()
        env = {**os.environ, "WEBHOOK_SECRET": workload.SECRET}
        command = [sys.executable, "-m", "sidecar", "serve", "--config", str(directory / "config.yaml"),
                   "--listen", f"127.0.0.1:{port}"]
        with log.open("w") as out:
            proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=out)
        try:
            while '"server.listening"' not in log.read_text(errors="replace"):
                if proc.poll() is not None:
                    raise SystemExit(log.read_text())
                time.sleep(0.05)
            per = args.count // args.connections
            start = time.monotonic()
            threads = [threading.Thread(target=send, args=(port, per, args.seconds, statuses, lock))
                       for _ in range(args.connections)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            sent_s = time.monotonic() - start
            acknowledged = statuses[200]
            while finished(log) < acknowledged and time.monotonic() - start < 600:
                time.sleep(0.2)
            drained_s = time.monotonic() - start
        finally:
            proc.terminate()
            proc.wait(60)
    print(json.dumps({"sent": per * args.connections, "statuses": dict(statuses), "send_s": round(sent_s, 1),
                      "acknowledged_per_s": round(statuses[200] / sent_s, 1),
                      "hooks_done_after_s": round(drained_s, 1), "cpus": os.cpu_count()}))


if __name__ == "__main__":
    main()
