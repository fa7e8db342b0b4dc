"""System calls per request, of the sidecar and of the bare stdlib handler, under one bad-signature load.

    .venv/bin/python -m bench.syscalls [--seconds 2] [--connections 16] [--tree DIR ...]

Each server runs alone (the sidecar at info level, as users run it), `strace -c -f` attached to it while
wrk (or the Python client) sends 2 KB pushes with a wrong signature over keep-alive connections; the
counts are divided by the requests answered. strace slows every call down, so read the counts, not the
times. Each call that blocks releases the GIL, and with many connections a release is a hand-off between
threads: the futex calls per request show what that costs. --tree DIR adds the sidecar of another
checkout (a `git worktree` of an older commit).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import load
from servers import Budget, CeilingServer, Sidecar

SHOWN = ("futex", "poll", "recvfrom", "sendto", "write", "getrandom", "read", "openat", "close")


def counts(pid: int, port: int, seconds: int, connections: int, tool: str) -> tuple[float, dict[str, int]]:
    with tempfile.TemporaryDirectory(prefix="bench-strace-") as tmp:
        out = Path(tmp) / "strace.txt"
        tracer = subprocess.Popen(["strace", "-c", "-f", "-p", str(pid), "-o", str(out)],
                                  stderr=subprocess.DEVNULL)
        time.sleep(1.0)  # attached to every thread
        result = load.closed(port, seconds, connections, False, tool)
        tracer.terminate()
        tracer.wait(30)
        calls: dict[str, int] = {}
        for line in out.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 5 and parts[0][0].isdigit() and parts[-1].isidentifier():
                calls[parts[-1]] = int(parts[3])
    return result["rate"] * seconds, calls


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=2)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--tree", type=Path, action="append", default=[], metavar="DIR",
                    help="also the sidecar of this checkout")
    args = ap.parse_args()
    if shutil.which("strace") is None:
        print("strace is not installed (apt-get install strace)")
        return 1
    tool = shutil.which("wrk") or "python"
    budget = Budget(120)
    rows = {}
    bare = CeilingServer(budget)
    try:
        rows["bare handler"] = counts(bare.proc.pid, bare.port, args.seconds, args.connections, tool)
    finally:
        bare.stop()
    for name, root in [("sidecar", None), *((f"sidecar of {t.name}", t) for t in args.tree)]:
        sidecar = Sidecar(budget, 4, "info") if root is None else Sidecar(budget, 4, "info", root=root.resolve())
        try:
            sidecar.start()
            sidecar.wait_port()
            sidecar.wait_ready()
            rows[name] = counts(sidecar.pid, sidecar.port, args.seconds, args.connections, tool)
        finally:
            sidecar.stop()
            sidecar.cleanup()
    print(f"system calls per 401 under strace -c -f ({args.connections} connections, {tool}):")
    print(f"| server | requests | {' | '.join(SHOWN)} |")
    print(f"|---|---|{'---|' * len(SHOWN)}")
    for name, (requests, calls) in rows.items():
        per = [f"{calls.get(c, 0) / requests:.2f}" if requests else "-" for c in SHOWN]
        print(f"| {name} | {requests:.0f} | {' | '.join(per)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
