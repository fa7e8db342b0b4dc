"""One attempt of one job, the same for every spool backend: which route runs, the hook
run itself, and what its result means (done, retry at a time, dead letter).

The scheduler (scheduler.py, with a queue policy per kind of store) decides *when* a job
runs; this module decides *what* runs and what the outcome is.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from . import logs, metrics, runner
from .carry import Carrier, Job
from .config import Config, Route
from .replies import ReplySpec
from .spool import JobRow, route_spec

CRASH_RETRY_S = 30.0  # an attempt that failed in our code, not the hook's: tried again this much later
UNKNOWN = "the stored route is in no loaded table; no route of that name: not run, kept as a dead letter"
CHANGED = "the stored route is in no loaded table; running the route of that name as the table defines it"
NO_TARGET = "the table has no forward route of this name: not run, kept as a dead letter"


def backoff_s(attempt: int, base_s: float, max_s: float) -> float:
    """Delay before attempt `attempt + 1`: base * 2^(attempt-1), capped, with 50-100% jitter."""
    return min(max_s, base_s * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)


class KnownRoutes:
    """Every route spec of every table this process loaded: the only argv a job may run.

    The spool stores the route a job was accepted for, so a reload does not change a
    queued job. A spool row is data, though, and data can be written by someone else
    (an unsandboxed hook with the sidecar's uid): a stored route that no loaded table
    ever had is never run as it stands.
    """

    def __init__(self) -> None:
        self._specs: set[str] = set()
        self._lock = threading.Lock()

    def add(self, cfg: Config) -> None:
        specs = {route_spec(r) for ep in cfg.endpoints.values() for r in ep.routes}
        with self._lock:
            self._specs |= specs

    def __contains__(self, spec: object) -> bool:
        return spec in self._specs


def resolve(row: JobRow, cfg: Config, known: KnownRoutes) -> tuple[Route | None, str]:
    """The route to run for a stored job, and why it differs from the stored one ("" if not).

    A stored route from a loaded table runs as stored. One that no loaded table had
    (edited in the spool, or from a table of an earlier process that has changed since)
    runs as the current table defines that route name; with no such route it runs not at all.
    """
    if row.spec in known:
        return row.route, ""
    current = live_route(cfg, row.endpoint, row.route.name)
    return current, "route_changed" if current else "route_unknown"


def live_route(cfg: Config, endpoint: str, name: str) -> Route | None:
    """The route `name` of `endpoint` in the table `cfg`; None when it has none."""
    ep = cfg.endpoints.get(endpoint)
    return next((r for r in ep.routes if r.name == name), None) if ep else None


@dataclass
class Attempt:
    """What one attempt did and what it means for the job."""

    job_id: int
    job: Job
    result: runner.Result | None
    state: str  # done | failed | pending (a retry at next_at) | interrupted (not an attempt)
    next_at: float
    outcome: str  # ok | failed | timeout | error | signal | route_unknown | interrupted
    fields: dict[str, Any] = field(default_factory=dict)


def run(job_id: int, row: JobRow, body: bytes, cfg: Config, known: KnownRoutes, cancel: threading.Event,
        replica: str = "", attempts_used: int | None = None, *, hooks: Carrier, forwards: Carrier,
        reply: ReplySpec | None = None) -> Attempt:
    """Run one attempt of a stored job with `body`: its hook through `hooks` (the launcher) or its POST
    through `forwards`; decide its outcome (nothing recorded here)."""
    attempt = (row.attempts if attempts_used is None else attempts_used) + 1
    route, why = resolve(row, cfg, known)
    job = Job(delivery=row.delivery, endpoint=row.endpoint, provider=row.provider, event=row.event,
              route=route or row.route, request_id=row.request_id, cwd=row.cwd, attempt=attempt, replica=replica,
              context=row.context, reply=reply is not None, received_at=row.received_at)
    fields: dict[str, Any] = dict(job=job_id, delivery=job.delivery, endpoint=job.endpoint, provider=job.provider,
                                  event=job.event, route=job.route.name, attempt=attempt, request_id=job.request_id,
                                  replica=replica or None)
    # The sandbox options and a forward's target are the live table's route's (by name), never a stored
    # job's: a spool row is data, and a target's signing secret is never stored.
    live = live_route(cfg, row.endpoint, route.name) if route is not None else None
    detail = CHANGED if route is not None else UNKNOWN
    if route is not None and route.forward is not None and (live is None or live.forward is None):
        route, why, detail = None, "route_unknown", NO_TARGET
    if why:
        (logs.error if route is None else logs.warning)(f"job.{why}", **fields, detail=detail)
    if route is None:
        return Attempt(job_id, job, None, "failed", 0.0, "route_unknown", fields)
    carrier = forwards if route.forward is not None else hooks
    result = carrier.carry(job, body, live, cancel, reply.max_bytes if reply else 0)
    fields.update(result.fields)
    if result.cancelled:
        return Attempt(job_id, job, result, "interrupted", 0.0, "interrupted", fields)
    if result.ok:
        state, next_at = "done", 0.0
    elif result.retryable and attempt <= route.retries:
        state = "pending"
        next_at = time.time() + max(backoff_s(attempt, cfg.retry_backoff_s, cfg.retry_backoff_max_s),
                                    result.retry_after_s)
    else:
        state, next_at = "failed", 0.0
    return Attempt(job_id, job, result, state, next_at, result.outcome, fields)


def report(a: Attempt) -> None:
    """Metrics and the hook.finished line: call once the attempt's record is committed."""
    if a.result is not None:
        metrics.child(metrics.HOOK_RUNS, a.job.endpoint, a.job.route.name, a.outcome).inc()
        metrics.child(metrics.HOOK_DURATION, a.job.endpoint, a.job.route.name).observe(a.result.duration_s)
    if a.state == "failed":
        metrics.child(metrics.DEAD_LETTERS, a.job.endpoint, a.job.route.name).inc()
    emit = logs.info if a.state == "done" else (logs.warning if a.state == "pending" else logs.error)
    emit("hook.finished", **a.fields, outcome=a.outcome, state=a.state,
         retry_in_s=round(max(0.0, a.next_at - time.time()), 2) if a.state == "pending" else None,
         dead_letter=True if a.state == "failed" else None)


def interrupted(a: Attempt, detail: str) -> None:
    logs.warning("hook.interrupted", **a.fields, detail=detail)


def routes_of(cfgs: Iterable[Config]) -> KnownRoutes:
    known = KnownRoutes()
    for cfg in cfgs:
        known.add(cfg)
    return known
