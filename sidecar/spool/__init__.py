"""The durable queue of accepted deliveries: one interface, one module per backend.

Policy, the same for every backend:
- A delivery is acknowledged (200) only after its body and one job per matched route
  are committed; a commit that fails or whose outcome is unknown answers 503.
- Dedupe on (endpoint, delivery id): a redelivery whose jobs all succeeded or are still
  queued is a duplicate; one with failed jobs puts those back in the queue.
- Job states: pending (queued, waiting for a retry, or interrupted), done, failed
  (a dead letter). A job's outcome is logged only once it is committed.
- Finished deliveries drop their body (the id stays for dedupe); dead letters keep it.

Backends: `sqlite` (the embedded file spool, one process) and `postgres` (shared by
several replicas), each run by the one scheduler (scheduler.py) through its queue policy
(queue_local.py, queue_leased.py; the contract in jobs.py). The server and the service use the
scheduler as a `Scheduler`; the spool CLI uses a backend as a `SpoolAdmin`.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from .. import logs
from ..config import Route
from ..forward import Target
from ..lanes import Lane, Superseded
from ..replies import ReplySpec, Waiter

PRUNE_INTERVAL_S = 600.0


class SpoolDamaged(Exception):
    """The spool file failed its integrity check at start; it was set aside, never discarded."""

    def __init__(self, path: Path, aside: Path, problems: list[str]) -> None:
        super().__init__(f"{path}: damaged ({'; '.join(problems[:3])}); kept as {aside}")
        self.path, self.aside, self.problems = path, aside, problems


class SpoolUnreachable(Exception):
    """The shared spool's database cannot be used at start (the message names the variable, never the URL)."""


@dataclass(frozen=True)
class Context:
    """What a delivery keeps of its request beside the body, for its hooks, on any replica and after a
    restart: the endpoint's `pass_headers` found, the raw query string (`pass_query`), and per route
    the `env_from` values read from the payload; for forwards, the request's Content-Type and the headers
    their `pass_headers` name; for a CloudEvent, its context attributes. Stored as one JSON text ("" when
    empty)."""

    headers: tuple[tuple[str, str], ...] = ()
    query: str | None = None
    env: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = ()  # (route name, ((VAR, value), ...))
    content_type: str = ""
    forwarded: tuple[tuple[str, str], ...] = ()  # request headers a forward carries (its pass_headers)
    cloudevent: tuple[tuple[str, str], ...] = ()  # the event's context attributes (id, source, type, ...)
    lanes: tuple[tuple[str, str], ...] = ()  # (route name, its lane: the value of the route's lane key)

    def dumps(self) -> str:
        if self == NO_CONTEXT:
            return ""
        return json.dumps({"headers": self.headers, "query": self.query,
                           "env": {name: dict(pairs) for name, pairs in self.env}, "content_type": self.content_type,
                           "forwarded": self.forwarded, "cloudevent": dict(self.cloudevent),
                           **({"lanes": dict(self.lanes)} if self.lanes else {})}, separators=(",", ":"))

    @staticmethod
    def loads(text: str | None) -> Context:
        if not text:
            return NO_CONTEXT
        d = json.loads(text)
        return Context(headers=_pairs(d.get("headers")), query=d.get("query"),
                       env=tuple((name, tuple(pairs.items())) for name, pairs in (d.get("env") or {}).items()),
                       content_type=str(d.get("content_type") or ""), forwarded=_pairs(d.get("forwarded")),
                       cloudevent=tuple((d.get("cloudevent") or {}).items()),
                       lanes=tuple((d.get("lanes") or {}).items()))

    def route_env(self, route: str) -> tuple[tuple[str, str], ...]:
        return next((pairs for name, pairs in self.env if name == route), ())

    def lane(self, route: str) -> str:
        """The lane of the delivery's job for `route` ("" when the key was missing)."""
        return next((value for name, value in self.lanes if name == route), "")


NO_CONTEXT = Context()


def _pairs(items: Any) -> tuple[tuple[str, str], ...]:
    return tuple((str(k), str(v)) for k, v in items or ())


@dataclass(frozen=True)
class Facts:
    """Who sent what: the facts of a delivery its jobs are run with (WEBHOOK_* for hooks)."""

    endpoint: str
    delivery: str
    provider: str
    event: str
    request_id: str
    cwd: str


@dataclass(frozen=True)
class Delivery(Facts):
    """What a verified request leaves for its jobs: enough to run them after a restart."""

    body: bytes
    context: Context = NO_CONTEXT


@dataclass(frozen=True)
class Accepted:
    status: str  # "accepted" or "duplicate"
    job_ids: tuple[int, ...]
    routes: tuple[str, ...]
    fresh: bool = False  # new jobs of the routes given, in their order (not failed ones put back)
    superseded: tuple[Superseded, ...] = ()  # queued jobs of the new jobs' lanes (latest, debounce) replaced
    due: tuple[float, ...] = ()  # per job, when it may start (a debounce's wait); empty: at once


