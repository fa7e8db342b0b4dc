"""The one scheduler: worker threads run the jobs a queue policy hands out; one recorder thread
commits their outcomes in batches and reports each (metrics, `hook.finished`) once committed.

What is the same for every backend lives here: the threads, the run (attempts.run through the
launcher), a crash in our own code (the job runs again CRASH_RETRY_S later, never forgotten), an
outcome kept on the books until its record commits (a failed record is retried every RETRY_S,
the hook never run again for it), and the drain at shutdown. Which job is due, its slots, leases
and the store's books are the policy's (jobs.QueuePolicy: queue_local.py, queue_leased.py).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

from . import attempts, logs, metrics
from .attempts import Attempt, KnownRoutes
from .config import Config, Route
from .forward import Forwarder
from .forward_run import Forwarding
from .jobs import JobState, QueuePolicy, Ticket
from .launcher import STOP_KILL_GRACE_S, Launcher
from .replies import Replies, ReplySpec, Waiter
from .spool import Accepted, Delivery, SpoolAdmin

CRASH_RETRY_S = attempts.CRASH_RETRY_S  # an Executor's crash_retry_s by default
RETRY_S = 1.0  # a record that failed to commit is tried again this often
BATCH = 256  # outcomes committed in one transaction at most


class Executor:
    """`workers` threads running the jobs of `policy`; a `spool.Scheduler` for the server and service."""

    def __init__(self, policy: QueuePolicy, workers: int, max_queue: int, config: Callable[[], Config],
                 known: KnownRoutes | None = None, replica: str = "", *, launcher: Launcher | None = None,
                 execute: Callable[[Ticket], Attempt] | None = None) -> None:
        """`execute` runs one ticket (default: its hook through `launcher`, or its forward through a pool of
        keep-alive connections); tests pass their own."""
        self.policy = policy
        self.config = config
        self.known = known or attempts.routes_of([config()])
        self.replica = replica
        self.launcher = launcher or Launcher()
        self.forwarding = Forwarding(Forwarder())
        self.replies = Replies()
        self.execute = execute or self._run
        self.crash_retry_s = CRASH_RETRY_S
        self._cond = threading.Condition()
        self._running = 0
        self._stopping = False
        self._records: list[Ticket] = []  # outcomes waiting for the recorder
        self._failed: dict[int, Ticket] = {}  # outcomes whose record did not commit yet
        self._recorder_done = threading.Event()
        metrics.track_queue(lambda: self.depth, lambda: self.running, max_queue)
        self._threads = [threading.Thread(target=self._work, name=f"worker-{i}", daemon=True)
                         for i in range(workers)]
        self._recorder = threading.Thread(target=self._record_loop, name="recorder", daemon=True)
        policy.start(workers)
        for t in [*self._threads, self._recorder]:
            t.start()

    # --- the Scheduler surface ------------------------------------------------------------
    @property
    def spool(self) -> SpoolAdmin:
        return self.policy.spool

    @property
    def depth(self) -> int:
        return self.policy.depth

    @property
    def running(self) -> int:
        return self._running

    def health(self) -> str | None:
        return self.policy.health()

    def submit(self, delivery: Delivery, routes: Sequence[Route]) -> Accepted:
        return self.policy.submit(delivery, routes)

    # --- running ----------------------------------------------------------------------------
    def expect_reply(self, endpoint: str, delivery: str, route: str, spec: ReplySpec) -> Waiter:
        """A sender waits for the first run of this job (register before submit: it may start at once)."""
        return self.replies.expect(endpoint, delivery, route, spec)

    def replied(self, waiter: Waiter) -> None:
        self.replies.done(waiter)

    def _run(self, t: Ticket) -> Attempt:
        row = t.row
        waiter = self.replies.take(row.endpoint, row.delivery, row.route.name) if row.attempts == 0 else None
        attempt = attempts.run(t.job_id, row, t.body, self.config(), self.known, t.cancel, self.replica,
                               hooks=self.launcher, forwards=self.forwarding,
                               reply=waiter.spec if waiter is not None else None)
        if waiter is not None:
            attempt.fields["replied"] = waiter.deliver(attempt.result)
        return attempt

    def _work(self) -> None:
        while (t := self.policy.next()) is not None:
            with self._cond:
                started = not self._stopping
                self._running += started
            if not started:  # handed out as the drain began: never started, stays queued
                self.policy.ended(t, None, None)
                continue
            attempt: Attempt | None = None
            try:
                attempt = self.execute(t)
            except Exception:
                logs.error("hook.crashed", exc_info=True, job=t.job_id, retry_in_s=self.crash_retry_s)
            t.attempt = attempt
            # Our bug, not the hook's: the job runs again later, never forgotten.
            self.policy.ended(t, attempt, time.time() + self.crash_retry_s)
            with self._cond:
                self._running -= 1
                if attempt is not None and attempt.state != JobState.INTERRUPTED:
                    self._records.append(t)
                self._cond.notify_all()

    # --- recording --------------------------------------------------------------------------
    def _record_loop(self) -> None:
        retry_at = 0.0
        while not self._recorder_done.is_set():
            with self._cond:
                if not self._records:
                    self._cond.wait(RETRY_S)
                batch, self._records = self._records[:BATCH], self._records[BATCH:]
                if self._failed and time.monotonic() >= retry_at:
                    batch += self._failed.values()
                    self._failed.clear()
                    retry_at = time.monotonic() + RETRY_S
            if batch:
                self._commit(batch)

    def _commit(self, batch: list[Ticket]) -> None:
        """Record `batch` in one go; report what committed, keep what did not for the next try."""
        try:
            results = self.policy.record(batch)
        except Exception as e:
            results = [e] * len(batch)
        for t, result in zip(batch, results, strict=True):
            a = t.attempt
            assert a is not None
            if isinstance(result, BaseException):
                if not t.warned:
                    t.warned = True
                    logs.warning("job.record_failed", job=t.job_id, route=a.job.route.name, state=a.state,
                                 error=str(result).strip()[:300],
                                 detail="outcome kept in memory and retried; the hook is not run again")
                with self._cond:
                    self._failed[t.job_id] = t
                continue
            if result:
                attempts.report(a)
            else:
                logs.warning("job.record_superseded", **a.fields, outcome=a.outcome,
                             detail="the lease expired before the outcome could be recorded and another replica"
                                    " took the job over; its run counts")
            self.policy.recorded(t, result)

    # --- stopping ---------------------------------------------------------------------------
    def stop(self, grace_s: float) -> bool:
        """Start no more jobs; give running ones `grace_s`, then interrupt them (they stay queued); try
        the last records once (a job whose record is lost runs again: at least once). True when every
        running hook finished within the grace period."""
        deadline = time.monotonic() + grace_s
        with self._cond:
            self._stopping = True
        self.policy.stop_taking()
        with self._cond:
            while self._running and (left := deadline - time.monotonic()) > 0:
                self._cond.wait(left)
            finished = not self._running
        self.policy.cancel_running()
        for t in self._threads:
            t.join(STOP_KILL_GRACE_S + 5)
        self._recorder_done.set()
        with self._cond:
            self._cond.notify_all()
        self._recorder.join(30)
        with self._cond:
            last = [*self._records, *self._failed.values()]
            self._records, self._failed = [], {}
        if last:
            self._commit(last)
        self.policy.stopped()
        return finished

    def close(self) -> None:
        """After stop(): the policy's store closes (what it has queued is committed first)."""
        self.forwarding.close()
        self.policy.close()
