"""In memory, for fast tests: a spool.Scheduler for what sits above the queue (intake, live table),
and a queue store for the scheduler itself."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import Future
from dataclasses import replace

from sidecar import lanes
from sidecar.config import Route
from sidecar.errors import Unavailable
from sidecar.replies import Replies, ReplySpec, Waiter
from sidecar.spool import Accepted, Delivery, JobRow, route_spec


class MemorySpool:
    """The SpoolAdmin side of MemoryScheduler: what it holds, for the CLI's questions."""

    location = "memory"

    def __init__(self) -> None:
        self.deliveries: list[tuple[Delivery, tuple[str, ...]]] = []

    def jobs(self, states: Sequence[str] = (), limit: int = 100) -> list[JobRow]:
        return []

    def job(self, job_id: int) -> JobRow | None:
        return None

    def body(self, job_id: int) -> bytes:
        return self.deliveries[job_id][0].body

    def retry(self, job_ids: Sequence[int] | None = None) -> list[int]:
        return []

    def purge(self, older_than_s: float, states: Sequence[str] = ()) -> int:
        return 0


class MemoryScheduler:
    """A spool.Scheduler that keeps deliveries in a list, dedupes on (endpoint, delivery), runs nothing;
    `refuse` makes submit raise it (a full queue, an unreachable database)."""

    def __init__(self) -> None:
        self._spool = MemorySpool()
        self.replies = Replies()
        self.refuse: Unavailable | None = None

    @property
    def spool(self) -> MemorySpool:
        return self._spool

    @property
    def depth(self) -> int:
        return sum(len(routes) for _, routes in self._spool.deliveries)

    @property
    def running(self) -> int:
        return 0

    def health(self) -> str | None:
        return None

    def submit(self, delivery: Delivery, routes: Sequence[Route]) -> Accepted:
        if self.refuse is not None:
            raise self.refuse
        if any((d.endpoint, d.delivery) == (delivery.endpoint, delivery.delivery) for d, _ in self._spool.deliveries):
            return Accepted("duplicate", (), ())
        names = tuple(r.name for r in routes)
        self._spool.deliveries.append((delivery, names))
        return Accepted("accepted", tuple(range(len(names))), names, fresh=True)

    def expect_reply(self, endpoint: str, delivery: str, route: str, spec: ReplySpec) -> Waiter:
        return self.replies.expect(endpoint, delivery, route, spec)  # runs nothing: it times out

    def replied(self, waiter: Waiter) -> None:
        self.replies.done(waiter)

    def stop(self, grace_s: float) -> bool:
        return True

    def close(self) -> None:
        pass


