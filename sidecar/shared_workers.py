"""Workers for the shared (PostgreSQL) spool: every replica claims due jobs from one queue.

The same surface as workers.Workers (submit, depth, running, health, stop, close), and
the same attempt semantics (attempts.py); what differs is *when* a job runs here:
- One dispatcher thread claims due jobs as leases, as many as there are free worker
  threads. It wakes on LISTEN/NOTIFY (new work), on a finished run, and at the next due
  time; a poll every POLL_S is the real mechanism (notifications are not durable).
- A keeper thread renews the leases of the jobs this replica holds and is its heartbeat,
  every lease_s/3 (more often when a renewal failed). Its outcome is health(): database
  unreachable -> /readyz and POSTs 503.
- Fencing: a running hook whose lease could not be renewed is stopped before the lease
  runs out, so another replica's takeover never overlaps a live run.
- A finished attempt stays on the books until its record commits (retried, never
  dropped); it is logged only then. A record refused because the lease was taken over
  in between (an outage longer than the lease) is dropped: the other replica's run counts.
- stop(): no new claims, running hooks get the grace period, then everything held is
  handed back at once (leases cleared, not counted as attempts).
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections.abc import Callable, Sequence

from . import attempts, logs, metrics
from .attempts import Attempt, KnownRoutes
from .config import Config, Route
from .errors import QueueFull, Unavailable
from .spool import Accepted, Delivery, Retention
from .spool.postgres import DB_ERRORS, Claimed, Store

POLL_S = 1.0
PROBE_S = 1.0
PROBE_STALE_S = 5.0  # no successful round trip for this long: not ready
CRASH_RETRY_S = attempts.CRASH_RETRY_S


def _dead_letter(job_id: int, endpoint: str, route: str, delivery: str, attempt: int, ran_on: str) -> None:
    """A job whose last attempt died with its replica: logged as any dead letter (already committed)."""
    metrics.DEAD_LETTERS.labels(endpoint, route).inc()
    logs.error("hook.finished", job=job_id, delivery=delivery, endpoint=endpoint, route=route, attempt=attempt,
               replica=ran_on or None, outcome="taken_over", state="failed", dead_letter=True,
               detail="its last attempt ended with the replica running it (killed, lost): not run again")


class _Held:
    """A job this replica holds a lease on: running, or finished with its record not yet committed."""

    def __init__(self, claimed: Claimed, valid_until: float) -> None:
        self.claimed = claimed
        self.valid_until = valid_until  # monotonic: the lease is surely ours until then
        self.cancel = threading.Event()
        self.fenced = False
        self.attempt: Attempt | None = None  # set when the run ended and its record is pending
        self.recording = False  # a record is in flight (the worker's, or housekeeping's retry)


class SharedWorkers:
    """`max_workers` threads running jobs claimed from the shared spool."""

    def __init__(self, store: Store, max_workers: int, max_queue: int, config: Callable[[], Config],
                 known: KnownRoutes | None = None, replica: str = "") -> None:
        self.spool = store
        self.max_workers, self.max_queue = max_workers, max_queue
        self.config = config
        self.known = known or attempts.routes_of([config()])
        self.replica = replica or store.replica
        self.lease_s = store.lease_s
        # Stop a hook this long before its lease could run out: SIGTERM, its kill grace, and a margin.
        self.fence_margin_s = min(attempts.STOP_KILL_GRACE_S + 1.0, self.lease_s / 2)
        self._lock = threading.Condition()
        self._held: dict[int, _Held] = {}
        self._claimed = 0  # claimed and not finished: waiting for a worker thread, or running
        self._running = 0  # worker threads running a hook
        self._seq = itertools.count()
        self._wake = threading.Event()
        self._notify = threading.Event()  # other replicas should look at the queue now
        self._stopping = threading.Event()
        self._closed = threading.Event()
        self._problem: str | None = None
        self._ok_at = time.monotonic()
        self._depth, live = store.stats()
        metrics.LIVE_REPLICAS.set(live)
        metrics.track_queue(lambda: self.depth, lambda: self.running, max_queue)
        for job_id, route, delivery, state, endpoint, used in store.reclaimed:
            metrics.TAKEOVERS.inc()
            logs.warning("job.taken_over", job=job_id, delivery=delivery, route=route, taken_from=self.replica,
                         replica=self.replica, detail="held by this replica's previous run, which ended uncleanly")
            if state == "failed":
                _dead_letter(job_id, endpoint, route, delivery, used, self.replica)
        if self._depth:
            logs.info("spool.recovered", jobs=self._depth, detail="pending jobs in the shared spool")
        # Claimed jobs wait here for a worker: those of routes with a concurrency limit first (they
        # hold one of the route's cluster-wide slots), then in claim order.
        self._jobs: queue.PriorityQueue[tuple[int, int, _Held | None]] = queue.PriorityQueue()
        self._threads = [threading.Thread(target=self._work, name=f"worker-{i}", daemon=True)
                         for i in range(max_workers)]
        self._threads.append(threading.Thread(target=self._dispatch, name="spool-claim", daemon=True))
        for t in self._threads:
            t.start()
        for target, name in ((self._keep, "spool-lease"), (self._fence, "spool-fence"), (self._listen, "spool-listen"),
                             (self._notifier, "spool-notify"), (self._housekeeping, "spool-sync")):
            threading.Thread(target=target, name=name, daemon=True).start()

    @property
    def depth(self) -> int:
        """Pending jobs in the whole spool (every replica's), as of the last second."""
        return self._depth

    @property
    def running(self) -> int:
        return self._running

    def health(self) -> str | None:
        """Why the spool cannot take deliveries now, or None when it can."""
        if self._problem is None and time.monotonic() - self._ok_at > PROBE_STALE_S:
            return "spool database not responding"
        return self._problem

    def _db_failed(self, operation: str, error: BaseException, counted: bool = False) -> None:
        if not counted:
            metrics.DATABASE_ERRORS.labels(operation).inc()
        problem = "spool database unreachable"
        if self._problem != problem:
            self._problem = problem
            logs.error("spool.unavailable", reason=problem, operation=operation, spool=self.spool.location,
                       error=str(error).strip()[:300])

    def _db_ok(self) -> None:
        self._ok_at = time.monotonic()
        if self._problem is not None:
            logs.info("spool.recovered_writable", was=self._problem, spool=self.spool.location)
            self._problem = None
            self.spool.pool.check()  # drop the connections the outage broke before a request meets one

    # --- accepting --------------------------------------------------------------------
    def submit(self, delivery: Delivery, routes: Sequence[Route]) -> Accepted:
        """Commit the delivery's jobs to the shared spool (or raise QueueFull / Unavailable)."""
        problem = self.health()
        if problem:
            raise Unavailable(problem, retry_after=5)
        try:
            accepted = self.spool.accept(delivery, routes, self.max_queue, self._depth)
        except QueueFull:
            raise
        except Unavailable as e:
            self._db_failed("accept", e.__cause__ or e, counted=True)  # the store counted it
            raise
        self._depth += len(accepted.job_ids)  # until the next refresh, as the whole spool's count has it
        if accepted.job_ids:
            self._wake.set()
            self._notify.set()
        return accepted

    # --- running ----------------------------------------------------------------------
    def _dispatch(self) -> None:
        while not self._stopping.is_set():
            timeout = POLL_S
            # Up to one job per worker in reserve, claimed in the same transaction as the ones that
            # start now: fewer claim commits. Jobs of limited routes only for a worker free now.
            free = 2 * self.max_workers - self._claimed
            if free > 0 and self._problem is None:
                started = time.monotonic()
                try:
                    claimed, due = self.spool.claim(free, max(0, self.max_workers - self._claimed))
                except DB_ERRORS as e:
                    self._db_failed("claim", e)
                    claimed, due = [], None
                for c in claimed:
                    if c.taken_from is not None:
                        metrics.TAKEOVERS.inc()
                        logs.warning("job.taken_over", job=c.row.id, delivery=c.row.delivery, route=c.row.route.name,
                                     taken_from=c.taken_from, replica=self.replica, attempt=c.row.attempts + 1,
                                     detail="its lease expired on that replica (it died or lost the database)")
                    if c.row.state == "failed":  # that run was its last attempt: a dead letter, committed
                        _dead_letter(c.row.id, c.row.endpoint, c.row.route.name, c.row.delivery, c.row.attempts,
                                     c.taken_from or "")
                        continue
                    held = _Held(c, started + self.lease_s)
                    with self._lock:
                        self._held[c.row.id] = held
                        self._claimed += 1
                    limited = c.row.route.concurrency is not None
                    self._jobs.put((0 if limited else 1, next(self._seq), held))
                if claimed and len(claimed) == free:
                    continue  # there may be more
                if due is not None:
                    timeout = max(0.0, min(timeout, due - time.time()))
            self._wake.wait(timeout)
            self._wake.clear()

    def _work(self) -> None:
        while (held := self._jobs.get()[2]) is not None:
            c = held.claimed
            attempt: Attempt | None = None
            if self._stopping.is_set():  # claimed, never started: stop() hands it back with the rest
                with self._lock:
                    self._claimed -= 1
                    self._held.pop(c.row.id, None)
                continue
            if held.cancel.is_set():  # fenced or its lease lost while it waited: never start it
                with self._lock:
                    self._claimed -= 1
                self._hand_back(held)
                self._wake.set()
                continue
            with self._lock:
                self._running += 1
            try:
                attempt = attempts.run(c.row.id, c.row, c.body, self.config(), self.known, held.cancel,
                                       self.replica, attempts_used=c.row.attempts)
            except Exception:
                logs.error("hook.crashed", exc_info=True, job=c.row.id, retry_in_s=CRASH_RETRY_S)
            with self._lock:
                self._running -= 1
                self._claimed -= 1
            self._wake.set()
            if attempt is None:  # our bug, not the hook's: hand it back for later, never forget it
                self._hand_back(held, time.time() + CRASH_RETRY_S)
            elif attempt.state == "interrupted":
                why = "lease could not be renewed (fenced)" if held.fenced else "stopped at shutdown"
                attempts.interrupted(attempt, f"{why}; handed back to the queue")
                self._hand_back(held)
            else:
                held.attempt = attempt
                self._record(held)

    def _hand_back(self, held: _Held, next_at: float | None = None) -> None:
        try:
            self.spool.release(held.claimed.row.id, held.claimed.claim, next_at)
        except DB_ERRORS as e:
            self._db_failed("release", e)  # the lease runs out by itself
        with self._lock:
            self._held.pop(held.claimed.row.id, None)

    def _record(self, held: _Held) -> None:
        """Commit the attempt's outcome, then log it; on failure keep it for the next try."""
        a = held.attempt
        assert a is not None
        with self._lock:
            if held.recording:
                return
            held.recording = True
        result = a.result
        try:
            ours = self.spool.finish(a.job_id, held.claimed.claim, a.state, a.job.attempt, a.next_at,
                                     result.exit_code if result else None, a.outcome,
                                     result.output_tail if result else "", held.claimed.row.route.concurrency)
        except DB_ERRORS as e:
            held.recording = False
            metrics.DATABASE_ERRORS.labels("record").inc()
            if not a.warned:
                a.warned = True
                logs.warning("job.record_failed", job=a.job_id, route=a.job.route.name, state=a.state,
                             error=str(e).strip()[:300],
                             detail="outcome kept in memory and retried; the hook is not run again")
            return
        with self._lock:
            self._held.pop(a.job_id, None)
        if held.claimed.row.route.concurrency is not None or a.state == "pending":
            self._notify.set()  # a slot of a limited route is free, or a retry is queued: others may take it
        if ours:
            attempts.report(a)
        else:
            logs.warning("job.record_superseded", **a.fields, outcome=a.outcome,
                         detail="the lease expired before the outcome could be recorded and another replica"
                                " took the job over; its run counts")

    # --- leases, fencing, notifications ---------------------------------------------------
    def _keep(self) -> None:
        """Renew held leases and heartbeat; after a failure, retry each PROBE_S until it works."""
        interval = min(PROBE_S, self.lease_s / 3)
        while not self._closed.wait(interval):
            with self._lock:
                held = {i: h.claimed.claim for i, h in self._held.items()}
            started = time.monotonic()
            try:
                # A draining replica keeps its leases but no longer heartbeats: it stays out of new broadcasts.
                kept = self.spool.renew(held, heartbeat=not self._stopping.is_set())
            except DB_ERRORS as e:
                self._db_failed("renew", e)
                continue
            self._db_ok()
            with self._lock:
                for job_id in held:
                    h = self._held.get(job_id)
                    if h is None or h.claimed.claim != held[job_id]:
                        continue  # finished meanwhile (and maybe claimed again: a new lease, not this one)
                    if job_id in kept:
                        h.valid_until = started + self.lease_s
                    elif h.attempt is None and not h.cancel.is_set():
                        # Purged, or taken over by a replica that thought us dead: stop at once.
                        h.fenced = True
                        h.cancel.set()
                        logs.error("job.lease_lost", job=job_id, replica=self.replica,
                                   detail="the lease is no longer this replica's: hook stopped")

    def _fence(self) -> None:
        while not self._closed.wait(0.1):
            now = time.monotonic()
            with self._lock:
                late = [h for h in self._held.values() if h.attempt is None and not h.cancel.is_set()
                        and now > h.valid_until - self.fence_margin_s]
                for h in late:
                    h.fenced = True
                    h.cancel.set()
            for h in late:
                logs.error("job.fenced", job=h.claimed.row.id, delivery=h.claimed.row.delivery,
                           route=h.claimed.row.route.name, replica=self.replica,
                           detail="the lease could not be renewed: hook stopped before the lease runs out,"
                                  " so a takeover never overlaps it")

    def _listen(self) -> None:
        """Wake the dispatcher when any replica commits new work; reconnects by itself."""
        while not self._closed.is_set():
            try:
                with self.spool.connect_listener() as conn:
                    self._wake.set()  # whatever was committed while not listening
                    while not self._closed.is_set():
                        for _ in conn.notifies(timeout=1.0, stop_after=1):
                            self._wake.set()
            except DB_ERRORS:
                self._closed.wait(1.0)

    def _notifier(self) -> None:
        """One NOTIFY for however many accepts and freed slots happened while the last one was sent."""
        while not self._closed.is_set():
            if not self._notify.wait(1.0):
                continue
            self._notify.clear()
            try:
                self.spool.notify()
            except DB_ERRORS:
                self._closed.wait(1.0)  # the poll covers it; health is the keeper's to tell

    def _housekeeping(self) -> None:
        """Retry unrecorded outcomes; refresh depth and live replicas; drop gone replicas' broadcasts; prune."""
        retention, analyzed_at = Retention(), self._depth
        while not self._closed.wait(PROBE_S):
            try:
                with self._lock:
                    unrecorded = [h for h in self._held.values() if h.attempt is not None]
                for h in unrecorded:
                    self._record(h)
                depth, live = self.spool.stats()
                if not self._stopping.is_set():  # stop() counts after its hand-back; a slow read must not undo it
                    self._depth = depth
                metrics.LIVE_REPLICAS.set(live)
                if not analyzed_at / 2 <= self._depth <= analyzed_at * 2 + 100:
                    analyzed_at = self._depth
                    self.spool.analyze()
                for job_id, route, replica, delivery in self.spool.drop_gone():
                    metrics.BROADCAST_DROPPED.inc()
                    logs.warning("job.dropped", job=job_id, route=route, replica=replica, delivery=delivery,
                                 detail=f"broadcast job of a replica not seen for {10 * self.lease_s:g} s (gone)")
                retention.prune_if_due(self.spool.purge, self.config().retention_hours)
            except DB_ERRORS as e:
                self._db_failed("sync", e)

    # --- stopping ---------------------------------------------------------------------
    def stop(self, grace_s: float) -> bool:
        """Claim no more; give running hooks `grace_s`, then interrupt them; hand back all held work.

        True when every running hook finished within the grace period.
        """
        deadline = time.monotonic() + grace_s
        self._stopping.set()
        self._wake.set()
        reachable = self.health() is None  # else skip what would only wait for the pool's timeout
        try:
            if reachable:
                self.spool.leave()  # no new broadcast jobs for a replica on its way out
        except DB_ERRORS as e:
            self._db_failed("leave", e)
        while self._running and time.monotonic() < deadline:
            time.sleep(0.05)
        finished = self._running == 0
        with self._lock:
            for h in self._held.values():
                if h.attempt is None:
                    h.cancel.set()
        for _ in range(self.max_workers):
            self._jobs.put((-1, next(self._seq), None))
        for t in self._threads:
            t.join(attempts.STOP_KILL_GRACE_S + 5)
        with self._lock:
            unrecorded = [h for h in self._held.values() if h.attempt is not None]
        for h in unrecorded if reachable else []:
            self._record(h)  # one last try; a job whose record is lost runs again (at least once)
        if not reachable:
            logs.warning("spool.not_handed_back", replica=self.replica, spool=self.spool.location,
                         detail="database unreachable at shutdown: this replica's leases run out by themselves")
            return finished
        try:
            handed = self.spool.hand_back()
            if handed:
                logs.info("spool.handed_back", jobs=handed, replica=self.replica,
                          detail="leases cleared: other replicas run them now")
            self._depth = self.spool.stats()[0]
        except DB_ERRORS as e:
            self._db_failed("hand_back", e)
        return finished

    def close(self) -> None:
        """After stop(): end the background threads and close the pool."""
        self._closed.set()
        self.spool.close()
