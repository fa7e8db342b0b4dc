"""Workers: run spooled jobs with bounded concurrency, retries with backoff, dead letters.

The queue policy: a delivery's jobs are committed all together or not at all
(QueueFull -> 503 above `max_queue` pending jobs, nothing half accepted). Jobs
start in order of their due time; a route with `concurrency: N` never has more
than N runs at once (1 = serialized). Exit 0 is done; exit 75 (EX_TEMPFAIL) or a
timeout is retried with exponential backoff and jitter up to the route's
`retries`; anything else fails at once. Failed jobs stay in the spool as dead
letters for `webhook-sidecar spool retry`.
"""

from __future__ import annotations

import heapq
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from . import logs, metrics, runner
from .config import Config, Route
from .errors import QueueFull
from .spool import Accepted, Delivery, Spool

EX_TEMPFAIL = 75
SYNC_INTERVAL_S = 1.0
PRUNE_INTERVAL_S = 600.0
STOP_KILL_GRACE_S = 3.0


@dataclass(frozen=True)
class Job:
    """One route's run for one delivery."""

    delivery: str
    endpoint: str
    provider: str
    event: str
    route: Route
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


def backoff_s(attempt: int, base_s: float, max_s: float) -> float:
    """Delay before attempt `attempt + 1`: base * 2^(attempt-1), capped, with 50-100% jitter."""
    return min(max_s, base_s * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)


