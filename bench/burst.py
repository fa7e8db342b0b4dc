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
import sys
import threading
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import workload  # noqa: E402
from servers import Budget, LogTail, Sidecar  # noqa: E402

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
    sidecar = Sidecar(Budget(900), 0, "info", config=CONFIG)  # max_workers and max_queue: the defaults
    try:
        sidecar.start()
        port = sidecar.wait_port()
        log = LogTail(sidecar.log_path)
        per = args.count // args.connections
        start = time.monotonic()
        threads = [threading.Thread(target=send, args=(port, per, args.seconds, statuses, lock))
                   for _ in range(args.connections)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        sent_s = time.monotonic() - start
        while log.read().counts["hook.finished"] < statuses[200] and time.monotonic() - start < 600:
            time.sleep(0.2)
        drained_s = time.monotonic() - start
    finally:
        sidecar.cleanup()
    print(json.dumps({"sent": per * args.connections, "statuses": dict(statuses), "send_s": round(sent_s, 1),
                      "acknowledged_per_s": round(statuses[200] / sent_s, 1),
                      "hooks_done_after_s": round(drained_s, 1), "cpus": os.cpu_count()}))


if __name__ == "__main__":
    main()
