"""The queue policy of a store one process owns (the embedded sqlite spool; an in-memory store in tests).

A delivery's jobs are committed all together or not at all (QueueFull -> 503 above `max_queue`
pending jobs, nothing half accepted). Jobs start in order of their due time; a route with
`concurrency: N` never has more than N runs at once (1 = serialized): due jobs of a route at its
limit are parked per route, and one is handed back each time a run of that route ends, so each job
is looked at O(1) times per start however long the queue behind a serialized route. A route's lane
(lanes.py) runs its oldest pending job only, one at a time; a newer job of a `latest` lane supersedes
the queued ones in the store's accepting transaction, which asks the books which are not in flight.

The books are in memory, rebuilt from the store at start; a housekeeping thread picks up jobs
requeued by `spool retry`, drops finished bodies and prunes old jobs. A job stays on the books
until its outcome is committed (the scheduler retries a failed record), so it is neither forgotten
nor found "pending" and run again.
"""

from __future__ import annotations

import heapq
import threading
import time
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import Future
from typing import Any, Protocol

from . import attempts, lanes, logs, metrics
from .attempts import Attempt
from .config import Config, Route
from .errors import QueueFull
from .jobs import JobState, Ticket
from .lanes import LaneId
from .spool import Accepted, Delivery, JobRow, Retention, SpoolAdmin, route_spec

SYNC_INTERVAL_S = 1.0
# Fresh jobs reach their worker in memory (delivery and route as accepted, from the loaded table)
# while their bodies take at most this much; beyond it, after a restart or for a retry, a worker
# reads the job back from the store.
FRESH_BYTES = 8 * 1024 * 1024


class LocalStore(SpoolAdmin, Protocol):
    """What the local policy needs of a store: the embedded spool (spool/sqlite.py) has it."""

    def health(self) -> str | None: ...
    def accept(self, delivery: Delivery, routes: Sequence[Route],
               hold: Callable[[Sequence[int]], Collection[int]] | None = ...) -> Accepted: ...
    def is_duplicate(self, delivery: Delivery) -> bool: ...
    def job_to_run(self, job_id: int) -> tuple[JobRow, bytes] | None: ...
    def pending(self, changed_since: float = ...,
                only: Sequence[int] | None = ...) -> list[tuple[int, float, str, str, int | None, str | None]]: ...
    def pending_ids(self, changed_since: float) -> list[int]: ...
    def finish(self, job_id: int, state: str, attempts: int, next_at: float, exit_code: int | None,
               outcome: str, output_tail: str) -> Future[Any]: ...
    def drop_bodies(self, done_since: float) -> float: ...
    def close(self) -> None: ...


