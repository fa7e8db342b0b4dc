"""One run of one job, as values, and what carries it to its target.

A `Job` is everything a run needs to know of its stored job (the route to run, the delivery's facts and
what it kept of its request). A `Carrier` takes it there and says what came of it as a runner.Result:
launcher.Launcher starts the route's hook, forward_run.Forwarding POSTs the body to the route's target.
attempts.run picks the carrier by the route and decides the job's state from the result alone.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Protocol

from .config import Route
from .runner import Result
from .spool import NO_CONTEXT, Context


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
    replica: str = ""
    context: Context = NO_CONTEXT  # what the delivery kept of its request (headers, query, env_from)
    reply: bool = False  # a sender waits for this run's stdout (WEBHOOK_REPLY=1)
    received_at: float = 0.0  # when the delivery was accepted (0: not known)


class Carrier(Protocol):
    """Runs a job once against its target and tells what came of it (never raises for the target's trouble)."""

    def carry(self, job: Job, body: bytes, live: Route | None, cancel: threading.Event | None,
              reply_bytes: int = 0) -> Result:
        """`live` is the live table's route of the job's name (its sandbox options, a forward's target and
        secret: never taken from a stored job), None when the table has none. `reply_bytes` > 0: a sender
        waits for the run's stdout (Result.stdout)."""
        ...
