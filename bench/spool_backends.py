"""The two spool backends side by side: acknowledged deliveries/s and hooks/s, sqlite vs PostgreSQL.

Same workload, same sidecar, same machine, one run: a local throwaway PostgreSQL (Debian's
binaries, fsync on: a commit is on disk, as sqlite's synchronous=FULL) and, for each backend, a
fresh sidecar with 4 workers and a /bin/true hook, loaded closed-loop (wrk when installed, else
bench/load.py's Python clients) with signed GitHub pushes, each with its own delivery id.

acknowledged/s  200 answers per second of load (each one a committed delivery)
hooks/s         hook runs finished per second, from the load's start until the last one ran

    python bench/spool_backends.py [--seconds 10] [--connections 16] [--workers 4] [--replicas 1]

Prints one JSON object; `--replicas N` runs N postgres replicas on one database (load spread).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))
import load  # noqa: E402
import workload  # noqa: E402
from servers import terminate  # noqa: E402

from tests.pg import Postgres  # noqa: E402


def config(spool: str, workers: int) -> str:
    return (f"{spool}\nmax_workers: {workers}\nmax_queue: 1000000\nendpoints:\n  - path: {workload.PATH}\n"
            "    provider: github\n    secret_env: WEBHOOK_SECRET\n    routes:\n"
            f"      - event: {workload.EVENT}\n        name: noop\n        run: [/bin/true]\n")


class Server:
    def __init__(self, directory: Path, text: str, env: dict[str, str], replica: str) -> None:
        directory.mkdir(parents=True)
        (directory / "config.yaml").write_text(text)
        self.log = directory / "sidecar.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "sidecar", "serve", "--config", str(directory / "config.yaml"),
                 "--listen", "127.0.0.1:0", "--replica", replica, "--watch", "off"],
                stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
                env={**os.environ, "WEBHOOK_SECRET": workload.SECRET, "PYTHONPATH": str(ROOT), **env})
        self.port = 0
        deadline = time.monotonic() + 30
        while not self.port:
            for line in self.log.read_bytes().splitlines():
                if b'"server.listening"' in line:
                    self.port = int(json.loads(line)["port"])
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"sidecar did not start: {self.log.read_text()[-2000:]}")
            time.sleep(0.05)

    def finished(self) -> int:
        return self.log.read_bytes().count(b'"hook.finished"')

    def stop(self) -> None:
        terminate(self.proc)


def measure(servers: list[Server], seconds: int, connections: int, tool: str) -> dict:
    """Load every server at once (connections split), then wait for every acknowledged delivery's hook."""
    from concurrent.futures import ThreadPoolExecutor
    t0 = time.monotonic()
    with ThreadPoolExecutor(len(servers)) as pool:
        results = list(pool.map(lambda s: load.closed(s.port, seconds, max(1, connections // len(servers)),
                                                      True, tool), servers))
    acked = sum(r["ok"] for r in results)
    duration = max(r["duration_s"] for r in results)
    deadline = time.monotonic() + 300
    while sum(s.finished() for s in servers) < acked and time.monotonic() < deadline:
        time.sleep(0.05)
    ran = sum(s.finished() for s in servers)
    return {"acknowledged": acked, "acknowledged_per_s": round(acked / duration, 1),
            "hooks": ran, "hooks_per_s": round(ran / (time.monotonic() - t0), 1),
            "errors": sum(r["requests"] - r["ok"] for r in results),
            "p99_ms": max(r["latency_ms"]["p99"] for r in results)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=int, default=10)
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--replicas", type=int, default=1, help="postgres replicas on one database")
    p.add_argument("--tool", default=None, help="wrk path or 'python' (default: wrk when installed)")
    args = p.parse_args()
    tool = args.tool or load.ensure_wrk() or "python"
    work = Path(tempfile.mkdtemp(prefix="bench-spools-"))
    pg = Postgres(fsync=True)
    out: dict = {"seconds": args.seconds, "connections": args.connections, "workers": args.workers,
                 "tool": "python" if tool == "python" else load.wrk_version(tool), "cpus": os.cpu_count()}
    try:
        sqlite = Server(work / "sqlite", config("spool_dir: spool", args.workers), {}, "solo")
        try:
            out["sqlite"] = measure([sqlite], args.seconds, args.connections, tool)
        finally:
            sqlite.stop()
        url = pg.create_database()
        replicas = [Server(work / f"pg{i}", config("spool_url_env: SPOOL_DATABASE_URL", args.workers),
                           {"SPOOL_DATABASE_URL": url}, f"r{i}") for i in range(args.replicas)]
        try:
            out["postgres"] = measure(replicas, args.seconds, args.connections, tool)
            out["postgres"]["replicas"] = args.replicas
        finally:
            for r in replicas:
                r.stop()
        out["postgres_vs_sqlite_acknowledged"] = round(
            out["postgres"]["acknowledged_per_s"] / max(out["sqlite"]["acknowledged_per_s"], 1e-9), 2)
        out["postgres_vs_sqlite_hooks"] = round(
            out["postgres"]["hooks_per_s"] / max(out["sqlite"]["hooks_per_s"], 1e-9), 2)
    finally:
        pg.destroy()
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
