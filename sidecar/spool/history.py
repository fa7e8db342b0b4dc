"""The spool's history as the admin listener and `spool replay` read it: deliveries newest first with
their jobs, one delivery in full, and the replay write (new jobs for a stored delivery, `replay_of`).

One contract (History), one module per backend: sqlite_history.py, pg_history.py. `of(spool)` picks it.
A delivery's `id` is the spool's own (unique); `delivery` is the sender's id.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..config import Route
from . import NO_CONTEXT, Context

STATES = ("pending", "done", "failed", "superseded")
MAX_LIMIT = 500


@dataclass(frozen=True)
class Filter:
    """What GET /admin/deliveries takes: each None is no filter; `before` a listing's next_before."""

    state: str | None = None
    endpoint: str | None = None
    route: str | None = None
    event: str | None = None
    limit: int = 50
    before: int | None = None


@dataclass(frozen=True)
class JobRecord:
    id: int
    route: str
    state: str
    attempts: int
    exit_code: int | None
    outcome: str | None = None
    output_tail: str | None = None
    updated_at: float = 0.0
    next_at: float = 0.0
    replay_of: int | None = None  # the delivery (spool id) this job replays; None for the original jobs
    replica: str | None = None  # shared spool: the replica holding the job, or that ran it last


@dataclass(frozen=True)
class DeliveryRecord:
    id: int
    delivery: str
    endpoint: str
    provider: str
    event: str
    received_at: float
    request_id: str
    jobs: tuple[JobRecord, ...] = ()
    context: Context = NO_CONTEXT
    body: bytes | None = field(default=None, repr=False)  # read only when asked for; b"" once dropped
    body_kept: bool = False


class History(Protocol):
    def deliveries(self, f: Filter) -> list[DeliveryRecord]:
        """Deliveries newest first (by id) with all their jobs; at most f.limit."""
        ...

    def delivery(self, delivery_id: int, body: bool = False) -> DeliveryRecord | None: ...

    def delivery_of_job(self, job_id: int) -> int | None:
        """The spool id of the job's delivery."""
        ...

    def replay(self, delivery_id: int, routes: Sequence[Route], context: Context) -> list[int] | None:
        """New pending jobs for `routes` marked replay_of, and the delivery's context replaced by
        `context`, in one transaction; their ids, or None when the body is gone by then."""
        ...


def listing_where(f: Filter, mark: str, jobs: str) -> tuple[str, list[object]]:
    """The listing's WHERE clause over deliveries `d` (empty when no filter) and its arguments, for a
    driver whose placeholder is `mark` and whose jobs table is `jobs`."""
    where: list[str] = []
    args: list[object] = []
    for column, value in (("d.endpoint", f.endpoint), ("d.event", f.event)):
        if value is not None:
            where.append(f"{column} = {mark}")
            args.append(value)
    if f.before is not None:
        where.append(f"d.id < {mark}")
        args.append(f.before)
    if f.state is not None or f.route is not None:
        on = [f"j.{name} = {mark}" for name, value in (("state", f.state), ("route", f.route)) if value is not None]
        where.append(f"EXISTS (SELECT 1 FROM {jobs} j WHERE j.delivery_id = d.id AND {' AND '.join(on)})")
        args.extend(value for value in (f.state, f.route) if value is not None)
    return (" WHERE " + " AND ".join(where)) if where else "", args


# The columns both backends read, in this order: a delivery's (then whether its body is kept), a job's.
DELIVERY_COLUMNS = "d.id, d.delivery, d.endpoint, d.provider, d.event, d.received_at, d.request_id, d.context"
JOB_COLUMNS = ("j.id, j.route, j.state, j.attempts, j.exit_code, j.outcome, j.output_tail, j.updated_at,"
               " j.next_at, j.replay_of, j.delivery_id")


def records(deliveries: Sequence[Sequence[Any]], jobs: Sequence[Sequence[Any]]) -> list[DeliveryRecord]:
    """DeliveryRecords from rows of DELIVERY_COLUMNS then the body's length, and rows of JOB_COLUMNS
    (then, on the shared spool, the replica)."""
    by_delivery: dict[int, list[JobRecord]] = {}
    for j in jobs:
        by_delivery.setdefault(j[10], []).append(JobRecord(
            id=j[0], route=j[1], state=j[2], attempts=j[3], exit_code=j[4], outcome=j[5], output_tail=j[6],
            updated_at=j[7], next_at=j[8], replay_of=j[9], replica=j[11] if len(j) > 11 else None))
    out = []
    for d in deliveries:
        found = tuple(by_delivery.get(d[0], ()))
        out.append(DeliveryRecord(id=d[0], delivery=d[1], endpoint=d[2], provider=d[3], event=d[4],
                                  received_at=d[5], request_id=d[6], context=Context.loads(d[7]), jobs=found,
                                  body_kept=d[8] > 0 or any(j.state in ("pending", "failed") for j in found)))
    return out
