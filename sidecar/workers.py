"""Workers for the embedded spool: run spooled jobs with bounded concurrency, retries, dead letters.

The queue policy: a delivery's jobs are committed all together or not at all
(QueueFull -> 503 above `max_queue` pending jobs, nothing half accepted). Jobs
start in order of their due time; a route with `concurrency: N` never has more
than N runs at once (1 = serialized). What an attempt runs and what its result
means is attempts.py's, shared with the other backend.

A job stays on this process's books until its outcome is committed: a record
that fails to commit (disk full, the file locked by another process) is retried,
never dropped, so the job is neither forgotten nor found "pending" and run again.
"""

from __future__ import annotations

import functools
import heapq
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any

from . import attempts, logs, metrics
from .attempts import Attempt, KnownRoutes
from .config import Config, Route
from .errors import QueueFull
from .launcher import Launcher
from .spool import Accepted, Delivery, JobRow, Retention
from .spool.sqlite import Spool

SYNC_INTERVAL_S = 1.0
CRASH_RETRY_S = attempts.CRASH_RETRY_S
# Fresh jobs reach their worker in memory (delivery and route as accepted, from the loaded table)
# while their bodies take at most this much; beyond it, after a restart or for a retry, a worker
# reads the job back from the spool.
FRESH_BYTES = 8 * 1024 * 1024


