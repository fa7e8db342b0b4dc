"""The two ceilings the sidecar's figures are held against, each run in its own process.

server  The transport ceiling: a bare stdlib http.server (ThreadingHTTPServer, HTTP/1.1
        keep-alive, TCP_NODELAY, headers and body in one write) that reads the body and
        answers 200 without doing anything else. Prints {"port": N} and serves until killed.
        With --durable DIR it first commits each body to sqlite (WAL, synchronous=FULL, one
        transaction per request): what a durable 200 costs at the least, for reference.
spawn   The execution ceiling: how fast Python can run the hook (argv, payload on stdin,
        output captured) from a thread pool as large as the sidecar's max_workers.
        Prints one JSON object.

    python bench/ceiling.py server [--durable DIR]
    python bench/ceiling.py spawn [--workers 4] [--count 1000] [--] /bin/true
"""

from __future__ import annotations

import argparse
import json
import resource
import sqlite3
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import workload

REPLY = b'{"status":"ok"}'


class Bare(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    _headers_buffer: list[bytes]  # send_header() fills it; the stdlib's, not in its type stubs

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(REPLY)))
        self._headers_buffer.append(b"\r\n" + REPLY)  # one write, as the sidecar does
        self.flush_headers()

    do_GET = do_POST

    def log_message(self, format: str, *args: Any) -> None:
        pass


class Durable(Bare):
    db: sqlite3.Connection
    lock = threading.Lock()

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with self.lock:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.execute("INSERT INTO deliveries (body) VALUES (?)", (body,))
            self.db.execute("COMMIT")
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(REPLY)))
        self._headers_buffer.append(b"\r\n" + REPLY)
        self.flush_headers()


class BareServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a load tool closing its connections at the end is not news


def serve(durable: str | None) -> None:
    handler: type[Bare] = Bare
    if durable:
        db = sqlite3.connect(Path(durable) / "ceiling.db", isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("CREATE TABLE IF NOT EXISTS deliveries (id INTEGER PRIMARY KEY, body BLOB)")
        Durable.db, handler = db, Durable
    server = BareServer(("127.0.0.1", 0), handler)
    print(json.dumps({"port": server.server_address[1]}), flush=True)
    server.serve_forever()


def spawn(argv: list[str], workers: int, count: int) -> dict:
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}

    def run(_: int) -> int:
        return subprocess.run(argv, input=workload.BODY, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              env=env, start_new_session=True).returncode

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(run, range(workers * 5)))  # warm up: threads started, binaries cached
        cpu0, kids0 = time.process_time(), resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        codes = list(pool.map(run, range(count)))
        elapsed = time.perf_counter() - start
        cpu, kids = time.process_time() - cpu0, resource.getrusage(resource.RUSAGE_CHILDREN)
    kids_cpu = kids.ru_utime + kids.ru_stime - kids0.ru_utime - kids0.ru_stime
    return {"runs": count, "failed": sum(1 for c in codes if c), "seconds": round(elapsed, 3),
            "rate": count / elapsed, "workers": workers, "argv": argv,
            "cpu_ms_per_run": round(1000 * cpu / count, 3), "hook_cpu_ms_per_run": round(1000 * kids_cpu / count, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="mode", required=True)
    sv = sub.add_parser("server")
    sv.add_argument("--durable", metavar="DIR", help="commit each body to DIR/ceiling.db before answering")
    sp = sub.add_parser("spawn")
    sp.add_argument("--workers", type=int, default=4)
    sp.add_argument("--count", type=int, default=1000)
    sp.add_argument("argv", nargs="*", default=["/bin/true"])
    args = ap.parse_args()
    if args.mode == "server":
        serve(args.durable)
    else:
        print(json.dumps(spawn(args.argv, args.workers, args.count)))


if __name__ == "__main__":
    main()
