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
from .config import Config, Route
from .config_context import header_variable
from .forward import Forwarder
from .forward_sign import Facts
from .launcher import Launcher
from .replies import ReplySpec
from .spool import NO_CONTEXT, Context, JobRow, route_spec

EX_TEMPFAIL = 75
CRASH_RETRY_S = 30.0  # an attempt that failed in our code, not the hook's: tried again this much later
STOP_KILL_GRACE_S = 3.0
CE_FACTS = ("id", "source", "type", "subject", "time")  # a CloudEvent's attributes hooks get as WEBHOOK_CE_*


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

    def env(self) -> dict[str, str]:
        """What the hook's environment adds to the launcher's (PATH, LANG, HOME, TMPDIR): route env, its
        env_from values, then the WEBHOOK_* facts and the request's passed headers and query (no secrets)."""
        facts = {
            "WEBHOOK_EVENT": self.event,
            "WEBHOOK_DELIVERY": self.delivery,
            "WEBHOOK_PROVIDER": self.provider,
            "WEBHOOK_ENDPOINT": self.endpoint,
            "WEBHOOK_ROUTE": self.route.name,
            "WEBHOOK_ATTEMPT": str(self.attempt),
            "WEBHOOK_REQUEST_ID": self.request_id,
        }
        if self.replica:
            facts["WEBHOOK_REPLICA"] = self.replica
        if self.reply:
            facts["WEBHOOK_REPLY"] = "1"
        for name, value in self.context.headers:
            facts[header_variable(name)] = value
        if self.context.query is not None:
            facts["WEBHOOK_QUERY"] = self.context.query
        if self.route.lane is not None:
            facts["WEBHOOK_LANE"] = self.context.lane(self.route.name)
        for key, value in self.context.cloudevent:
            if key in CE_FACTS and value:
                facts[f"WEBHOOK_CE_{key.upper()}"] = value
        return {**dict(self.route.env), **dict(self.context.route_env(self.route.name)), **facts}


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
    if route_spec(row.route) in known:
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
        replica: str = "", attempts_used: int | None = None, *, launcher: Launcher,
        forwarder: Forwarder, reply: ReplySpec | None = None) -> Attempt:
    """Run one attempt of a stored job with `body` on stdin through `launcher`; decide its outcome
    (nothing recorded here)."""
    attempt = (row.attempts if attempts_used is None else attempts_used) + 1
    route, why = resolve(row, cfg, known)
    job = Job(delivery=row.delivery, endpoint=row.endpoint, provider=row.provider, event=row.event,
              route=route or row.route, request_id=row.request_id, cwd=row.cwd, attempt=attempt, replica=replica,
              context=row.context, reply=reply is not None)
    fields: dict[str, Any] = dict(job=job_id, delivery=job.delivery, endpoint=job.endpoint, provider=job.provider,
                                  event=job.event, route=job.route.name, attempt=attempt, request_id=job.request_id,
                                  replica=replica or None)
    if why:
        log = logs.error if route is None else logs.warning
        log(f"job.{why}", **fields,
            detail="the stored route is in no loaded table; " + (
                "running the route of that name as the table defines it" if route else
                "no route of that name: not run, kept as a dead letter"))
    if route is None:
        return Attempt(job_id, job, None, "failed", 0.0, "route_unknown", fields)
    # The sandbox options and a forward's target are the live table's route's (by name), never a stored
    # job's: a spool row is data, and a target's signing secret is never stored.
    live = live_route(cfg, row.endpoint, route.name)
    if route.forward is not None:
        return _forwarded(job_id, job, body, live, row.received_at, cfg, forwarder, fields)
    result = launcher.run(route, body, job.env(), live=live, delivery=job.delivery, cwd=row.cwd, cancel=cancel,
                          cancel_grace_s=STOP_KILL_GRACE_S, reply_bytes=reply.max_bytes if reply else 0)
    signum = result.signal
    fields.update(exit_code=result.exit_code, signal=signum, duration_ms=round(result.duration_s * 1000, 1),
                  output_tail=result.output_tail or None, error=result.error or None,
                  leftovers=result.leftovers or None, hint=result.hint)
    if result.cancelled:
        return Attempt(job_id, job, result, "interrupted", 0.0, "interrupted", fields)
    transient = result.transient
    if result.ok:
        outcome = "ok"
    elif result.timed_out:
        outcome = "timeout"
    elif result.error:
        outcome = "error"
    elif signum:
        outcome = "signal"
    else:
        outcome = "failed"
    retryable = result.timed_out or result.exit_code == EX_TEMPFAIL or transient
    if result.ok:
        state, next_at = "done", 0.0
    elif retryable and attempt <= route.retries:
        state = "pending"
        next_at = time.time() + backoff_s(attempt, cfg.retry_backoff_s, cfg.retry_backoff_max_s)
    else:
        state, next_at = "failed", 0.0
    return Attempt(job_id, job, result, state, next_at, outcome, fields)


def _forwarded(job_id: int, job: Job, body: bytes, live: Route | None, received: float, cfg: Config,
               forwarder: Forwarder, fields: dict[str, Any]) -> Attempt:
    """One POST of a forward route: 2xx done; a connection error, timeout, 408, 429 or 5xx retried (a
    longer Retry-After honoured); any other status a dead letter at once."""
    target = live.forward if live is not None else None
    if target is None:
        logs.error("job.route_unknown", **fields, detail="the table has no forward route of this name:"
                                                         " not run, kept as a dead letter")
        return Attempt(job_id, job, None, "failed", 0.0, "route_unknown", fields)
    ctx = job.context
    facts = Facts(delivery=job.delivery, event=job.event, attempt=job.attempt, request_id=job.request_id,
                  endpoint=job.endpoint, provider=job.provider, headers=dict(ctx.forwarded), received=received or None,
                  cloudevent=dict(ctx.cloudevent) or None)
    sent = forwarder.post(target, body, ctx.content_type, facts)
    fields.update(sent.log_fields())
    timed_out = sent.error == "timeout"
    result = runner.Result(0 if sent.ok else None, timed_out, sent.duration_s, sent.tail, error=sent.error)
    if sent.ok:
        return Attempt(job_id, job, result, "done", 0.0, "ok", fields)
    outcome = "timeout" if timed_out else "failed"
    if sent.retryable and job.attempt <= job.route.retries:
        wait = max(backoff_s(job.attempt, cfg.retry_backoff_s, cfg.retry_backoff_max_s), sent.retry_after_s or 0.0)
        return Attempt(job_id, job, result, "pending", time.time() + wait, outcome, fields)
    return Attempt(job_id, job, result, "failed", 0.0, outcome, fields)


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
