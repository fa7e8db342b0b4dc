"""Lanes: order and coalescing per key (a route's `lane:`).

A lane is one route's jobs whose key (a payload path, or `$header.Name`) had the same value. Its jobs
run one at a time in acceptance order (`fifo`); with `latest` a queued job is superseded when a newer
one of its lane is accepted, and with `debounce` the newest also waits `debounce_s` (no longer than
`max_wait_s` after the oldest it superseded).

Here: the config (`Lane`, `parse`), the key's value read at acceptance (`value_of`), the rule a store
applies in its accept transaction (`settle`), and what is logged of a supersession (`report`). The
stores keep the lane's value per job and decide supersession in their own transaction
(spool/sqlite.py, spool/pg_lanes.py); the queue policies run only a lane's oldest pending job
(queue_local.py in memory, spool/pg_claim.py in the claim).
"""

from __future__ import annotations

import hashlib
import heapq
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from . import logs, metrics
from .conditions import MISSING, lookup
from .providers import HeaderMap
from .yamldoc import Doc, Path_, _describe

MODES = ("fifo", "latest", "debounce")
HEADER = "$header."
DEFAULT_DEBOUNCE_S = 5.0
MAX_VALUE = 256  # a longer value is kept as its hash: the lane is the same, the stored key small
LANE_KEYS = {"key", "mode", "debounce_s", "max_wait_s"}


@dataclass(frozen=True)
class Lane:
    """A route's lane: where its key is read, and how a lane's queued jobs are coalesced."""

    key: str
    mode: str = "fifo"
    debounce_s: float = 0.0
    max_wait_s: float = 0.0

    @property
    def supersedes(self) -> bool:
        return self.mode != "fifo"

    def spec(self) -> dict[str, Any]:
        return {"key": self.key, "mode": self.mode, "debounce_s": self.debounce_s, "max_wait_s": self.max_wait_s}

    @staticmethod
    def from_spec(d: dict[str, Any]) -> Lane:
        return Lane(str(d["key"]), str(d["mode"]), float(d["debounce_s"]), float(d["max_wait_s"]))


def parse(doc: Doc, path: Path_, raw: dict[str, Any]) -> Lane | None:
    """A route's `lane: {key, mode, debounce_s, max_wait_s}`; None without one (errors are in `doc`)."""
    if "lane" not in raw:
        return None
    at = path + ("lane",)
    lane = raw["lane"]
    if not isinstance(lane, dict):
        doc.error(at, f"must be a mapping such as {{key: repository.full_name, mode: latest}}, got {_describe(lane)}")
        return None
    doc.unknown_keys(lane, at, LANE_KEYS)
    key = doc.get(lane, at, "key", str, "", required=True)
    if key.startswith("$") and (not key.startswith(HEADER) or len(key) == len(HEADER)):
        doc.error(at + ("key",), "must be a payload path (repository.full_name) or $header.Name")
    elif "key" in lane and not key:
        doc.error(at + ("key",), "must not be empty")
    mode = doc.get(lane, at, "mode", str, "fifo")
    if mode not in MODES:
        doc.error(at + ("mode",), f"must be one of {', '.join(MODES)}, got {mode!r}")
    for name in ("debounce_s", "max_wait_s"):
        if name in lane and mode != "debounce":
            doc.error(at + (name,), "only with mode: debounce")
    debounce_s = doc.get(lane, at, "debounce_s", float, DEFAULT_DEBOUNCE_S, minimum=0.0)
    max_wait_s = doc.get(lane, at, "max_wait_s", float, 10 * debounce_s, minimum=0.0)
    if max_wait_s < debounce_s:
        doc.error(at + ("max_wait_s",), f"must be at least debounce_s ({debounce_s:g}), got {max_wait_s:g}")
    if mode != "debounce":
        debounce_s = max_wait_s = 0.0
    return Lane(key, mode, debounce_s, max_wait_s)


def value_of(lane: Lane, payload: Any, headers: HeaderMap) -> str:
    """The lane a delivery's job goes in: the key's value (strings as they are, other values as compact
    JSON); "" when the key is missing. Read once, at acceptance, and stored with the delivery."""
    if lane.key.startswith(HEADER):
        found = headers.get(lane.key[len(HEADER):])
        value: Any = MISSING if found is None else found
    else:
        value = lookup(payload, lane.key)
    if value is MISSING or value is None:
        return ""
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    if len(text) > MAX_VALUE or "\x00" in text:
        return "sha256:" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
    return text


