"""The queue policy of a store several replicas share (PostgreSQL): every replica claims due jobs
from one queue. The scheduler (scheduler.py) runs and records what this hands out, as for any store:
- One dispatcher thread claims due jobs as leases, as many as there are free worker
  threads. It wakes on LISTEN/NOTIFY (new work), on a finished run, and at the next due
  time; a poll every POLL_S is the real mechanism (notifications are not durable).
- A keeper thread renews the leases of the jobs this replica holds and is its heartbeat,
  every lease_s/3. Health (/readyz, POSTs 503) is the link's (shared_link.py): a probe and
  every operation's outcome.
- Fencing and pauses: the leases are shared_leases.py's; a run whose lease could not be
  renewed is stopped before the lease runs out, one whose lease ran out during a pause at
  once, so another replica's takeover never overlaps a live run.
- A record refused because the lease was taken over in between (an outage longer than the
  lease) is dropped: the other replica's run counts.
- Routes: this replica tells the store the routes it has (its table's, and every table's by content)
  and claims only those; a job no live replica has the route of becomes a dead letter after
  10 x lease_s (Store.strand). A rollout with two tables dead-letters nothing.
- Bounds: a delivery's commit gets COMMIT_DEADLINE_S, then 503 (its outcome unknown: a landed commit
  makes the sender's retry a duplicate); spool_max_bytes bounds the bodies held in the database.
- The database may be down at start: the link (shared_link.py) opens it when it can; the threads
  below start then.
- At shutdown: no new claims, running hooks get the grace period, then everything held is
  handed back at once (leases cleared, not counted as attempts).
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections.abc import Callable, Sequence

from . import attempts, lanes, launcher, logs, metrics
from .attempts import Attempt
from .config import Config, Route
from .errors import QueueFull, Unavailable
from .jobs import JobState, Ticket
from .shared_leases import Book, Held, dead_letter
from .shared_link import Link
from .spool import Accepted, Delivery, Retention, route_spec
from .spool.pg_schema import spec_key
from .spool.pg_upkeep import GONE_LEASES, STRANDED_LEASES
from .spool.postgres import DB_ERRORS, Claimed, Store

POLL_S = 1.0
PROBE_S = 1.0
COMMIT_DEADLINE_S = 10.0  # a POST whose commit has not finished by then gets 503 (outcome unknown)


class LeasedQueue:
    """Jobs claimed from the shared spool as leases, for `workers` threads of this replica."""

    def __init__(self, store: Store, max_queue: int, config: Callable[[], Config], max_bytes: int = 0) -> None:
        """Starts serving at start(), the database reachable or not (see shared_link.py); SchemaTooNew when
        the database, reachable at start, was migrated by a newer release."""
        self.store = store
        self.max_workers, self.max_queue, self.max_bytes = 1, max_queue, max_bytes
        self.config = config
        self.replica = store.replica
        self.lease_s = store.lease_s
        # Stop a hook this long before its lease could run out: SIGTERM, its kill grace, and a margin.
        self.fence_margin_s = min(launcher.STOP_KILL_GRACE_S + 1.0, self.lease_s / 2)
        self._lock = threading.Condition()
        self.book = Book(self.replica, self.lease_s, self.fence_margin_s)
        self._claimed = 0  # claimed and not finished: waiting for a worker thread, or running
        self._seq = itertools.count()
        self._wake = threading.Event()
        self._notify = threading.Event()  # other replicas should look at the queue now
        self._stopping = threading.Event()
        self._reachable = True  # at the start of the drain: else nothing is tried that would only time out
        self._closed = threading.Event()
        self._depth = self._bytes = 0
        self._table: Config | None = None  # the table whose routes the store was last told
        self._skeys: set[str] = set()  # spec keys of every route of every table seen
        self._routes()
        metrics.track_spool(lambda: self._bytes, max_bytes)
        self._lanes_waiting = 0
        metrics.track_lanes(lambda: self._lanes_waiting)
        # Claimed jobs wait here for a worker: those of routes with a concurrency limit first (they
        # hold one of the route's cluster-wide slots), then in claim order.
        self._jobs: queue.PriorityQueue[tuple[int, int, Held | None]] = queue.PriorityQueue()
        self.link = Link(store, self._opened)

    def start(self, workers: int) -> None:
        self.max_workers = workers
        self.link.start()

    def _opened(self) -> None:
        """The database is open (at start, or later): what it holds, then the threads that use it."""
        store = self.store
        for job_id, route, delivery, state, endpoint, used in store.reclaimed:
            metrics.TAKEOVERS.inc()
            logs.warning("job.taken_over", job=job_id, delivery=delivery, route=route, taken_from=self.replica,
                         replica=self.replica, detail="held by this replica's previous run, which ended uncleanly")
            if state == "failed":
                dead_letter(job_id, endpoint, route, delivery, used, self.replica)
        self._depth, live, self._bytes = store.stats()
        metrics.LIVE_REPLICAS.set(live)
        if self._depth:
            logs.info("spool.recovered", jobs=self._depth, detail="pending jobs in the shared spool")
        for target, name in ((self._dispatch, "spool-claim"), (self._keep, "spool-lease"),
                             (self._fence, "spool-fence"), (self._listen, "spool-listen"),
                             (self._notifier, "spool-notify"), (self._housekeeping, "spool-sync")):
            threading.Thread(target=target, name=name, daemon=True).start()

    @property
    def spool(self) -> Store:
        return self.store

    @property
    def depth(self) -> int:
        """Pending jobs in the whole spool (every replica's), as of the last second."""
        return self._depth

    def health(self) -> str | None:
        """Why the spool cannot take deliveries now, or None when it can."""
        return self.link.health()

    def _routes(self) -> None:
        """Tell the store which routes this replica has, when the table in use changed: the table's
        by name, and by content every route of every table seen (those run as stored)."""
        cfg = self.config()
        if cfg is self._table:
            return
        self._table = cfg
        routes = [(ep.path, r) for ep in cfg.endpoints.values() for r in ep.routes]
        self._skeys.update(spec_key(route_spec(r)) for _, r in routes)
        self.store.set_routes([f"{path}\n{r.name}\n" for path, r in routes], sorted(self._skeys))

    # --- accepting --------------------------------------------------------------------
    def submit(self, delivery: Delivery, routes: Sequence[Route]) -> Accepted:
        """Commit the delivery's jobs to the shared spool (or raise QueueFull / Unavailable), within
        COMMIT_DEADLINE_S: past it, 503, the outcome unknown (a landed commit dedupes the retry)."""
        problem = self.health()
        if problem:
            raise Unavailable(problem, retry_after=5)
        if self.max_bytes and self._bytes + len(delivery.body) > self.max_bytes:
            raise Unavailable("spool full (spool_max_bytes)", retry_after=30)
        try:
            accepted = self.store.accept(delivery, routes, self.max_queue, self._depth,
                                         deadline=time.monotonic() + COMMIT_DEADLINE_S)
        except QueueFull:
            raise
        except Unavailable as e:
            self.link.failed("accept", e.__cause__ or e, counted=True)  # the store counted it
            raise
        self._depth += len(accepted.job_ids) - len(accepted.superseded)  # until the next refresh (whole spool)
        lanes.report(accepted.superseded, delivery.delivery)
        if accepted.job_ids:
            self._bytes += len(delivery.body)  # likewise (a failed delivery put back counts twice till then)
            self._wake.set()
            self._notify.set()
        return accepted

    # --- running ----------------------------------------------------------------------
    def _dispatch(self) -> None:
        while not self._stopping.is_set():
            timeout = POLL_S
            self.book.expire()
            # Up to one job per worker in reserve, claimed in the same transaction as the ones that
            # start now: fewer claim commits. Jobs of limited routes only for a worker free now.
            free = 2 * self.max_workers - self._claimed
            if free > 0 and self.health() is None:
                started = time.monotonic()
                try:
                    claimed, due = self.store.claim(free, max(0, self.max_workers - self._claimed))
                except DB_ERRORS as e:
                    self.link.failed("claim", e)
                    claimed, due = [], None
                for c in claimed:
                    self._take(c, started + self.lease_s)
                if claimed and len(claimed) == free:
                    continue  # there may be more
                if due is not None:
                    timeout = max(0.0, min(timeout, due - time.time()))
            self._wake.wait(timeout)
            self._wake.clear()

    def _take(self, c: Claimed, valid_until: float) -> None:
        """A claimed job: queued for a worker, or (a takeover of its last attempt) a dead letter."""
        if c.taken_from is not None:
            metrics.TAKEOVERS.inc()
            logs.warning("job.taken_over", job=c.row.id, delivery=c.row.delivery, route=c.row.route.name,
                         taken_from=c.taken_from, replica=self.replica, attempt=c.row.attempts + 1,
                         detail="its lease expired on that replica (it died or lost the database)")
        if c.row.state == "failed":  # that run was its last attempt: a dead letter, committed
            dead_letter(c.row.id, c.row.endpoint, c.row.route.name, c.row.delivery, c.row.attempts,
                         c.taken_from or "")
            return
        held = self.book.add(c, valid_until)
        with self._lock:
            self._claimed += 1
        limited = c.row.route.concurrency is not None
        self._jobs.put((0 if limited else 1, next(self._seq), held))

    def next(self) -> Ticket | None:
        while (held := self._jobs.get()[2]) is not None:
            if self._stopping.is_set():  # claimed, never started: handed back with the rest
                with self._lock:
                    self._claimed -= 1
                self.book.drop(held.claimed.row.id)
                continue
            if held.cancel.is_set():  # its lease ran out or was lost while it waited: never start it
                with self._lock:
                    self._claimed -= 1
                self._hand_back(held)
                self._wake.set()
                continue
            return Ticket(held.claimed.row, held.claimed.body, held.cancel, held)
        return None

    def ended(self, t: Ticket, attempt: Attempt | None, retry_at: float | None) -> None:
        held: Held = t.handle
        with self._lock:
            self._claimed -= 1
        self._wake.set()
        if attempt is None:  # our bug (hand it back for later, never forget it), or never started
            self._hand_back(held, retry_at)
        elif attempt.state == JobState.INTERRUPTED:
            why = "lease ran out or was lost (fenced)" if held.fenced else "stopped at shutdown"
            attempts.interrupted(attempt, f"{why}; handed back to the queue")
            self._hand_back(held)
        else:
            held.attempt = attempt  # its record follows

    def _hand_back(self, held: Held, next_at: float | None = None) -> None:
        try:
            self.store.release(held.claimed.row.id, held.claimed.claim, next_at)
        except DB_ERRORS as e:
            self.link.failed("release", e)  # the lease runs out by itself
        self.book.drop(held.claimed.row.id)

    def record(self, batch: Sequence[Ticket]) -> list[bool | BaseException]:
        """The outcomes in one transaction, each only while its lease is still ours."""
        self.book.expire()  # first: runs whose lease ran out end before any other write
        if self._stopping.is_set() and not self._reachable:
            return [Unavailable("database unreachable at shutdown")] * len(batch)
        items = []
        for t in batch:
            a, held = t.attempt, t.handle
            assert a is not None and isinstance(held, Held)
            result = a.result
            items.append((a.job_id, held.claimed.claim, a.state, a.job.attempt, a.next_at,
                          result.exit_code if result else None, a.outcome, result.output_tail if result else ""))
        try:
            return list(self.store.finish_many(items))
        except DB_ERRORS as e:
            metrics.DATABASE_ERRORS.labels("record").inc()
            return [e] * len(batch)

    def recorded(self, t: Ticket, ours: bool) -> None:
        a, held = t.attempt, t.handle
        assert a is not None and isinstance(held, Held)
        self.book.drop(a.job_id)
        if held.claimed.row.route.concurrency is not None or a.state == JobState.PENDING:
            self._notify.set()  # a slot of a limited route is free, or a retry is queued: others may take it

    # --- leases, fencing, notifications ---------------------------------------------------
    def _keep(self) -> None:
        """Renew held leases and heartbeat; after a failure, retry each PROBE_S until it works."""
        interval = min(PROBE_S, self.lease_s / 3)
        while not self._closed.wait(interval):
            held = self.book.to_renew()  # first ends the runs whose lease ran out (a pause): never renewed
            self._routes()  # only here (and at start): a reload reaches claims and the registry within a second
            started = time.monotonic()
            try:
                # A draining replica keeps its leases but no longer heartbeats: it stays out of new broadcasts.
                kept = self.store.renew(held, heartbeat=not self._stopping.is_set())
            except DB_ERRORS as e:
                self.link.failed("renew", e)
                continue
            self.link.ok()
            self.book.renewed(held, kept, started)

    def _fence(self) -> None:
        """Say in the log which hooks were stopped for their lease (each one's thread stops it by itself)."""
        while not self._closed.wait(0.1):
            self.book.expire()

    def _listen(self) -> None:
        """Wake the dispatcher when any replica commits new work; reconnects by itself."""
        while not self._closed.is_set():
            try:
                with self.store.connect_listener() as conn:
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
                self.store.notify()
            except DB_ERRORS:
                self._closed.wait(1.0)  # the poll covers it; health is the keeper's to tell

    def _housekeeping(self) -> None:
        """Refresh depth, bytes and live replicas; drop gone replicas' broadcasts;
        find jobs no live replica can run (each lease_s); prune."""
        retention, analyzed_at, stranded_at = Retention(), self._depth, 0.0
        while not self._closed.wait(PROBE_S):
            try:
                depth, live, self._bytes = self.store.stats()
                if not self._stopping.is_set():  # stop() counts after its hand-back; a slow read must not undo it
                    self._depth = depth
                metrics.LIVE_REPLICAS.set(live)
                if any(r.lane for ep in self.config().endpoints.values() for r in ep.routes) or self._lanes_waiting:
                    self._lanes_waiting = self.store.lanes_waiting()
                if not analyzed_at / 2 <= self._depth <= analyzed_at * 2 + 100:
                    analyzed_at = self._depth
                    self.store.analyze()
                for job_id, route, replica, delivery in self.store.drop_gone():
                    metrics.BROADCAST_DROPPED.inc()
                    logs.warning("job.dropped", job=job_id, route=route, replica=replica, delivery=delivery,
                                 detail=f"broadcast job of a replica not seen for {GONE_LEASES * self.lease_s:g} s"
                                        " (gone)")
                if time.monotonic() - stranded_at >= self.lease_s and not self._stopping.is_set():
                    stranded_at = time.monotonic()
                    self._strand()
                retention.prune_if_due(self.store.purge, self.config().retention_hours)
            except DB_ERRORS as e:
                self.link.failed("sync", e)

    def _strand(self) -> None:
        """Jobs no live replica has the route of: said once when found, dead letters after the wait."""
        wait = STRANDED_LEASES * self.lease_s
        found: dict[str, int] = {}
        for job_id, route, state, delivery, endpoint, used, stranded in self.store.strand():
            if state == "failed":
                logs.error("job.route_unknown", job=job_id, delivery=delivery, endpoint=endpoint, route=route,
                           replica=self.replica, detail=f"no live replica has had this route in its table for"
                                                        f" {wait:g} s: not run, kept as a dead letter")
                dead_letter(job_id, endpoint, route, delivery, used, "", "route_unknown",
                             "no live replica has this route in its table (see job.route_unknown)")
            elif stranded:
                key = f"{endpoint} {route}"
                found[key] = found.get(key, 0) + 1
        if found:
            logs.warning("spool.route_missing", routes=found, replica=self.replica,
                         detail=f"jobs of routes no live replica has in its table wait for one (a rollout);"
                                f" after {wait:g} s they become dead letters")

    # --- stopping ---------------------------------------------------------------------
    def stop_taking(self) -> None:
        """Claim no more; a draining replica leaves the registry (no new broadcast jobs for it)."""
        self._stopping.set()
        self._wake.set()
        for _ in range(self.max_workers):
            self._jobs.put((-1, next(self._seq), None))
        if not self.link.opened.is_set():
            return  # never opened: nothing ran, nothing is held
        self._reachable = self.health() is None  # else skip what would only wait for the pool's timeout
        try:
            if self._reachable:
                self.store.leave()
        except DB_ERRORS as e:
            self.link.failed("leave", e)

    def cancel_running(self) -> None:
        self.book.cancel_runs()

    def stopped(self) -> None:
        """Every worker has ended: hand back everything held at once (leases cleared, no attempt counted)."""
        if not self.link.opened.is_set():
            return
        if not self._reachable:
            logs.warning("spool.not_handed_back", replica=self.replica, spool=self.store.location,
                         detail="database unreachable at shutdown: this replica's leases run out by themselves")
            return
        try:
            handed = self.store.hand_back()
            if handed:
                logs.info("spool.handed_back", jobs=handed, replica=self.replica,
                          detail="leases cleared: other replicas run them now")
            self._depth = self.store.stats()[0]
        except DB_ERRORS as e:
            self.link.failed("hand_back", e)

    def close(self) -> None:
        """After stop(): end the background threads and close the pool."""
        self._closed.set()
        self.link.close()
        self.store.close()