class Workers:
    """`max_workers` threads running spooled jobs; at most `max_queue` pending at once."""

    def __init__(self, spool: Spool, max_workers: int, max_queue: int, config: Callable[[], Config],
                 known: KnownRoutes | None = None, replica: str = "", *, launcher: Launcher) -> None:
        self.spool = spool
        self.launcher = launcher
        self.max_queue = max_queue
        self.config = config
        self.known = known or attempts.routes_of([config()])
        self.replica = replica
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int]] = []
        self._meta: dict[int, tuple[tuple[str, str], int | None]] = {}  # id -> (route key, concurrency)
        self._running_keys: Counter[tuple[str, str]] = Counter()
        self._parked: dict[tuple[str, str], list[tuple[float, int]]] = {}
        self._cancels: dict[int, threading.Event] = {}
        self._fresh: dict[int, tuple[Delivery, Route]] = {}
        self._fresh_bytes = 0
        self._unrecorded: dict[int, Attempt] = {}  # outcomes whose record did not commit yet
        self._done_count = 0  # jobs recorded done: housekeeping drops bodies only when it moved
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

    def health(self) -> str | None:
        """Why the spool cannot take deliveries now, or None when it can."""
        return self.spool.health()

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
            full = len(self._meta) + self._reserved + len(routes) > self.max_queue
            if not full:
                self._reserved += len(routes)
        if full:
            # A redelivery of a delivery that is still queued adds nothing: it is a
            # duplicate whether or not the queue has room.
            if self.spool.is_duplicate(delivery):
                return Accepted("duplicate", (), ())
            raise QueueFull()
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
            keep = accepted.fresh and self._fresh_bytes + len(delivery.body) * len(routes) <= FRESH_BYTES
            for job_id, name in zip(accepted.job_ids, accepted.routes, strict=True):
                route = by_name.get(name)
                if keep and route is not None:
                    self._fresh[job_id] = (delivery, route)
                    self._fresh_bytes += len(delivery.body)
                concurrency = route.concurrency if route else self._stored_concurrency(job_id)
                runnable += self._add(job_id, 0.0, (delivery.endpoint, name), concurrency)
            if runnable:
                self._cond.notify(runnable)
        return accepted

    def _stored_concurrency(self, job_id: int) -> int | None:
        row = self.spool.job(job_id)
        return row.route.concurrency if row else None

    # --- running ----------------------------------------------------------------------
    def _take(self) -> tuple[int, threading.Event, tuple[Delivery, Route] | None] | None:
        # Due jobs of a route at its concurrency limit are parked per route, and one
        # is handed back each time a run of that route ends: each job is looked at
        # O(1) times per start, however long the queue behind a serialized route.
        with self._cond:
            while not self._stopping:
                now = time.time()
                while self._heap and self._heap[0][0] <= now:
                    item = heapq.heappop(self._heap)
                    if item[1] not in self._meta or item[1] in self._cancels or item[1] in self._unrecorded:
                        continue  # a stale duplicate entry
                    key, concurrency = self._meta[item[1]]
                    if concurrency is not None and self._running_keys[key] >= concurrency:
                        heapq.heappush(self._parked.setdefault(key, []), item)
                        continue
                    self._running_keys[key] += 1
                    cancel = self._cancels[item[1]] = threading.Event()
                    fresh = self._fresh.pop(item[1], None)
                    if fresh is not None:
                        self._fresh_bytes -= len(fresh[0].body)
                    return item[1], cancel, fresh
                self._cond.wait(self._heap[0][0] - now if self._heap else None)
            return None

    def _release(self, job_id: int) -> bool:
        """A run ended (lock held): free its route's slot and unpark the next due job of that route.

        True when a job was unparked (a waiting worker has something to take)."""
        key = self._meta[job_id][0]
        self._running_keys[key] -= 1
        parked = self._parked.get(key)
        if parked:
            heapq.heappush(self._heap, heapq.heappop(parked))
            if not parked:
                del self._parked[key]
            return True
        return False

    def _wake(self, runnable: bool) -> None:
        """After a change (lock held): one waiting worker when there is something new to take,
        everyone when stop() may be waiting for the last run; never all idle workers for nothing."""
        if self._stopping:
            self._cond.notify_all()
        elif runnable:
            self._cond.notify()

    def _work(self) -> None:
        while (taken := self._take()) is not None:
            job_id, cancel, fresh = taken
            attempt: Attempt | None = None
            gone = False
            try:
                # Just committed by submit(), first attempt: no need to read it back.
                found = self._fresh_row(job_id, *fresh) if fresh else self.spool.job_to_run(job_id)
                if found is None or found[0].state != "pending":
                    gone = True  # purged or finished elsewhere (spool CLI)
                else:
                    row, body = found
                    attempt = attempts.run(job_id, row, body, self.config(), self.known, cancel, self.replica,
                                           launcher=self.launcher)
            except Exception:
                logs.error("hook.crashed", exc_info=True, job=job_id, retry_in_s=CRASH_RETRY_S)
            with self._cond:
                runnable = self._release(job_id)
                del self._cancels[job_id]
                if gone:
                    del self._meta[job_id]
                elif attempt is None:  # our bug, not the hook's: try again later, never forget it
                    heapq.heappush(self._heap, (time.time() + CRASH_RETRY_S, job_id))
                    runnable = True  # a waiting worker's timeout may need to be shorter
                elif attempt.state == "interrupted":
                    pass  # a shutdown: stays pending on disk and on the books
                else:
                    # Not runnable until its record is in: a retry must read this attempt's count,
                    # and the sync must not mistake a finished job for a pending one.
                    self._unrecorded[job_id] = attempt
                self._wake(runnable)
            if attempt is not None and attempt.state == "interrupted":
                attempts.interrupted(attempt, "stopped at shutdown; runs again at the next start")
            elif attempt is not None:
                self._record(attempt)

    @staticmethod
    def _fresh_row(job_id: int, d: Delivery, route: Route) -> tuple[JobRow, bytes]:
        row = JobRow(id=job_id, state="pending", attempts=0, next_at=0.0, updated_at=0.0, route=route,
                     endpoint=d.endpoint, delivery=d.delivery, provider=d.provider, event=d.event,
                     request_id=d.request_id, cwd=d.cwd, received_at=0.0, exit_code=None, outcome=None,
                     output_tail=None)
        return row, d.body

    def _record(self, a: Attempt) -> None:
        with self._cond:
            if a.recording:
                return  # the last try is still queued behind a stuck writer
            a.recording = True
        result = a.result
        future = self.spool.finish(a.job_id, a.state, a.job.attempt, a.next_at,
                                   result.exit_code if result else None, a.outcome,
                                   result.output_tail if result else "")
        future.add_done_callback(functools.partial(self._recorded, a))

    def _recorded(self, a: Attempt, future: Future[Any]) -> None:
        """The outcome's record committed (logged from here on), or failed (kept and retried)."""
        error = future.exception()
        with self._cond:
            a.recording = False
        if error is not None:
            if not a.warned:
                a.warned = True
                logs.warning("job.record_failed", job=a.job_id, route=a.job.route.name, state=a.state,
                             error=str(error), detail="outcome kept in memory and retried; the hook is not run again")
            return
        attempts.report(a)
        with self._cond:
            self._unrecorded.pop(a.job_id, None)
            if a.state == "pending":
                heapq.heappush(self._heap, (a.next_at, a.job_id))
            else:
                self._meta.pop(a.job_id, None)
                if a.state == "done":
                    self._done_count += 1
            self._wake(a.state == "pending")

    # --- housekeeping -------------------------------------------------------------------
    def _housekeeping(self) -> None:
        """Retry unrecorded outcomes; pick up jobs requeued by `spool retry`; drop finished bodies;
        prune old finished jobs."""
        retention, last_sync = Retention(), time.time()
        # The first pass looks at every finished job (those of an earlier run too); later ones only
        # when a job was recorded done since, so an idle sidecar adds no write transaction.
        dropped_to, dropped_at = 0.0, -1
        while not self._stopped.wait(SYNC_INTERVAL_S):
            try:
                with self._cond:
                    unrecorded = list(self._unrecorded.values())
                for a in unrecorded:
                    self._record(a)
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
                retention.prune_if_due(self.spool.purge, self.config().retention_hours)
                done = self._done_count
                if done != dropped_at:
                    dropped_to, dropped_at = self.spool.drop_bodies(dropped_to), done
            except Exception as e:
                logs.error("spool.sync_failed", error=str(e))

    def close(self) -> None:
        """After stop(): close the spool (its writer commits what is queued first)."""
        self.spool.close()

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
            t.join(attempts.STOP_KILL_GRACE_S + 5)
        # Outcomes still unrecorded get one last try; a job whose record is lost runs
        # again at the next start (at least once), never silently dropped.
        with self._cond:
            unrecorded = list(self._unrecorded.values())
        for a in unrecorded:
            self._record(a)
        return finished
