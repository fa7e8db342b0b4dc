"""The leases one replica holds on the shared spool's jobs: how long each is surely ours, and when not.

A lease is valid until a monotonic time this replica knows (`valid_until`: when the claim or the last
renewal was sent, plus lease_s), however the database's clock runs. A run must be over before then:
- Fencing: with the database silent, a hook is stopped `margin` before its lease could run out
  (SIGTERM, the kill grace, a margin), so another replica's takeover never overlaps it.
- Pauses: the monotonic clock runs on while the process is stopped (SIGSTOP, a frozen cgroup). A
  run's cancel event (Lease) is true by itself once read past `valid_until - margin`; the hook's own
  worker thread reads it every 0.1 s, so after a pause longer than the lease the run ends the moment
  that thread runs again, before any other thread could renew, claim or record (each of those also
  calls Book.expire() first). What is left is the time the scheduler takes to run that thread.
- Lost: a renewal that no longer finds the lease ours (taken over, purged) stops the run at once.
"""

from __future__ import annotations

import threading
import time

from . import logs, metrics
from .attempts import Attempt
from .spool.postgres import Claimed

TAKEN_OVER = "its last attempt ended with the replica running it (killed, lost): not run again"


def dead_letter(job_id: int, endpoint: str, route: str, delivery: str, attempt: int, ran_on: str,
                outcome: str = "taken_over", detail: str = TAKEN_OVER) -> None:
    """A job made a dead letter by the spool itself: logged as any dead letter (already committed)."""
    metrics.DEAD_LETTERS.labels(endpoint, route).inc()
    logs.error("hook.finished", job=job_id, delivery=delivery, endpoint=endpoint, route=route, attempt=attempt,
               replica=ran_on or None, outcome=outcome, state="failed", dead_letter=True, detail=detail)


class Lease(threading.Event):
    """A run's cancel: set at shutdown or when the lease is lost, and set by itself when read after
    `valid_until` (monotonic, moved by each renewal) less `margin`."""

    def __init__(self, valid_until: float, margin: float) -> None:
        super().__init__()
        self.valid_until, self.margin = valid_until, margin
        self.expired = False

    def is_set(self) -> bool:
        if not super().is_set() and time.monotonic() > self.valid_until - self.margin:
            self.expired = True
            self.set()
        return super().is_set()


class Held:
    """A job this replica holds a lease on: running, or finished with its record not yet committed."""

    def __init__(self, claimed: Claimed, valid_until: float, margin: float) -> None:
        self.claimed = claimed
        self.cancel = Lease(valid_until, margin)
        self.lost = False  # the lease is another replica's now (seen at a renewal)
        self.told = False  # job.fenced (or job.lease_lost) was logged
        self.attempt: Attempt | None = None  # set when the run ended and its record is pending

    @property
    def fenced(self) -> bool:
        """Stopped because the lease ran out or was lost (not at shutdown)."""
        return self.lost or self.cancel.expired


class Book:
    """Every lease this replica holds, by job id."""

    def __init__(self, replica: str, lease_s: float, margin: float) -> None:
        self.replica, self.lease_s, self.margin = replica, lease_s, margin
        self.lock = threading.Lock()
        self.held: dict[int, Held] = {}

    def add(self, claimed: Claimed, valid_until: float) -> Held:
        held = Held(claimed, valid_until, self.margin)
        with self.lock:
            self.held[claimed.row.id] = held
        return held

    def drop(self, job_id: int) -> None:
        with self.lock:
            self.held.pop(job_id, None)

    def cancel_runs(self) -> None:
        """At shutdown: every run still going is interrupted."""
        with self.lock:
            for h in self.held.values():
                if h.attempt is None:
                    h.cancel.set()

    def expire(self) -> None:
        """End every run whose lease ran out (or is about to, the database silent), and say so."""
        with self.lock:
            late = [h for h in self.held.values() if h.attempt is None and not h.told and h.cancel.is_set()
                    and h.fenced]
            for h in late:
                h.told = True
        for h in late:
            logs.error("job.fenced", job=h.claimed.row.id, delivery=h.claimed.row.delivery,
                       route=h.claimed.row.route.name, replica=self.replica,
                       detail="the lease could not be renewed in time: hook stopped before the lease runs out,"
                              " or at once if it ran out already (a pause), so a takeover never overlaps it")

    def to_renew(self) -> dict[int, int]:
        """{id: claim} of the leases to renew: all but those of runs being stopped for their lease."""
        self.expire()  # first: a run whose lease ran out (a pause) is ended, never renewed
        with self.lock:
            return {i: h.claimed.claim for i, h in self.held.items() if h.attempt is not None or not h.fenced}

    def renewed(self, sent: dict[int, int], kept: set[int], started: float) -> None:
        """After a renewal sent at `started` (monotonic) for `sent`: `kept` are ours until started + lease_s;
        the others were taken over or purged: their runs stop at once."""
        with self.lock:
            for job_id, claim in sent.items():
                h = self.held.get(job_id)
                if h is None or h.claimed.claim != claim:
                    continue  # finished meanwhile (and maybe claimed again: a new lease, not this one)
                if job_id in kept:
                    h.cancel.valid_until = started + self.lease_s
                elif h.attempt is None and not h.cancel.is_set():
                    h.lost = h.told = True
                    h.cancel.set()
                    logs.error("job.lease_lost", job=job_id, replica=self.replica,
                               detail="the lease is no longer this replica's: hook stopped")
