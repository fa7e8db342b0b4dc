"""The embedded spool: accepted deliveries and their jobs in sqlite3 (WAL), for one process.

The file and its one group-committing writer (probe, readiness, restore of a
removed file) are sqlite_writer.py's; this module is what is stored and how.

Nothing is ever "running" on disk: a job that was running when the process died
is still pending and runs again.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

from .. import lanes, logs, metrics
from ..config import Route
from ..errors import Unavailable
from . import Accepted, Context, Delivery, JobRow, SpoolDamaged, route_from_spec, route_spec
from .sqlite_file import integrity, set_aside
from .sqlite_writer import Writer

__all__ = ["DB_NAME", "Spool", "integrity"]

T = TypeVar("T")
DB_NAME = "spool.db"

SCHEMA = """
CREATE TABLE IF NOT EXISTS deliveries (
    id          INTEGER PRIMARY KEY,
    endpoint    TEXT NOT NULL,
    delivery    TEXT NOT NULL,
    provider    TEXT NOT NULL,
    event       TEXT NOT NULL,
    request_id  TEXT NOT NULL,
    cwd         TEXT NOT NULL,
    body        BLOB NOT NULL,
    received_at REAL NOT NULL,
    context     TEXT NOT NULL DEFAULT '',
    UNIQUE (endpoint, delivery)
);
CREATE TABLE IF NOT EXISTS jobs (
    id          INTEGER PRIMARY KEY,
    delivery_id INTEGER NOT NULL REFERENCES deliveries(id) ON DELETE CASCADE,
    route       TEXT NOT NULL,
    spec        TEXT NOT NULL,
    state       TEXT NOT NULL DEFAULT 'pending',
    attempts    INTEGER NOT NULL DEFAULT 0,
    next_at     REAL NOT NULL DEFAULT 0,
    updated_at  REAL NOT NULL,
    exit_code   INTEGER,
    outcome     TEXT,
    output_tail TEXT
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, updated_at);
CREATE INDEX IF NOT EXISTS jobs_delivery ON jobs (delivery_id);
CREATE TABLE IF NOT EXISTS probe (id INTEGER PRIMARY KEY CHECK (id = 1), at REAL NOT NULL);
"""


JOB_COLUMNS = """j.id, j.state, j.attempts, j.next_at, j.updated_at, j.spec, d.endpoint, d.delivery, d.provider,
    d.event, d.request_id, d.cwd, d.received_at, j.exit_code, j.outcome, j.output_tail, d.context"""
# Columns a spool file of an earlier release lacks: added at start (sqlite's ADD COLUMN is cheap).
ADDITIONS = (("deliveries", "context", "ALTER TABLE deliveries ADD COLUMN context TEXT NOT NULL DEFAULT ''"),
             ("jobs", "replay_of", "ALTER TABLE jobs ADD COLUMN replay_of INTEGER"),
             # A lane job's lane (its key's value; NULL: the route has no lane), and when the oldest job
             # it superseded was accepted (what bounds a debounce's wait).
             ("jobs", "lane", "ALTER TABLE jobs ADD COLUMN lane TEXT"),
             ("jobs", "lane_since", "ALTER TABLE jobs ADD COLUMN lane_since REAL"))
LANE_INDEX = "CREATE INDEX IF NOT EXISTS jobs_lane ON jobs (route, lane) WHERE state = 'pending' AND lane IS NOT NULL"
Hold = Callable[[Sequence[int]], Collection[int]]


def _job_row(r: Sequence[Any]) -> JobRow:
    return JobRow(id=r[0], state=r[1], attempts=r[2], next_at=r[3], updated_at=r[4], route=route_from_spec(r[5]),
                  endpoint=r[6], delivery=r[7], provider=r[8], event=r[9], request_id=r[10], cwd=r[11],
                  received_at=r[12], exit_code=r[13], outcome=r[14], output_tail=r[15], context=Context.loads(r[16]),
                  spec=r[5])


def _add_missing(db: sqlite3.Connection) -> None:
    for table, column, statement in ADDITIONS:
        if column not in {r[1] for r in db.execute(f"PRAGMA table_info({table})")}:
            db.execute(statement)
    db.execute(LANE_INDEX)


DROP_MARGIN_S = 0.5  # drop_bodies looks this much further back than its last run (clock steps)


class Spool:
    """sqlite3 store with a single group-committing writer; readers use their own connections."""

    def __init__(self, directory: Path, max_bytes: int = 0, *, serving: bool = True, reserve_bytes: int = 0,
                 keep_bodies_s: float = 0.0) -> None:
        """Open (or create) the spool in `directory`. serving=True (the server): a damaged file is
        set aside and SpoolDamaged raised, and a probe keeps health() true; False (the CLI): neither.
        `reserve_bytes`: free disk space below which the spool reports itself full (one delivery must fit).
        `keep_bodies_s`: finished deliveries keep their bodies this long (dropped by the probe, not drop_bodies)."""
        self.keep_bodies_s, self._kept_to = keep_bodies_s, 0.0
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / DB_NAME
        self.location = str(self.path)
        self.max_bytes = max_bytes
        if serving and self.path.exists():
            problems = integrity(self.path, quick=True)
            if problems:
                aside = set_aside(self.path, "corrupt")
                raise SpoolDamaged(self.path, aside, problems)
        self._writer = Writer(self.path, serving=serving, reserve_bytes=reserve_bytes, on_probe=self._on_probe)
        self._writer.db.executescript(SCHEMA)
        _add_missing(self._writer.db)
        self.used_bytes = self._used_bytes(self._writer.db)
        metrics.track_spool(lambda: self.used_bytes, max_bytes)
        self._writer.start()

    def health(self) -> str | None:
        """Why the spool cannot take deliveries now (for /readyz and 503s), or None."""
        return self._writer.health()

    @property
    def reader(self) -> sqlite3.Connection:
        return self._writer.reader

    def write(self, op: Callable[[sqlite3.Connection], T], timeout: float = 30) -> T:
        return self._writer.write(op, timeout)

    def submit_write(self, op: Callable[[sqlite3.Connection], T], durable: bool = True) -> Future[T]:
        return self._writer.submit_write(op, durable)

    def close(self) -> None:
        self._writer.close()

    def _on_probe(self, db: sqlite3.Connection) -> None:
        """Measure the spool at every probe; near spool_max_bytes, make room."""
        self.used_bytes = self._used_bytes(db)
        if self.keep_bodies_s:
            self._kept_to = self._drop(db, self._kept_to, self.keep_bodies_s)
        if self.max_bytes and self.used_bytes > self.max_bytes * 0.9:
            self._shrink(db)

    def _used_bytes(self, db: sqlite3.Connection) -> int:
        pages = db.execute("PRAGMA page_count").fetchone()[0] - db.execute("PRAGMA freelist_count").fetchone()[0]
        return int(pages * db.execute("PRAGMA page_size").fetchone()[0])

    def _shrink(self, db: sqlite3.Connection) -> None:
        """Near spool_max_bytes: drop the bodies kept for replay, then the oldest finished records
        (dead letters last)."""
        if self.keep_bodies_s:
            self._drop(db, 0.0, 0.0)
            self.used_bytes = self._used_bytes(db)
            if self.used_bytes <= self.max_bytes * 0.9:
                return
        for state in ("superseded", "done", "failed"):
            n = db.execute("SELECT count(*) FROM jobs WHERE state = ?", (state,)).fetchone()[0]
            if not n:
                continue
            cut = db.execute("DELETE FROM jobs WHERE id IN (SELECT id FROM jobs WHERE state = ?"
                             " ORDER BY updated_at LIMIT ?)", (state, max(1, n // 4))).rowcount
            db.execute("DELETE FROM deliveries WHERE id NOT IN (SELECT delivery_id FROM jobs)")
            logs.warning("spool.shrunk", state=state, jobs=cut, used_bytes=self.used_bytes, max_bytes=self.max_bytes,
                         detail="near spool_max_bytes: the oldest finished records were pruned")
            self.used_bytes = self._used_bytes(db)
            if self.used_bytes <= self.max_bytes * 0.9:
                return

    # --- reads (any thread) ---------------------------------------------------------
    def body(self, job_id: int) -> bytes:
        row = self.reader.execute(
            "SELECT d.body FROM jobs j JOIN deliveries d ON d.id = j.delivery_id WHERE j.id = ?", (job_id,)).fetchone()
        return bytes(row[0]) if row else b""

    def job(self, job_id: int) -> JobRow | None:
        row = self.reader.execute(
            f"SELECT {JOB_COLUMNS} FROM jobs j JOIN deliveries d ON d.id = j.delivery_id WHERE j.id = ?",
            (job_id,)).fetchone()
        return _job_row(row) if row else None

    def job_to_run(self, job_id: int) -> tuple[JobRow, bytes] | None:
        """The job and its delivery's body in one read (a worker's every start)."""
        row = self.reader.execute(
            f"SELECT {JOB_COLUMNS}, d.body FROM jobs j JOIN deliveries d ON d.id = j.delivery_id WHERE j.id = ?",
            (job_id,)).fetchone()
        return (_job_row(row), bytes(row[-1])) if row else None

    def jobs(self, states: Sequence[str] = ("pending", "done", "failed"), limit: int = 1000) -> list[JobRow]:
        marks = ",".join("?" * len(states))
        rows = self.reader.execute(
            f"SELECT {JOB_COLUMNS} FROM jobs j JOIN deliveries d ON d.id = j.delivery_id"
            f" WHERE j.state IN ({marks}) ORDER BY j.id LIMIT ?", (*states, limit)).fetchall()
        return [_job_row(r) for r in rows]

    def pending(self, changed_since: float = 0.0,
                only: Sequence[int] | None = None) -> list[tuple[int, float, str, str, int | None, str | None]]:
        """(id, next_at, endpoint, route, concurrency, lane) of pending jobs updated since `changed_since`,
        or of those among the ids `only`."""
        query = ("SELECT j.id, j.next_at, d.endpoint, j.route, j.spec, j.lane FROM jobs j JOIN deliveries d"
                 " ON d.id = j.delivery_id WHERE j.state = 'pending' AND ")
        if only is None:
            rows = self.reader.execute(query + "j.updated_at >= ?", (changed_since,)).fetchall()
        else:
            rows = []
            for at in range(0, len(only), 500):
                chunk = only[at:at + 500]
                rows += self.reader.execute(query + f"j.id IN ({','.join('?' * len(chunk))})", chunk).fetchall()
        return [(r[0], r[1], r[2], r[3], route_from_spec(r[4]).concurrency, r[5]) for r in rows]

    def pending_ids(self, changed_since: float) -> list[int]:
        """Ids of pending jobs updated since `changed_since`: from the index alone, cheap to poll."""
        rows = self.reader.execute("SELECT id FROM jobs WHERE state = 'pending' AND updated_at >= ?",
                                   (changed_since,)).fetchall()
        return [r[0] for r in rows]

    def is_duplicate(self, delivery: Delivery) -> bool:
        """Whether accept() would answer "duplicate" (known, and no job failed)."""
        row = self.reader.execute(
            "SELECT d.id, (SELECT count(*) FROM jobs j WHERE j.delivery_id = d.id AND j.state = 'failed')"
            " FROM deliveries d WHERE d.endpoint = ? AND d.delivery = ?",
            (delivery.endpoint, delivery.delivery)).fetchone()
        return row is not None and row[1] == 0

    # --- writes -----------------------------------------------------------------------
    def accept(self, delivery: Delivery, routes: Sequence[Route], hold: Hold | None = None) -> Accepted:
        """Commit a delivery and one job per route; dedupe on (endpoint, delivery id).

        A redelivery whose jobs all finished or are still queued is a duplicate and
        adds nothing; one with failed jobs puts those back in the queue. A new job of a `latest` or
        `debounce` lane supersedes the queued jobs of its lane in the same transaction: those that
        `hold` (the queue's books, asked inside it) says are not running, all of them without it.
        """
        problem = self.health()
        if problem:
            raise Unavailable(problem, retry_after=10)
        if self.max_bytes and self.used_bytes + len(delivery.body) > self.max_bytes:
            raise Unavailable("spool full (spool_max_bytes)", retry_after=30)

        def op(db: sqlite3.Connection) -> Accepted:
            now = time.time()
            # The insert checks the (endpoint, delivery) key anyway: a redelivery inserts nothing.
            cur = db.execute(
                "INSERT INTO deliveries (endpoint, delivery, provider, event, request_id, cwd, body, received_at,"
                " context) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (endpoint, delivery) DO NOTHING",
                (delivery.endpoint, delivery.delivery, delivery.provider, delivery.event, delivery.request_id,
                 delivery.cwd, delivery.body, now, delivery.context.dumps()))
            if cur.rowcount == 0:
                row = db.execute("SELECT id FROM deliveries WHERE endpoint = ? AND delivery = ?",
                                 (delivery.endpoint, delivery.delivery)).fetchone()
                failed = db.execute("SELECT id, route FROM jobs WHERE delivery_id = ? AND state = 'failed'",
                                    (row[0],)).fetchall()
                if not failed:
                    return Accepted("duplicate", (), ())
                db.executemany("UPDATE jobs SET state = 'pending', attempts = 0, next_at = 0, updated_at = ?"
                               " WHERE id = ?", [(now, j[0]) for j in failed])
                return Accepted("accepted", tuple(j[0] for j in failed), tuple(j[1] for j in failed))
            ids, due, gone = [], [], []
            for route in routes:
                lane, next_at, since = None, 0.0, now
                if route.lane is not None:
                    lane = delivery.context.lane(route.name)
                    replaced = _supersede(db, delivery, route.name, lane, now, hold) if route.lane.supersedes else []
                    gone += [r for r, _ in replaced]
                    next_at, since = lanes.settle(route.lane, now, [at for _, at in replaced])
                job = db.execute("INSERT INTO jobs (delivery_id, route, spec, updated_at, next_at, lane, lane_since)"
                                 " VALUES (?, ?, ?, ?, ?, ?, ?)",
                                 (cur.lastrowid, route.name, route_spec(route), now, next_at, lane, since))
                ids.append(int(job.lastrowid or 0))
                due.append(next_at)
            self.used_bytes += len(delivery.body) + 256 * (1 + len(routes))  # until the probe measures it
            return Accepted("accepted", tuple(ids), tuple(r.name for r in routes), fresh=True,
                            superseded=tuple(gone), due=tuple(due))

        return self.write(op)

    def finish(self, job_id: int, state: str, attempts: int, next_at: float, exit_code: int | None,
               outcome: str, output_tail: str) -> Future[Any]:
        """Record an attempt: done, failed (dead letter), or pending again for a retry at `next_at`.

        Not durable in the fsync sense: if the record is lost (power loss), the job is
        still pending on disk and runs again, which at-least-once allows. The body of a
        delivery whose jobs are all done goes at the next drop_bodies().
        """
        def op(db: sqlite3.Connection) -> None:
            db.execute("UPDATE jobs SET state = ?, attempts = ?, next_at = ?, exit_code = ?, outcome = ?,"
                       " output_tail = ?, updated_at = ? WHERE id = ?",
                       (state, attempts, next_at, exit_code, outcome, output_tail, time.time(), job_id))

        return self.submit_write(op, durable=False)

    def drop_bodies(self, done_since: float) -> float:
        """Empty the body of every delivery whose jobs are all done, one of them since `done_since`
        (its id stays for dedupe; dead letters keep theirs): one statement for all of them,
        instead of one more per finished job. Returns the `done_since` for the next call.

        The statement runs in the writer's order, after every finish committed before it, and a
        finish stamps its time as it runs: the next call need only look back to when this one
        ran (less a margin for the clock), not over every job done in the last seconds."""
        if self.keep_bodies_s:
            return done_since  # the probe drops them, keep_bodies_s after the last job is done
        return float(self.submit_write(lambda db: self._drop(db, done_since, 0.0), durable=False).result(30))

    @staticmethod
    def _drop(db: sqlite3.Connection, done_since: float, keep_s: float) -> float:
        """drop_bodies' statement, for the deliveries whose last job was done more than `keep_s` ago."""
        until = time.time() - keep_s
        db.execute(
            "UPDATE deliveries SET body = x'' WHERE id IN (SELECT delivery_id FROM jobs WHERE state IN ('done',"
            " 'superseded') AND updated_at >= ? AND updated_at <= ?) AND length(body) > 0 AND NOT EXISTS (SELECT 1"
            " FROM jobs WHERE delivery_id = deliveries.id AND (state NOT IN ('done', 'superseded') OR updated_at > ?))",
            (done_since, until, until))
        return until - DROP_MARGIN_S

    def retry(self, job_ids: Sequence[int] | None = None) -> list[int]:
        """Put failed jobs (the given ones, or all) back in the queue; the ids that were requeued."""
        def op(db: sqlite3.Connection) -> list[int]:
            if job_ids is None:
                ids = [r[0] for r in db.execute("SELECT id FROM jobs WHERE state = 'failed'")]
            else:
                marks = ",".join("?" * len(job_ids))
                ids = [r[0] for r in db.execute(
                    f"SELECT id FROM jobs WHERE state = 'failed' AND id IN ({marks})", tuple(job_ids))]
            db.executemany("UPDATE jobs SET state = 'pending', attempts = 0, next_at = 0, updated_at = ?"
                           " WHERE id = ?", [(time.time(), i) for i in ids])
            return ids

        return self.write(op)

    def purge(self, older_than_s: float, states: Sequence[str] = ("done", "failed", "superseded")) -> int:
        """Delete finished jobs last updated more than `older_than_s` ago, and deliveries left without jobs."""
        def op(db: sqlite3.Connection) -> int:
            marks = ",".join("?" * len(states))
            cur = db.execute(f"DELETE FROM jobs WHERE state IN ({marks}) AND updated_at < ?",
                             (*states, time.time() - older_than_s))
            db.execute("DELETE FROM deliveries WHERE id NOT IN (SELECT delivery_id FROM jobs)")
            return cur.rowcount

        return self.write(op)


def _supersede(db: sqlite3.Connection, delivery: Delivery, route: str, lane: str, now: float,
               hold: Hold | None) -> list[tuple[lanes.Superseded, float | None]]:
    """In the accepting transaction: the queued jobs of the lane `lane` of `delivery.endpoint`'s `route`
    that `hold` lets go become superseded; each with its lane_since."""
    rows = db.execute("SELECT j.id, j.lane_since, d.delivery FROM jobs j JOIN deliveries d ON d.id = j.delivery_id"
                      " WHERE j.state = 'pending' AND j.route = ? AND j.lane = ? AND d.endpoint = ? ORDER BY j.id",
                      (route, lane, delivery.endpoint)).fetchall()
    if hold is not None and rows:
        free = set(hold([r[0] for r in rows]))
        rows = [r for r in rows if r[0] in free]
    db.executemany("UPDATE jobs SET state = 'superseded', outcome = 'superseded', updated_at = ? WHERE id = ?",
                   [(now, r[0]) for r in rows])
    return [(lanes.Superseded(r[0], r[2], delivery.endpoint, route, lane), r[1]) for r in rows]
