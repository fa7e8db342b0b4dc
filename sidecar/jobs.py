"""The contract between the one scheduler (scheduler.py) and a queue policy (queue_local.py for a
store one process owns, queue_leased.py for one several replicas share).

The scheduler runs what a policy hands it and records what came of it; the policy alone decides
which job is due, holds its slot, and keeps the queue's books. A backend is a store module
(spool/sqlite.py, spool/postgres.py) and the policy that fits how it is shared.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from .attempts import Attempt
from .config import Route
from .spool import Accepted, Delivery, JobRow, SpoolAdmin


class JobState(StrEnum):
    """A job's state as stored (equal to its string), and what an attempt leaves it in."""

    PENDING = "pending"  # queued, waiting for a retry, or interrupted (not an attempt)
    DONE = "done"
    FAILED = "failed"  # a dead letter
    INTERRUPTED = "interrupted"  # an attempt's end only: stopped by us, stays pending
    SUPERSEDED = "superseded"  # queued in a lane (latest, debounce) when a newer delivery came: never runs


@dataclass(eq=False)
class Ticket:
    """A job handed to a worker: what to run, its cancel, and the policy's own handle on it."""

    row: JobRow
    body: bytes
    cancel: threading.Event
    handle: Any = None  # the policy's (a lease, for a shared queue)
    attempt: Attempt | None = None  # the run's outcome, once over
    warned: bool = False  # a failed record was logged once

    @property
    def job_id(self) -> int:
        return self.row.id


class QueuePolicy(Protocol):
    """What the scheduler needs of a queue: the jobs to run, and the books around each run."""

    @property
    def spool(self) -> SpoolAdmin: ...
    @property
    def depth(self) -> int: ...
    def health(self) -> str | None: ...
    def submit(self, delivery: Delivery, routes: Sequence[Route]) -> Accepted: ...

    def start(self, workers: int) -> None:
        """Begin handing out jobs (the policy's own threads, if any)."""
        ...

    def next(self) -> Ticket | None:
        """Block until a job may start now; None once stopping."""
        ...

    def ended(self, t: Ticket, attempt: Attempt | None, retry_at: float | None) -> None:
        """A run is over: free its slot. `attempt` None: it failed in our code (run again at `retry_at`), or
        never started (`retry_at` None: it stays queued as it was);
        state interrupted: it stays queued; otherwise its record follows (record, then recorded)."""
        ...

    def record(self, batch: Sequence[Ticket]) -> list[bool | BaseException]:
        """Commit the outcomes (one transaction where the store can): per ticket True, False when the
        job was no longer ours to record (taken over), or the error that kept it from committing."""
        ...

    def recorded(self, t: Ticket, ours: bool) -> None:
        """After a ticket's record committed: a retry is queued again, a finished job leaves the books."""
        ...

    def stop_taking(self) -> None:
        """Hand out no more jobs (`next` returns None to every worker)."""
        ...

    def cancel_running(self) -> None:
        """The grace period is over: interrupt every run still going."""
        ...

    def stopped(self) -> None:
        """Every worker has ended and the last records were tried: give back what is held."""
        ...

    def close(self) -> None: ...
