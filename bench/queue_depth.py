"""The scheduler's cost per job against the depth of its queue: N deliveries queued behind a held hook,
then drained, with the in-memory store (tests/memory_queue.py), queue_local.LocalQueue and
scheduler.Executor: no disk, no process, so what grows with the queue is the scheduler's.

    .venv/bin/python -m bench.queue_depth 1000 100000

Prints, per depth: µs per submit over the last 1,000 submits, µs per job drained (take, run, record),
and the memory the scheduler's own modules hold per queued job (tracemalloc, the store's rows excluded).
"""

from __future__ import annotations

import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path

from sidecar import config as config_mod
from sidecar import logs
from sidecar.attempts import Attempt
from sidecar.carry import Job
from sidecar.jobs import JobState, Ticket
from sidecar.queue_local import LocalQueue
from sidecar.scheduler import Executor
from sidecar.spool import Delivery
from tests.memory_queue import MemoryStore
from tests.support import SCRIPTS, SECRET, table

OURS = ("queue_local.py", "scheduler.py", "lanes.py", "jobs.py")


def measure(n: int, cfg: config_mod.Config) -> dict[str, float]:
    gate = threading.Event()
    done = threading.Semaphore(0)

    def execute(t: Ticket) -> Attempt:
        gate.wait()
        row = t.row
        job = Job(delivery=row.delivery, endpoint=row.endpoint, provider=row.provider, event=row.event,
                  route=row.route, request_id=row.request_id, cwd=row.cwd, attempt=row.attempts + 1)
        done.release()
        return Attempt(t.job_id, job, None, JobState.DONE, 0.0, "ok", {"job": t.job_id})

    store = MemoryStore()
    executor = Executor(LocalQueue(store, n + 10, lambda: cfg), 4, n + 10, lambda: cfg, execute=execute)
    route = list(cfg.endpoints["/webhook"].routes)
    tracemalloc.start()
    base = _ours()
    last = 0.0
    for i in range(n):
        if i == n - 1000:
            last = time.perf_counter()
        executor.submit(Delivery("/webhook", f"d-{i}", "github", "push", f"r-{i}", "", b"{}"), route)
    submit_us = (time.perf_counter() - last) / 1000 * 1e6
    held = (_ours() - base) / n
    tracemalloc.stop()
    start = time.perf_counter()
    gate.set()
    for _ in range(n):
        done.acquire()
    drain_us = (time.perf_counter() - start) / n * 1e6
    executor.stop(5.0)
    executor.close()
    return {"depth": n, "submit_us": round(submit_us, 1), "drain_us_per_job": round(drain_us, 1),
            "scheduler_bytes_per_queued_job": round(held)}


def _ours() -> int:
    snap = tracemalloc.take_snapshot()
    return sum(s.size for s in snap.statistics("filename") if s.traceback[0].filename.endswith(OURS))


def main(depths: list[int]) -> None:
    logs.configure("warning")  # a hook.finished line per job would be most of what is measured
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / ".env").write_text(f"WEBHOOK_SECRET={SECRET}\n")
        (Path(d) / "config.yaml").write_text(table(f"- event: push\n  run: {SCRIPTS}/record.sh\n"))
        cfg = config_mod.load(Path(d) / "config.yaml", Path(d) / ".env")
        for n in depths:
            print(measure(n, cfg), flush=True)


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [1000, 100000])
