"""Forwards/s beside hooks/s, end to end, in one run: one sidecar serving two endpoints with the same
signed push, one running a `cat > /dev/null` hook, one forwarding to a local HTTP target (a threaded
stdlib server answering 200). Each phase sends N deliveries from C client threads and counts from the
first request until the last job is done (hook.finished lines in the sidecar's log).

    .venv/bin/python bench/forwards.py [--count 2000] [--clients 8] [--workers 4]

Prints one JSON object: forwards/s, hooks/s, their ratio, and the machine's CPU count. Nothing is written
under bench/results (results are outputs).
"""

from __future__ import annotations

import argparse
import http.client
import http.server
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


class _Target(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


def config(target_port: int, workers: int) -> str:
    route = "      - event: push\n        name: {name}\n        {what}\n"
    return (f"spool_dir: spool\nmax_workers: {workers}\nmax_queue: 100000\nendpoints:\n"
            "  - path: /hook\n    provider: github\n    secret_env: WEBHOOK_SECRET\n    routes:\n"
            + route.format(name="hook", what="run: [/bin/sh, -c, 'cat > /dev/null']")
            + "  - path: /forward\n    provider: github\n    secret_env: WEBHOOK_SECRET\n    routes:\n"
            + route.format(name="forward", what=f"forward: {{url: 'http://127.0.0.1:{target_port}/in'}}"))


def phase(port: int, path: str, count: int, clients: int, log: LogTail) -> float:
    """Deliveries/s from the first request to the last job done."""
    before = log.read().counts["hook.finished"]
    sent = iter(range(count))
    lock = threading.Lock()

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        while True:
            with lock:
                if next(sent, None) is None:
                    break
            conn.request("POST", path, body=workload.BODY,
                         headers={**workload.headers(), "X-GitHub-Delivery": uuid.uuid4().hex})
            answer = conn.getresponse()
            answer.read()
            if answer.status != 200:
                raise SystemExit(f"{path}: HTTP {answer.status}")
        conn.close()

    start = time.monotonic()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    deadline = time.monotonic() + 300
    while log.read().counts["hook.finished"] - before < count and time.monotonic() < deadline:
        time.sleep(0.05)
    return count / (time.monotonic() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args()
    target = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Target)
    threading.Thread(target=target.serve_forever, daemon=True).start()
    sidecar = Sidecar(Budget(900), args.workers, "info", config=config(target.server_address[1], args.workers))
    try:
        sidecar.start()
        port = sidecar.wait_port()
        log = LogTail(sidecar.log_path)
        hooks = phase(port, "/hook", args.count, args.clients, log)  # one phase at a time: hook.finished counts it
        forwards = phase(port, "/forward", args.count, args.clients, log)
    finally:
        sidecar.cleanup()
        target.shutdown()
    print(json.dumps({"deliveries": args.count, "clients": args.clients, "workers": args.workers,
                      "hooks_per_s": round(hooks, 1), "forwards_per_s": round(forwards, 1),
                      "forwards_vs_hooks": round(forwards / hooks, 2), "cpus": os.cpu_count()}))


if __name__ == "__main__":
    main()
