"""An in-memory spool.Scheduler for fast tests of what sits above the queue (intake, live table)."""

from __future__ import annotations

from collections.abc import Sequence

from sidecar.config import Route
from sidecar.errors import Unavailable
from sidecar.spool import Accepted, Delivery, JobRow


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

    def stop(self, grace_s: float) -> bool:
        return True

    def close(self) -> None:
        pass
