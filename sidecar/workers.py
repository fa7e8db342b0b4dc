"""A bounded pool that runs hook jobs after the response has been sent.

The queue policy is explicit: a delivery's jobs are queued all together or not
at all (QueueFull -> 503), so a sender never sees half of a delivery accepted.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass

from . import logs, runner
from .config import Route
from .errors import QueueFull


@dataclass(frozen=True)
class Job:
    """One route's run for one delivery."""

    delivery: str
    endpoint: str
    provider: str
    event: str
    route: Route
    body: bytes
    request_id: str
    cwd: str
    attempt: int = 1

    def env(self) -> dict[str, str]:
        """The hook's whole environment: route env, then the WEBHOOK_* facts (no secrets)."""
        return runner.hook_env({
            **dict(self.route.env),
            "WEBHOOK_EVENT": self.event,
            "WEBHOOK_DELIVERY": self.delivery,
            "WEBHOOK_PROVIDER": self.provider,
            "WEBHOOK_ENDPOINT": self.endpoint,
            "WEBHOOK_ROUTE": self.route.name,
            "WEBHOOK_ATTEMPT": str(self.attempt),
            "WEBHOOK_REQUEST_ID": self.request_id,
        })


def execute(job: Job) -> runner.Result:
    """Run one job's hook and write its `hook.finished` log line."""
    result = runner.run(job.route.argv, job.body, job.env(), job.route.timeout_s, cwd=job.cwd)
    outcome = "ok" if result.ok else ("timeout" if result.timed_out else ("error" if result.error else "failed"))
    emit = logs.info if result.ok else logs.warning
    emit("hook.finished", delivery=job.delivery, endpoint=job.endpoint, provider=job.provider,
         event=job.event, route=job.route.name, attempt=job.attempt, outcome=outcome,
         exit_code=result.exit_code, duration_ms=round(result.duration_s * 1000, 1),
         request_id=job.request_id, output_tail=result.output_tail or None, error=result.error or None)
    return result


class Workers:
    """`max_workers` threads taking jobs from a queue of at most `max_queue`."""

    def __init__(self, max_workers: int, max_queue: int) -> None:
        self.max_queue = max_queue
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._lock = threading.Lock()
        self._pending = 0  # queued + running
        self._idle = threading.Condition(self._lock)
        self._threads = [threading.Thread(target=self._work, name=f"worker-{i}", daemon=True)
                         for i in range(max_workers)]
        for t in self._threads:
            t.start()

    @property
    def depth(self) -> int:
        return self._pending

    def submit(self, jobs: list[Job]) -> None:
        """Queue all of `jobs`, or none of them and raise QueueFull."""
        with self._lock:
            if self._pending + len(jobs) > self.max_queue:
                raise QueueFull()
            self._pending += len(jobs)
        for job in jobs:
            self._queue.put(job)

    def _work(self) -> None:
        while (job := self._queue.get()) is not None:
            try:
                execute(job)
            except Exception:
                logs.error("hook.crashed", exc_info=True, delivery=job.delivery, route=job.route.name)
            finally:
                with self._lock:
                    self._pending -= 1
                    self._idle.notify_all()

    def drain(self, grace_s: float) -> bool:
        """Wait up to `grace_s` for queued and running jobs; True when all finished."""
        deadline = time.monotonic() + grace_s
        with self._lock:
            while self._pending and (left := deadline - time.monotonic()) > 0:
                self._idle.wait(left)
            done = self._pending == 0
        for _ in self._threads:
            self._queue.put(None)
        return done