class Workers:
    """`max_workers` threads running spooled jobs; at most `max_queue` pending at once."""

    def __init__(self, spool: Spool, max_workers: int, max_queue: int, config: Callable[[], Config]) -> None:
        self.spool = spool
        self.max_queue = max_queue
        self.config = config
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int]] = []
        self._meta: dict[int, tuple[tuple[str, str], int | None]] = {}  # id -> (route key, concurrency)
        self._running_keys: Counter[tuple[str, str]] = Counter()
        self._parked: dict[tuple[str, str], list[tuple[float, int]]] = {}
        self._cancels: dict[int, threading.Event] = {}
        self._reserved = 0  # queue slots held by deliveries being committed
        self._stopping = False
        self._stopped = threading.Event()
        recovered = spool.pending()
        for job_id, next_at, endpoint, route, concurrency in recovered:
            self._add(job_id, next_at, (endpoint, route), concurrency)
        if recovered:
            logs.info("spool.recovered", jobs=len(recovered), detail="pending jobs from before the restart")
        metrics.track_queue(lambda: self.depth, lambda: self.running, max_queue)
        self._threads = [threading.Thread(target=self._work, name=f"worker-{i}", daemon=True)
                         for i in range(max_workers)]
        for t in self._threads:
            t.start()
        threading.Thread(target=self._housekeeping, name="spool-sync", daemon=True).start()

    @property
    def depth(self) -> int:
        """Pending jobs: queued, waiting for a retry, or running."""
        return len(self._meta)

    @property
    def running(self) -> int:
        return len(self._cancels)

    def _add(self, job_id: int, next_at: float, key: tuple[str, str], concurrency: int | None) -> bool:
        """Queue a job (lock held); False when it went straight to its route's parking (no wake-up needed)."""
        if job_id in self._meta:
            return False  # the spool sync saw it committed before its submit() queued it: queued once
        self._meta[job_id] = (key, concurrency)
        if next_at <= time.time() and concurrency is not None and self._running_keys[key] >= concurrency:
            heapq.heappush(self._parked.setdefault(key, []), (next_at, job_id))
            return False
        heapq.heappush(self._heap, (next_at, job_id))
        return True

    # --- accepting --------------------------------------------------------------------
    def submit(self, delivery: Delivery, routes: Sequence[Route]) -> Accepted:
        """Commit the delivery's jobs to the spool (or raise QueueFull), then schedule them."""
        # Reserve the slots before the commit, so concurrent deliveries cannot
        # together pass the bound that each of them checked alone.
        with self._cond:
            if len(self._meta) + self._reserved + len(routes) > self.max_queue:
                raise QueueFull()
            self._reserved += len(routes)
        try:
            accepted = self.spool.accept(delivery, routes)
        except BaseException:
            with self._cond:
                self._reserved -= len(routes)
            raise
        with self._cond:
            self._reserved -= len(routes)  # in the same breath as the jobs take their places
            by_name = {r.name: r for r in routes}
            runnable = 0
            for job_id, name in zip(accepted.job_ids, accepted.routes, strict=True):
                route = by_name.get(name)
                concurrency = route.concurrency if route else self._stored_concurrency(job_id)
                runnable += self._add(job_id, 0.0, (delivery.endpoint, name), concurrency)
            if runnable:
                self._cond.notify(runnable)
        return accepted

    def _stored_concurrency(self, job_id: int) -> int | None:
        row = self.spool.job(job_id)
        return row.route.concurrency if row else None

    # --- running ----------------------------------------------------------------------
    def _take(self) -> tuple[int, threading.Event] | None:
        # Due jobs of a route at its concurrency limit are parked per route, and one
        # is handed back each time a run of that route ends: each job is looked at
        # O(1) times per start, however long the queue behind a serialized route.
        with self._cond:
            while not self._stopping:
                now = time.time()
                while self._heap and self._heap[0][0] <= now:
                    item = heapq.heappop(self._heap)
                    if item[1] not in self._meta or item[1] in self._cancels:
                        continue  # a stale duplicate entry
                    key, concurrency = self._meta[item[1]]
                    if concurrency is not None and self._running_keys[key] >= concurrency:
                        heapq.heappush(self._parked.setdefault(key, []), item)
                        continue
                    self._running_keys[key] += 1
                    cancel = self._cancels[item[1]] = threading.Event()
                    return item[1], cancel
                self._cond.wait(self._heap[0][0] - now if self._heap else None)
            return None

    def _release(self, job_id: int) -> None:
        """A run ended (lock held): free its route's slot and unpark the next due job of that route."""
        key = self._meta[job_id][0]
        self._running_keys[key] -= 1
        parked = self._parked.get(key)
        if parked:
            heapq.heappush(self._heap, heapq.heappop(parked))
            if not parked:
                del self._parked[key]

    def _work(self) -> None:
        while (taken := self._take()) is not None:
            job_id, cancel = taken
            retry_at: float | None = None
            keep = False
            recorded: Future[Any] | None = None
            try:
                retry_at, keep, recorded = self._run(job_id, cancel)
            except Exception:
                logs.error("hook.crashed", exc_info=True, job=job_id)
            finally:
                with self._cond:
                    self._release(job_id)
                    del self._cancels[job_id]
                    if retry_at is not None:
                        heapq.heappush(self._heap, (retry_at, job_id))
                    elif not keep and recorded is None:
                        del self._meta[job_id]
                    self._cond.notify_all()
            if recorded is not None:
                # The worker goes on at once; the job leaves the books when its result
                # is committed, so the spool sync cannot mistake it for a pending one.
                recorded.add_done_callback(lambda _f, job_id=job_id: self._forget(job_id))

    def _forget(self, job_id: int) -> None:
        with self._cond:
            self._meta.pop(job_id, None)
            self._cond.notify_all()

    def _run(self, job_id: int, cancel: threading.Event) -> tuple[float | None, bool, Future[Any] | None]:
        """Run one attempt: (retry time or None, whether the job stays pending without a retry,
        the pending commit of a final result)."""
        found = self.spool.job_to_run(job_id)
        if found is None or found[0].state != "pending":
            return None, False, None  # purged or finished elsewhere (spool CLI)
        row, body = found
        attempt = row.attempts + 1
        job = Job(delivery=row.delivery, endpoint=row.endpoint, provider=row.provider, event=row.event,
                  route=row.route, request_id=row.request_id, cwd=row.cwd, attempt=attempt)
        result = runner.run(row.route.argv, body, job.env(), row.route.timeout_s, cwd=row.cwd,
                            cancel=cancel, cancel_grace_s=STOP_KILL_GRACE_S)
        fields = dict(job=job_id, delivery=job.delivery, endpoint=job.endpoint, provider=job.provider,
                      event=job.event, route=job.route.name, attempt=attempt, exit_code=result.exit_code,
                      duration_ms=round(result.duration_s * 1000, 1), request_id=job.request_id,
                      output_tail=result.output_tail or None, error=result.error or None)
        if result.cancelled:
            # Stopped by a shutdown: not an attempt; it stays pending for the next start.
            logs.warning("hook.interrupted", **fields, detail="stopped at shutdown; runs again at the next start")
            return None, True, None
        outcome = "ok" if result.ok else ("timeout" if result.timed_out else ("error" if result.error else "failed"))
        retryable = result.timed_out or result.exit_code == EX_TEMPFAIL
        cfg = self.config()
        if result.ok:
            state, next_at = "done", 0.0
        elif retryable and attempt <= row.route.retries:
            state = "pending"
            next_at = time.time() + backoff_s(attempt, cfg.retry_backoff_s, cfg.retry_backoff_max_s)
        else:
            state, next_at = "failed", 0.0
        recorded = self.spool.finish(job_id, state, attempt, next_at, result.exit_code, outcome, result.output_tail)
        if state == "pending":
            recorded.result()  # the next attempt must read this attempt's count
        metrics.HOOK_RUNS.labels(job.endpoint, job.route.name, outcome).inc()
        metrics.HOOK_DURATION.labels(job.endpoint, job.route.name).observe(result.duration_s)
        if state == "failed":
            metrics.DEAD_LETTERS.labels(job.endpoint, job.route.name).inc()
        emit = logs.info if result.ok else (logs.warning if state == "pending" else logs.error)

        def log(_recorded: Future[Any] | None = None) -> None:
            emit("hook.finished", **fields, outcome=outcome, state=state,
                 retry_in_s=round(next_at - time.time(), 2) if state == "pending" else None,
                 dead_letter=True if state == "failed" else None)

        if state == "pending":
            log()
            return next_at, False, None
        # Logged once recorded, so `spool list` agrees with the log from that line on.
        recorded.add_done_callback(log)
        return None, False, recorded

    # --- housekeeping -------------------------------------------------------------------
    def _housekeeping(self) -> None:
        """Pick up jobs requeued by `webhook-sidecar spool retry`; prune old finished jobs."""
        last_prune, last_sync = 0.0, time.time()
        while not self._stopped.wait(SYNC_INTERVAL_S):
            try:
                # Only what changed lately: `spool retry` stamps updated_at (clocks are
                # the same machine's; the margin covers a commit in flight).
                since, last_sync = last_sync - 5.0, time.time()
                # Ids first (from the index): under load that is every job of the last seconds,
                # and only the few this process does not know need a full read.
                ids = self.spool.pending_ids(since)
                with self._cond:
                    unknown = [i for i in ids if i not in self._meta]
                pending = self.spool.pending(only=unknown) if unknown else []
                with self._cond:
                    fresh = [p for p in pending if p[0] not in self._meta]
                    for job_id, next_at, endpoint, route, concurrency in fresh:
                        self._add(job_id, next_at, (endpoint, route), concurrency)
                    if fresh:
                        self._cond.notify_all()
                retention_s = self.config().retention_hours * 3600
                if time.monotonic() - last_prune > min(PRUNE_INTERVAL_S, retention_s / 10):
                    last_prune = time.monotonic()
                    pruned = self.spool.purge(retention_s)
                    if pruned:
                        logs.info("spool.pruned", jobs=pruned)
            except Exception:
                logs.error("spool.sync_failed", exc_info=True)

    def stop(self, grace_s: float) -> bool:
        """Start no more jobs; give running ones `grace_s`, then interrupt them (they stay pending).

        True when every running hook finished within the grace period.
        """
        deadline = time.monotonic() + grace_s
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            while self._cancels and (left := deadline - time.monotonic()) > 0:
                self._cond.wait(left)
            finished = not self._cancels
            for cancel in self._cancels.values():
                cancel.set()
        self._stopped.set()
        for t in self._threads:
            t.join(STOP_KILL_GRACE_S + 5)
        return finished