class MemoryStore:
    """A queue store in a dict, for fast tests of the scheduler and the local policy (no file, no
    database, no process): what queue_local.LocalStore asks of the sqlite spool, lanes included.
    `fail_records` makes that many outcome records fail (a full disk), then they commit."""

    location = "memory"

    def __init__(self) -> None:
        self.rows: dict[int, JobRow] = {}
        self.bodies: dict[int, bytes] = {}
        self.keys: dict[tuple[str, str], list[int]] = {}
        self.lanes: dict[int, str] = {}  # a lane job's lane
        self.since: dict[int, float] = {}  # and when the oldest job it superseded was accepted
        self.fail_records = 0
        self.records: list[tuple[int, str]] = []  # (job, state) of every committed record
        self._lock = threading.Lock()

    def health(self) -> str | None:
        return None

    def accept(self, delivery: Delivery, routes: Sequence[Route],
               hold: Callable[[Sequence[int]], Collection[int]] | None = None) -> Accepted:
        with self._lock:
            key = (delivery.endpoint, delivery.delivery)
            if key in self.keys:
                return Accepted("duplicate", (), ())
            ids, due, gone = [], [], []
            for route in routes:
                job_id = len(self.rows) + 1
                next_at = 0.0
                if route.lane is not None:
                    lane = delivery.context.lane(route.name)
                    replaced = self._supersede(delivery.endpoint, route.name, lane, hold) if route.lane.supersedes \
                        else []
                    gone += replaced
                    next_at, self.since[job_id] = lanes.settle(route.lane, time.time(),
                                                               [self.since.get(s.job_id) for s in replaced])
                    self.lanes[job_id] = lane
                due.append(next_at)
                self.rows[job_id] = JobRow(
                    id=job_id, state="pending", attempts=0, next_at=next_at, updated_at=time.time(), route=route,
                    endpoint=delivery.endpoint, delivery=delivery.delivery, provider=delivery.provider,
                    event=delivery.event, request_id=delivery.request_id, cwd=delivery.cwd,
                    received_at=time.time(), exit_code=None, outcome=None, output_tail=None,
                    context=delivery.context, spec=route_spec(route))
                self.bodies[job_id] = delivery.body
                ids.append(job_id)
            self.keys[key] = ids
            return Accepted("accepted", tuple(ids), tuple(r.name for r in routes), fresh=True,
                            superseded=tuple(gone), due=tuple(due))

    def _supersede(self, endpoint: str, route: str, lane: str,
                   hold: Callable[[Sequence[int]], Collection[int]] | None) -> list[lanes.Superseded]:
        """The lane's queued jobs that `hold` lets go: superseded (the lock held: one transaction)."""
        queued = [r.id for r in self.rows.values() if r.state == "pending" and r.endpoint == endpoint
                  and r.route.name == route and self.lanes.get(r.id) == lane]
        free = set(hold(queued)) if hold is not None and queued else set(queued)
        for i in free:
            self.rows[i] = replace(self.rows[i], state="superseded", outcome="superseded", updated_at=time.time())
            self.records.append((i, "superseded"))
        return [lanes.Superseded(i, self.rows[i].delivery, endpoint, route, lane) for i in sorted(free)]

    def is_duplicate(self, delivery: Delivery) -> bool:
        return (delivery.endpoint, delivery.delivery) in self.keys

    def job(self, job_id: int) -> JobRow | None:
        return self.rows.get(job_id)

    def job_to_run(self, job_id: int) -> tuple[JobRow, bytes] | None:
        row = self.rows.get(job_id)
        return (row, self.bodies[job_id]) if row else None

    def jobs(self, states: Sequence[str] = ("pending", "done", "failed"), limit: int = 1000) -> list[JobRow]:
        return [r for r in self.rows.values() if r.state in states][:limit]

    def body(self, job_id: int) -> bytes:
        return self.bodies.get(job_id, b"")

    def pending(self, changed_since: float = 0.0,
                only: Sequence[int] | None = None) -> list[tuple[int, float, str, str, int | None, str | None]]:
        rows = [r for r in self.rows.values() if r.state == "pending"
                and (r.id in only if only is not None else r.updated_at >= changed_since)]
        return [(r.id, r.next_at, r.endpoint, r.route.name, r.route.concurrency, self.lanes.get(r.id)) for r in rows]

    def pending_ids(self, changed_since: float) -> list[int]:
        return [r.id for r in self.rows.values() if r.state == "pending" and r.updated_at >= changed_since]

    def finish(self, job_id: int, state: str, attempts: int, next_at: float, exit_code: int | None,
               outcome: str, output_tail: str) -> Future[None]:
        future: Future[None] = Future()
        with self._lock:
            if self.fail_records > 0:
                self.fail_records -= 1
                future.set_exception(OSError(28, "No space left on device"))
                return future
            self.rows[job_id] = replace(self.rows[job_id], state=state, attempts=attempts, next_at=next_at,
                                        exit_code=exit_code, outcome=outcome, output_tail=output_tail,
                                        updated_at=time.time())
            self.records.append((job_id, state))
        future.set_result(None)
        return future

    def drop_bodies(self, done_since: float) -> float:
        return done_since

    def retry(self, job_ids: Sequence[int] | None = None) -> list[int]:
        return []

    def purge(self, older_than_s: float, states: Sequence[str] = ("done", "failed")) -> int:
        return 0

    def close(self) -> None:
        pass
