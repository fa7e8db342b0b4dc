"""Workers for the shared (PostgreSQL) spool: every replica claims due jobs from one queue.

The same surface as workers.Workers (submit, depth, running, health, stop, close), and
the same attempt semantics (attempts.py); what differs is *when* a job runs here:
- One dispatcher thread claims due jobs as leases, as many as there are free worker
  threads. It wakes on LISTEN/NOTIFY (new work), on a finished run, and at the next due
  time; a poll every POLL_S is the real mechanism (notifications are not durable).
- A keeper thread renews the leases of the jobs this replica holds and is its heartbeat,
  every lease_s/3. Health (/readyz, POSTs 503) is the link's (shared_link.py): a probe and
  every operation's outcome.
- Fencing and pauses: the leases are shared_leases.py's; a run whose lease could not be
  renewed is stopped before the lease runs out, one whose lease ran out during a pause at
  once, so another replica's takeover never overlaps a live run.
- A finished attempt stays on the books until its record commits (retried, never
  dropped); it is logged only then. A record refused because the lease was taken over
  in between (an outage longer than the lease) is dropped: the other replica's run counts.
- Routes: this replica tells the store the routes it has (its table's, and every table's by content)
  and claims only those; a job no live replica has the route of becomes a dead letter after
  10 x lease_s (Store.strand). A rollout with two tables dead-letters nothing.
- Bounds: a delivery's commit gets COMMIT_DEADLINE_S, then 503 (its outcome unknown: a landed commit
  makes the sender's retry a duplicate); spool_max_bytes bounds the bodies held in the database.
- The database may be down at start: the link (shared_link.py) opens it when it can; the threads
  below start then.
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
from .launcher import Launcher
from .shared_leases import Book, Held, dead_letter
from .shared_link import Link
from .spool import Accepted, Delivery, Retention, route_spec
from .spool.pg_schema import spec_key
from .spool.pg_upkeep import GONE_LEASES, STRANDED_LEASES
from .spool.postgres import DB_ERRORS, Claimed, Store

POLL_S = 1.0
PROBE_S = 1.0
CRASH_RETRY_S = attempts.CRASH_RETRY_S
COMMIT_DEADLINE_S = 10.0  # a POST whose commit has not finished by then gets 503 (outcome unknown)


class SharedWorkers:
    """`max_workers` threads running jobs claimed from the shared spool."""

    def __init__(self, store: Store, max_workers: int, max_queue: int, config: Callable[[], Config],
                 known: KnownRoutes | None = None, replica: str = "", max_bytes: int = 0, *,
                 launcher: Launcher) -> None:
        """Start at once, the database reachable or not (see shared_link.py); SchemaTooNew when the
        database, reachable at start, was migrated by a newer release. Hooks start through `launcher`."""
        self.spool = store
        self.launcher = launcher
        self.max_workers, self.max_queue, self.max_bytes = max_workers, max_queue, max_bytes
        self.config = config
        self.known = known or attempts.routes_of([config()])
        self.replica = replica or store.replica
        self.lease_s = store.lease_s
        # Stop a hook this long before its lease could run out: SIGTERM, its kill grace, and a margin.
        self.fence_margin_s = min(attempts.STOP_KILL_GRACE_S + 1.0, self.lease_s / 2)
        self._lock = threading.Condition()
        self.book = Book(self.replica, self.lease_s, self.fence_margin_s)
        self._claimed = 0  # claimed and not finished: waiting for a worker thread, or running
        self._running = 0  # worker threads running a hook
        self._seq = itertools.count()
        self._wake = threading.Event()
        self._notify = threading.Event()  # other replicas should look at the queue now
        self._stopping = threading.Event()
        self._closed = threading.Event()
        self._depth = self._bytes = 0
        self._table: Config | None = None  # the table whose routes the store was last told
        self._skeys: set[str] = set()  # spec keys of every route of every table seen
        self._routes()
        metrics.track_queue(lambda: self.depth, lambda: self.running, max_queue)
        metrics.track_spool(lambda: self._bytes, max_bytes)
        # Claimed jobs wait here for a worker: those of routes with a concurrency limit first (they
        # hold one of the route's cluster-wide slots), then in claim order.
        self._jobs: queue.PriorityQueue[tuple[int, int, Held | None]] = queue.PriorityQueue()
        self._threads: list[threading.Thread] = []
        self.link = Link(store, self._opened)
        self.link.start()

    def _opened(self) -> None:
        """The database is open (at start, or later): what it holds, then the threads that use it."""
        store = self.spool
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
        self._threads = [threading.Thread(target=self._work, name=f"worker-{i}", daemon=True)
                         for i in range(self.max_workers)]
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
        self.spool.set_routes([f"{path}\n{r.name}\n" for path, r in routes], sorted(self._skeys))

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
            accepted = self.spool.accept(delivery, routes, self.max_queue, self._depth,
                                         deadline=time.monotonic() + COMMIT_DEADLINE_S)
        except QueueFull:
            raise
        except Unavailable as e:
            self.link.failed("accept", e.__cause__ or e, counted=True)  # the store counted it
            raise
        self._depth += len(accepted.job_ids)  # until the next refresh, as the whole spool's count has it
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
                    claimed, due = self.spool.claim(free, max(0, self.max_workers - self._claimed))
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

    def _work(self) -> None:
        while (held := self._jobs.get()[2]) is not None:
            c = held.claimed
            attempt: Attempt | None = None
            if self._stopping.is_set():  # claimed, never started: stop() hands it back with the rest
                with self._lock:
                    self._claimed -= 1
                self.book.drop(c.row.id)
                continue
            if held.cancel.is_set():  # its lease ran out or was lost while it waited: never start it
                with self._lock:
                    self._claimed -= 1
                self._hand_back(held)
                self._wake.set()
                continue
            with self._lock:
                self._running += 1
            try:
                attempt = attempts.run(c.row.id, c.row, c.body, self.config(), self.known, held.cancel,
                                       self.replica, attempts_used=c.row.attempts, launcher=self.launcher)
            except Exception:
                logs.error("hook.crashed", exc_info=True, job=c.row.id, retry_in_s=CRASH_RETRY_S)
            with self._lock:
                self._running -= 1
                self._claimed -= 1
            self._wake.set()
            if attempt is None:  # our bug, not the hook's: hand it back for later, never forget it
                self._hand_back(held, time.time() + CRASH_RETRY_S)
            elif attempt.state == "interrupted":
                why = "lease ran out or was lost (fenced)" if held.fenced else "stopped at shutdown"
                attempts.interrupted(attempt, f"{why}; handed back to the queue")
                self._hand_back(held)
            else:
                held.attempt = attempt
                self._record(held)

    def _hand_back(self, held: Held, next_at: float | None = None) -> None:
        try:
            self.spool.release(held.claimed.row.id, held.claimed.claim, next_at)
        except DB_ERRORS as e:
            self.link.failed("release", e)  # the lease runs out by itself
        self.book.drop(held.claimed.row.id)

    def _record(self, held: Held) -> None:
        """Commit the attempt's outcome, then log it; on failure keep it for the next try."""
        self.book.expire()  # first: runs whose lease ran out end before any other write
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
        self.book.drop(a.job_id)
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
            held = self.book.to_renew()  # first ends the runs whose lease ran out (a pause): never renewed
            self._routes()  # only here (and at start): a reload reaches claims and the registry within a second
            started = time.monotonic()
            try:
                # A draining replica keeps its leases but no longer heartbeats: it stays out of new broadcasts.
                kept = self.spool.renew(held, heartbeat=not self._stopping.is_set())
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
        """Retry unrecorded outcomes; refresh depth, bytes and live replicas; drop gone replicas' broadcasts;
        find jobs no live replica can run (each lease_s); prune."""
        retention, analyzed_at, stranded_at = Retention(), self._depth, 0.0
        while not self._closed.wait(PROBE_S):
            try:
                for h in self.book.unrecorded():
                    self._record(h)
                depth, live, self._bytes = self.spool.stats()
                if not self._stopping.is_set():  # stop() counts after its hand-back; a slow read must not undo it
                    self._depth = depth
                metrics.LIVE_REPLICAS.set(live)
                if not analyzed_at / 2 <= self._depth <= analyzed_at * 2 + 100:
                    analyzed_at = self._depth
                    self.spool.analyze()
                for job_id, route, replica, delivery in self.spool.drop_gone():
                    metrics.BROADCAST_DROPPED.inc()
                    logs.warning("job.dropped", job=job_id, route=route, replica=replica, delivery=delivery,
                                 detail=f"broadcast job of a replica not seen for {GONE_LEASES * self.lease_s:g} s"
                                        " (gone)")
                if time.monotonic() - stranded_at >= self.lease_s and not self._stopping.is_set():
                    stranded_at = time.monotonic()
                    self._strand()
                retention.prune_if_due(self.spool.purge, self.config().retention_hours)
            except DB_ERRORS as e:
                self.link.failed("sync", e)

    def _strand(self) -> None:
        """Jobs no live replica has the route of: said once when found, dead letters after the wait."""
        wait = STRANDED_LEASES * self.lease_s
        found: dict[str, int] = {}
        for job_id, route, state, delivery, endpoint, used, stranded in self.spool.strand():
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
    def stop(self, grace_s: float) -> bool:
        """Claim no more; give running hooks `grace_s`, then interrupt them; hand back all held work.

        True when every running hook finished within the grace period.
        """
        deadline = time.monotonic() + grace_s
        self._stopping.set()
        self._wake.set()
        if not self.link.opened.is_set():
            return True  # never opened: nothing ran, nothing is held
        reachable = self.health() is None  # else skip what would only wait for the pool's timeout
        try:
            if reachable:
                self.spool.leave()  # no new broadcast jobs for a replica on its way out
        except DB_ERRORS as e:
            self.link.failed("leave", e)
        while self._running and time.monotonic() < deadline:
            time.sleep(0.05)
        finished = self._running == 0
        self.book.cancel_runs()
        for _ in range(self.max_workers):
            self._jobs.put((-1, next(self._seq), None))
        for t in self._threads:
            t.join(attempts.STOP_KILL_GRACE_S + 5)
        for h in self.book.unrecorded() if reachable else []:
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
            self.link.failed("hand_back", e)
        return finished

    def close(self) -> None:
        """After stop(): end the background threads and close the pool."""
        self._closed.set()
        self.link.close()
        self.spool.close()