@dataclass(frozen=True)
class Superseded:
    """A queued job a newer delivery of its lane replaced: it never runs."""

    job_id: int
    delivery: str  # its own delivery's id
    endpoint: str
    route: str
    lane: str


def settle(lane: Lane, now: float, since: Sequence[float | None]) -> tuple[float, float]:
    """A new job's (next_at, lane_since), given the `lane_since` of the queued jobs it supersedes (none
    for fifo): debounce waits debounce_s from now, but no longer than max_wait_s after the oldest of the
    burst; the others are due at once. The same rule for every store."""
    oldest = min([now, *(s for s in since if s is not None)])
    if lane.mode != "debounce":
        return 0.0, oldest
    return min(now + lane.debounce_s, oldest + lane.max_wait_s), oldest


def report(superseded: Sequence[Superseded], by: str) -> None:
    """Log and count the jobs an accepted delivery `by` superseded (committed already)."""
    for s in superseded:
        metrics.child(metrics.SUPERSEDED, s.endpoint, s.route).inc()
        logs.info("job.superseded", job=s.job_id, delivery=s.delivery, endpoint=s.endpoint, route=s.route,
                  lane=s.lane, by=by, detail="a newer delivery of its lane was accepted: this one never runs")


LaneId = tuple[str, str, str]  # (endpoint, route, lane): a route's lanes are its own


class Gate:
    """The lanes of a queue whose books are in memory (queue_local.py; the caller holds its lock): of each
    lane only the oldest pending job may start, and only while no job of the lane is in flight. A job
    waiting for its retry stays the oldest: it holds its lane. `candidate` hands out at most one job per
    lane for the queue's heap; an entry found stale when popped is dropped (`may_start` False)."""

    def __init__(self) -> None:
        self._ids: dict[LaneId, list[int]] = {}  # each lane's pending jobs on the books (a heap: oldest first)
        self._due: dict[int, float] = {}
        self._busy: dict[LaneId, int] = {}  # the job in flight (handed out until its record is in)
        self._queued: dict[LaneId, int] = {}  # the job handed to the queue's heap as the lane's candidate

    def add(self, lane: LaneId, job_id: int, next_at: float) -> tuple[int, float] | None:
        """A pending job joins its lane; the lane's candidate to queue now, if that changed."""
        heapq.heappush(self._ids.setdefault(lane, []), job_id)
        self._due[job_id] = next_at
        return self.candidate(lane)

    def candidate(self, lane: LaneId) -> tuple[int, float] | None:
        """(job, next_at) to queue for `lane`, unless the lane is in flight, empty or queued already."""
        ids = self._ids.get(lane)
        if lane in self._busy or not ids or self._queued.get(lane) == ids[0]:
            return None
        self._queued[lane] = ids[0]
        return ids[0], self._due[ids[0]]

    def may_start(self, lane: LaneId, job_id: int) -> bool:
        """Whether the popped `job_id` may start now; if so the lane is in flight from now on."""
        ids = self._ids.get(lane)
        if lane in self._busy or not ids or ids[0] != job_id:
            if self._queued.get(lane) == job_id:
                del self._queued[lane]
            return False
        self._busy[lane] = job_id
        self._queued.pop(lane, None)
        return True

    def land(self, lane: LaneId, job_id: int, next_at: float | None = None) -> tuple[int, float] | None:
        """A run of `job_id` is over and it stays pending (due at `next_at`, if given): the lane is free."""
        if self._busy.get(lane) == job_id:
            del self._busy[lane]
        if next_at is not None and job_id in self._due:
            self._due[job_id] = next_at
        return self.candidate(lane)

    def remove(self, lane: LaneId, job_id: int) -> tuple[int, float] | None:
        """`job_id` leaves the books (finished, superseded, gone): the next candidate of its lane."""
        ids = self._ids.get(lane, [])
        if job_id in ids:
            ids.remove(job_id)
            heapq.heapify(ids)
        if not ids:
            self._ids.pop(lane, None)
        self._due.pop(job_id, None)
        if self._queued.get(lane) == job_id:
            del self._queued[lane]
        return self.land(lane, job_id)

    def waiting(self) -> int:
        """Lanes with a job queued (not in flight)."""
        return sum(1 for lane, ids in self._ids.items() if len(ids) > (lane in self._busy))