@dataclass(frozen=True, kw_only=True)
class JobRow(Facts):
    """A job as stored, with its delivery; `route` is the route as it was when accepted."""

    id: int
    state: str
    attempts: int
    next_at: float
    updated_at: float
    route: Route
    received_at: float
    exit_code: int | None
    outcome: str | None
    output_tail: str | None
    replica: str | None = None  # shared spool: the replica holding the job, or that ran it last
    context: Context = NO_CONTEXT
    spec: str = ""  # the route as stored (its text, which attempts.resolve checks against the loaded tables)


class SpoolAdmin(Protocol):
    """What `webhook-sidecar spool` needs of a backend: list, show, requeue and purge jobs."""

    @property
    def location(self) -> str:
        """Where the spool is, for messages (a file path, or a database URL without its password)."""
        ...

    def jobs(self, states: Sequence[str] = ..., limit: int = ...) -> list[JobRow]: ...
    def job(self, job_id: int) -> JobRow | None: ...
    def body(self, job_id: int) -> bytes: ...
    def retry(self, job_ids: Sequence[int] | None = None) -> list[int]: ...
    def purge(self, older_than_s: float, states: Sequence[str] = ...) -> int: ...


class Scheduler(Protocol):
    """What the server and the service need of a backend's scheduler: submit, health, drain."""

    @property
    def spool(self) -> SpoolAdmin: ...
    @property
    def depth(self) -> int:
        """Jobs queued and not finished."""
        ...

    @property
    def running(self) -> int: ...
    def health(self) -> str | None:
        """Why the spool cannot take deliveries now (readiness), or None."""
        ...

    def submit(self, delivery: Delivery, routes: Sequence[Route]) -> Accepted:
        """Commit the delivery and one job per route, then schedule them; an `Unavailable` (503) when it cannot."""
        ...

    def expect_reply(self, endpoint: str, delivery: str, route: str, spec: ReplySpec) -> Waiter:
        """A sender waits for that job's first run (replies.py): called before submit."""
        ...

    def replied(self, waiter: Waiter) -> None:
        """The sender has its answer: forget the waiter."""
        ...

    def stop(self, grace_s: float) -> bool:
        """Start no more jobs; give running ones `grace_s`; True when all finished within it."""
        ...

    def close(self) -> None: ...


class Retention:
    """Prunes finished jobs older than retention_hours, at most every PRUNE_INTERVAL_S (a tenth of
    the retention when that is shorter): the same for every backend's scheduler."""

    def __init__(self) -> None:
        self._last = 0.0

    def prune_if_due(self, purge: Callable[[float], int], retention_hours: float) -> None:
        """Call the backend's `purge(older_than_s)` when due; log what it removed."""
        retention_s = retention_hours * 3600
        if time.monotonic() - self._last > min(PRUNE_INTERVAL_S, retention_s / 10):
            self._last = time.monotonic()
            pruned = purge(retention_s)
            if pruned:
                logs.info("spool.pruned", jobs=pruned)


_specs: dict[Route, str] = {}  # a route's spec, written into every job of it: made once per route


def route_spec(route: Route) -> str:
    """The stored form of a route (what a job runs), as JSON; cached per route."""
    try:
        spec = _specs.get(route)
    except TypeError:  # an `if` value that cannot be hashed
        return _route_spec(route)
    if spec is None:
        if len(_specs) > 1024:  # routes of tables long replaced
            _specs.clear()
        spec = _specs[route] = _route_spec(route)
    return spec


def _route_spec(route: Route) -> str:
    spec = {"name": route.name, "event": route.event, "argv": list(route.argv), "timeout_s": route.timeout_s,
            "concurrency": route.concurrency, "retries": route.retries, "env": dict(route.env)}
    if route.forward is not None:  # where, never how it signs: a forward runs with the live table's target
        spec["forward"] = {"url": route.forward.url, "format": route.forward.mode}
    if route.lane is not None:
        spec["lane"] = route.lane.spec()
    return json.dumps(spec)


@functools.lru_cache(maxsize=1024)
def route_from_spec(spec: str) -> Route:
    d = json.loads(spec)
    forward = d.get("forward")
    return Route(name=d["name"], event=d["event"], when=(), argv=tuple(d["argv"]), timeout_s=d["timeout_s"],
                 concurrency=d["concurrency"], retries=d["retries"], env=tuple(d["env"].items()),
                 forward=Target(forward["url"], mode=forward["format"]) if forward else None,
                 lane=Lane.from_spec(d["lane"]) if d.get("lane") else None)