class LocalQueue:
    """The books of a queue this process alone runs: a heap by due time, per-route parking."""

    def __init__(self, store: LocalStore, max_queue: int, config: Callable[[], Config]) -> None:
        self.store = store
        self.max_queue = max_queue
        self.config = config
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int]] = []
        self._meta: dict[int, tuple[tuple[str, str], int | None, LaneId | None]] = {}  # id -> (route key,
        # concurrency, lane)
        self._lanes = lanes.Gate()
        self._inflight: set[int] = set()  # handed out until its record is in: a lane's job never superseded
        self._dropped: set[int] = set()  # superseded before the books knew them: never queued
        self._running_keys: Counter[tuple[str, str]] = Counter()
        self._parked: dict[tuple[str, str], list[tuple[float, int]]] = {}
        self._cancels: dict[int, threading.Event] = {}  # handed out, not ended
        self._fresh: dict[int, tuple[Delivery, Route]] = {}
        self._fresh_bytes = 0
        self._done_count = 0  # jobs recorded done: housekeeping drops bodies only when it moved
        self._reserved = 0  # queue slots held by deliveries being committed
        self._stopping = False
        self._stopped = threading.Event()
        recovered = sorted(store.pending())
        for job_id, next_at, endpoint, route, concurrency, lane in recovered:
            self._add(job_id, next_at, (endpoint, route), concurrency, lane)
        if recovered:
            logs.info("spool.recovered", jobs=len(recovered), detail="pending jobs from before the restart")
        metrics.track_lanes(self._lanes_waiting)

    @property
    def spool(self) -> LocalStore:
        return self.store

    @property
    def depth(self) -> int:
        """Pending jobs: queued, waiting for a retry, or running."""
        return len(self._meta)

    def health(self) -> str | None:
        """Why the spool cannot take deliveries now, or None when it can."""
        return self.store.health()

    def start(self, workers: int) -> None:
        threading.Thread(target=self._housekeeping, name="spool-sync", daemon=True).start()

    def _lanes_waiting(self) -> int:
        with self._cond:
            return self._lanes.waiting()

    def _add(self, job_id: int, next_at: float, key: tuple[str, str], concurrency: int | None,
             lane: str | None = None) -> bool:
        """Put a job on the books (lock held): queued, or behind its lane's oldest; False when nothing
        became runnable (no wake-up needed)."""
        if job_id in self._meta or job_id in self._dropped:
            self._dropped.discard(job_id)
            return False  # the spool sync saw it committed before its submit() queued it: queued once
        lane_id = None if lane is None else (*key, lane)
        self._meta[job_id] = (key, concurrency, lane_id)
        if lane_id is not None:
            return self._queue(self._lanes.add(lane_id, job_id, next_at))
        return self._queue((job_id, next_at))

    def _queue(self, candidate: tuple[int, float] | None) -> bool:
        """Into the heap, or its route's parking when due and the route is at its limit (lock held)."""
        if candidate is None:
            return False
        job_id, next_at = candidate
        key, concurrency, _ = self._meta[job_id]
        if next_at <= time.time() and concurrency is not None and self._running_keys[key] >= concurrency:
            heapq.heappush(self._parked.setdefault(key, []), (next_at, job_id))
            return False
        heapq.heappush(self._heap, (next_at, job_id))
        return True

    # --- accepting --------------------------------------------------------------------
    def submit(self, delivery: Delivery, routes: Sequence[Route]) -> Accepted:
        """Commit the delivery's jobs to the store (or raise QueueFull), then schedule them."""
        # Reserve the slots before the commit, so concurrent deliveries cannot
        # together pass the bound that each of them checked alone.
        with self._cond:
            full = len(self._meta) + self._reserved + len(routes) > self.max_queue
            if not full:
                self._reserved += len(routes)
        if full:
            # A redelivery of a delivery that is still queued adds nothing: it is a
            # duplicate whether or not the queue has room.
            if self.store.is_duplicate(delivery):
                return Accepted("duplicate", (), ())
            raise QueueFull()
        taken: list[tuple[int, tuple[tuple[str, str], int | None, LaneId | None] | None]] = []
        try:
            accepted = self.store.accept(delivery, routes, lambda ids: self._hold(ids, taken))
        except BaseException:
            with self._cond:
                self._reserved -= len(routes)
                self._unhold(taken)
            raise
        with self._cond:
            self._reserved -= len(routes)  # in the same breath as the jobs take their places
            self._book(delivery, routes, accepted)
        lanes.report(accepted.superseded, delivery.delivery)
        return accepted

    def _book(self, delivery: Delivery, routes: Sequence[Route], accepted: Accepted) -> None:
        """The accepted jobs on the books (lock held)."""
        by_name = {r.name: r for r in routes}
        runnable = 0
        keep = accepted.fresh and self._fresh_bytes + len(delivery.body) * len(routes) <= FRESH_BYTES
        for n, (job_id, name) in enumerate(zip(accepted.job_ids, accepted.routes, strict=True)):
            route = by_name.get(name)
            if keep and route is not None:
                self._fresh[job_id] = (delivery, route)
                self._fresh_bytes += len(delivery.body)
            row = None if route else self.store.job(job_id)  # a failed job put back, of a route now gone
            stored = route or (row.route if row else None)
            lane = None
            if stored is not None and stored.lane is not None:
                lane = (row.context if row else delivery.context).lane(name)
            runnable += self._add(job_id, accepted.due[n] if accepted.due else 0.0, (delivery.endpoint, name),
                                  stored.concurrency if stored else None, lane)
        self._done_count += len(accepted.superseded)  # their bodies may go
        if runnable:
            self._cond.notify(runnable)

    def _hold(self, ids: Sequence[int], taken: list[tuple[int, Any]]) -> list[int]:
        """Asked inside the accepting transaction: of a lane's pending `ids`, those not in flight, which a
        newer job supersedes; off the books now (a worker can no longer take one), noted in `taken`."""
        with self._cond:
            free = [i for i in ids if i not in self._inflight]
            for i in free:
                meta = self._meta.get(i)
                taken.append((i, meta))
                if meta is None:
                    self._dropped.add(i)  # its own submit() has not booked it yet
                else:
                    self._forget(i)
            return free

    def _unhold(self, taken: list[tuple[int, Any]]) -> None:
        """The accept did not commit (lock held): what it took off the books is pending still (read back
        from the store when it runs)."""
        for i, meta in taken:
            self._dropped.discard(i)
            if meta is not None:
                self._add(i, 0.0, meta[0], meta[1], meta[2][2] if meta[2] else None)

    def _forget(self, job_id: int) -> bool:
        """A job leaves the books (lock held); whether its lane's next became runnable."""
        _, _, lane = self._meta.pop(job_id)
        fresh = self._fresh.pop(job_id, None)
        if fresh is not None:
            self._fresh_bytes -= len(fresh[0].body)
        return lane is not None and self._queue(self._lanes.remove(lane, job_id))

    # --- handing out ------------------------------------------------------------------
    def next(self) -> Ticket | None:
        while (taken := self._take()) is not None:
            job_id, cancel, fresh = taken
            try:
                # Just committed by submit(), first attempt: no need to read it back.
                found = _fresh_row(job_id, *fresh) if fresh else self.store.job_to_run(job_id)
            except Exception:
                logs.error("hook.crashed", exc_info=True, job=job_id, retry_in_s=attempts.CRASH_RETRY_S)
                self._end(job_id, time.time() + attempts.CRASH_RETRY_S)
                continue
            if found is None or found[0].state != JobState.PENDING:
                self._end(job_id, None, gone=True)  # purged or finished elsewhere (spool CLI)
                continue
            return Ticket(found[0], found[1], cancel)
        return None

    def _take(self) -> tuple[int, threading.Event, tuple[Delivery, Route] | None] | None:
        with self._cond:
            while not self._stopping:
                now = time.time()
                while self._heap and self._heap[0][0] <= now:
                    item = heapq.heappop(self._heap)
                    if item[1] not in self._meta or item[1] in self._cancels:
                        continue  # a stale duplicate entry
                    key, concurrency, lane = self._meta[item[1]]
                    if concurrency is not None and self._running_keys[key] >= concurrency:
                        heapq.heappush(self._parked.setdefault(key, []), item)
                        continue
                    if lane is not None and not self._lanes.may_start(lane, item[1]):
                        continue  # not its lane's turn: the lane queues it again when it is
                    self._inflight.add(item[1])
                    self._running_keys[key] += 1
                    cancel = self._cancels[item[1]] = threading.Event()
                    fresh = self._fresh.pop(item[1], None)
                    if fresh is not None:
                        self._fresh_bytes -= len(fresh[0].body)
                    return item[1], cancel, fresh
                self._cond.wait(self._heap[0][0] - now if self._heap else None)
            return None

    def _end(self, job_id: int, again_at: float | None, gone: bool = False, landed: bool = True) -> None:
        """A handed-out job is back (lock not held): its route's slot freed, the next parked job of
        that route unparked; queued again at `again_at`, or off the books when `gone`. Not `landed`:
        its record follows, and its lane stays in flight until then."""
        with self._cond:
            key, _, lane = self._meta[job_id]
            self._running_keys[key] -= 1
            parked = self._parked.get(key)
            runnable = bool(parked)
            if parked:
                heapq.heappush(self._heap, heapq.heappop(parked))
                if not parked:
                    del self._parked[key]
            del self._cancels[job_id]
            if landed:
                self._inflight.discard(job_id)
            if gone:
                runnable |= self._forget(job_id)
            elif lane is not None:
                runnable |= landed and self._queue(self._lanes.land(lane, job_id, again_at))
            elif again_at is not None:
                heapq.heappush(self._heap, (again_at, job_id))
                runnable = True  # a waiting worker's timeout may need to be shorter
            self._wake(runnable)

    def _wake(self, runnable: bool) -> None:
        """After a change (lock held): one waiting worker when there is something new to take,
        everyone when stopping; never all idle workers for nothing."""
        if self._stopping:
            self._cond.notify_all()
        elif runnable:
            self._cond.notify()

    def ended(self, t: Ticket, attempt: Attempt | None, retry_at: float | None) -> None:
        # An attempt whose record follows is not runnable until the record is in: a retry must read
        # this attempt's count, and the sync must not mistake a finished job for a pending one.
        # An interrupted one (a shutdown) stays pending on disk and on the books.
        self._end(t.job_id, retry_at if attempt is None else None,
                  landed=attempt is None or attempt.state == JobState.INTERRUPTED)
        if attempt is not None and attempt.state == JobState.INTERRUPTED:
            attempts.interrupted(attempt, "stopped at shutdown; runs again at the next start")

    # --- recording ----------------------------------------------------------------------
    def record(self, batch: Sequence[Ticket]) -> list[bool | BaseException]:
        """One write each, queued together: the store's writer commits them in one transaction."""
        futures = []
        for t in batch:
            a = t.attempt
            assert a is not None
            result = a.result
            futures.append(self.store.finish(a.job_id, a.state, a.job.attempt, a.next_at,
                                             result.exit_code if result else None, a.outcome,
                                             result.output_tail if result else ""))
        results: list[bool | BaseException] = []
        for f in futures:
            error = f.exception()
            results.append(True if error is None else error)
        return results

    def recorded(self, t: Ticket, ours: bool) -> None:
        a = t.attempt
        assert a is not None
        with self._cond:
            self._inflight.discard(a.job_id)
            lane = self._meta[a.job_id][2] if a.job_id in self._meta else None
            if a.state == JobState.PENDING and lane is not None:
                runnable = self._queue(self._lanes.land(lane, a.job_id, a.next_at))
            elif a.state == JobState.PENDING:
                heapq.heappush(self._heap, (a.next_at, a.job_id))
                runnable = True
            else:
                runnable = a.job_id in self._meta and self._forget(a.job_id)
                if a.state == JobState.DONE:
                    self._done_count += 1
            self._wake(runnable)

    # --- housekeeping -------------------------------------------------------------------
    def _housekeeping(self) -> None:
        """Pick up jobs requeued by `spool retry`; drop finished bodies; prune old finished jobs."""
        retention, last_sync = Retention(), time.time()
        # The first pass looks at every finished job (those of an earlier run too); later ones only
        # when a job was recorded done since, so an idle sidecar adds no write transaction.
        dropped_to, dropped_at = 0.0, -1
        while not self._stopped.wait(SYNC_INTERVAL_S):
            try:
                # Only what changed lately: `spool retry` stamps updated_at (clocks are
                # the same machine's; the margin covers a commit in flight).
                since, last_sync = last_sync - 5.0, time.time()
                self._sync(since)
                retention.prune_if_due(self.store.purge, self.config().retention_hours)
                done = self._done_count
                if done != dropped_at:
                    dropped_to, dropped_at = self.store.drop_bodies(dropped_to), done
            except Exception as e:
                logs.error("spool.sync_failed", error=str(e))

    def _sync(self, since: float) -> None:
        # Ids first (from the index): under load that is every job of the last seconds,
        # and only the few this process does not know need a full read.
        ids = self.store.pending_ids(since)
        with self._cond:
            unknown = [i for i in ids if i not in self._meta]
        pending = self.store.pending(only=unknown) if unknown else []
        with self._cond:
            fresh = [p for p in pending if p[0] not in self._meta]
            for job_id, next_at, endpoint, route, concurrency, lane in sorted(fresh):
                self._add(job_id, next_at, (endpoint, route), concurrency, lane)
            if fresh:
                self._cond.notify_all()

    # --- stopping -----------------------------------------------------------------------
    def stop_taking(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()

    def cancel_running(self) -> None:
        with self._cond:
            for cancel in self._cancels.values():
                cancel.set()

    def stopped(self) -> None:
        self._stopped.set()

    def close(self) -> None:
        """After stop(): close the store (its writer commits what is queued first)."""
        self.store.close()


def _fresh_row(job_id: int, d: Delivery, route: Route) -> tuple[JobRow, bytes]:
    row = JobRow(id=job_id, state="pending", attempts=0, next_at=0.0, updated_at=0.0, route=route,
                 endpoint=d.endpoint, delivery=d.delivery, provider=d.provider, event=d.event,
                 request_id=d.request_id, cwd=d.cwd, received_at=0.0, exit_code=None, outcome=None,
                 output_tail=None, context=d.context, spec=route_spec(route))
    return row, d.body
