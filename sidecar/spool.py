"""The durable queue: accepted deliveries and their jobs in sqlite3 (WAL).

A delivery is acknowledged only after its body and one job per matched route
are committed. Commits go through one writer thread that batches whatever
requests are waiting into one transaction (group commit): concurrent senders
share an fsync instead of queueing for one each, and durability is not weakened.

Job states: pending (queued, waiting for a retry, or interrupted by a crash or a
stop), done, failed (a dead letter). Nothing is ever "running" on disk: a job
that was running when the process died is still pending and runs again.
"""

from __future__ import annotations

import json
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from . import logs
from .config import Route
from .errors import Unavailable

T = TypeVar("T")
DB_NAME = "spool.db"
MAX_BATCH = 256

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
"""


@dataclass(frozen=True)
class _Request:
    op: Callable[[sqlite3.Connection], Any]
    future: Future[Any]
    durable: bool


@dataclass(frozen=True)
class Delivery:
    """What a verified request leaves for its jobs: enough to run them after a restart."""

    endpoint: str
    delivery: str
    provider: str
    event: str
    request_id: str
    cwd: str
    body: bytes


@dataclass(frozen=True)
class Accepted:
    status: str  # "accepted" or "duplicate"
    job_ids: tuple[int, ...]
    routes: tuple[str, ...]


@dataclass(frozen=True)
class JobRow:
    """A job as stored, with its delivery; `route` is the route as it was when accepted."""

    id: int
    state: str
    attempts: int
    next_at: float
    updated_at: float
    route: Route
    endpoint: str
    delivery: str
    provider: str
    event: str
    request_id: str
    cwd: str
    received_at: float
    exit_code: int | None
    outcome: str | None
    output_tail: str | None


def route_spec(route: Route) -> str:
    return json.dumps({"name": route.name, "event": route.event, "argv": list(route.argv),
                       "timeout_s": route.timeout_s, "concurrency": route.concurrency,
                       "retries": route.retries, "env": dict(route.env)})


def route_from_spec(spec: str) -> Route:
    d = json.loads(spec)
    return Route(name=d["name"], event=d["event"], when=(), argv=tuple(d["argv"]), timeout_s=d["timeout_s"],
                 concurrency=d["concurrency"], retries=d["retries"], env=tuple(d["env"].items()))


JOB_COLUMNS = """j.id, j.state, j.attempts, j.next_at, j.updated_at, j.spec, d.endpoint, d.delivery, d.provider,
    d.event, d.request_id, d.cwd, d.received_at, j.exit_code, j.outcome, j.output_tail"""


def _job_row(r: Sequence[Any]) -> JobRow:
    return JobRow(id=r[0], state=r[1], attempts=r[2], next_at=r[3], updated_at=r[4], route=route_from_spec(r[5]),
                  endpoint=r[6], delivery=r[7], provider=r[8], event=r[9], request_id=r[10], cwd=r[11],
                  received_at=r[12], exit_code=r[13], outcome=r[14], output_tail=r[15])


def connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10)
    db.execute("PRAGMA journal_mode=WAL")
    # FULL: a commit is on disk before the 200 goes out, power loss included.
    db.execute("PRAGMA synchronous=FULL")
    db.execute("PRAGMA foreign_keys=ON")
    return db


class Spool:
    """sqlite3 store with a single group-committing writer; readers use their own connections."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / DB_NAME
        self._db = connect(self.path)
        self._db.executescript(SCHEMA)
        self._requests: queue.Queue[_Request | None] = queue.Queue()
        self._full_sync = True
        self._local = threading.local()
        self.writable = True
        self._writer = threading.Thread(target=self._write_loop, name="spool-writer", daemon=True)
        self._writer.start()

    # --- the writer ---------------------------------------------------------------
    def write(self, op: Callable[[sqlite3.Connection], T], timeout: float = 30) -> T:
        """Run `op` in the writer's next transaction; return once it is committed (fsync'd).

        Unavailable (503) when the commit does not come within `timeout` (a hung disk):
        the sender retries later, and no 200 was given for it.
        """
        try:
            return self.submit_write(op).result(timeout)
        except TimeoutError as e:
            raise Unavailable("spool not responding", retry_after=30) from e

    def submit_write(self, op: Callable[[sqlite3.Connection], T], durable: bool = True) -> Future[T]:
        """Queue `op` for the writer; the future resolves when it is committed.

        durable=False lets a batch holding only such ops commit with synchronous=NORMAL:
        safe against a crash of the process, and on power loss such a write may be
        lost, never corrupted. Use it only where losing the write is harmless.
        """
        future: Future[T] = Future()
        self._requests.put(_Request(op, future, durable))
        return future

    def _write_loop(self) -> None:
        while True:
            first = self._requests.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < MAX_BATCH:
                try:
                    item = self._requests.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._requests.put(None)  # stop after this batch
                    break
                batch.append(item)
            try:
                self._commit(batch)
            except Exception as e:  # a bug must not kill the only writer: fail this batch, go on
                logs.error("spool.write_failed", exc_info=True)
                for request in batch:
                    if not request.future.done():
                        request.future.set_exception(e)

    def _commit(self, batch: list[_Request]) -> None:
        try:
            outcomes = self._transaction(batch)
        except sqlite3.Error as e:
            if self._db.in_transaction:  # a failed COMMIT leaves it open; the next BEGIN would fail forever
                try:
                    self._db.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            self.writable = False
            failure = Unavailable("spool not writable", retry_after=30)
            failure.__cause__ = e
            for request in batch:
                request.future.set_exception(failure)
            return
        self.writable = True
        for request, (value, error) in zip(batch, outcomes, strict=True):
            if error is not None:
                request.future.set_exception(error)
            else:
                request.future.set_result(value)

    def _transaction(self, batch: list[_Request]) -> list[tuple[Any, BaseException | None]]:
        """Run every op in one transaction. An op that raises (rare: ops check before they
        write) sends the batch round again with one transaction per op, so only it fails."""
        db = self._db
        full = any(r.durable for r in batch)
        if full != self._full_sync:  # a connection setting, changed outside the transaction
            db.execute(f"PRAGMA synchronous={'FULL' if full else 'NORMAL'}")
            self._full_sync = full
        db.execute("BEGIN IMMEDIATE")
        try:
            values = [r.op(db) for r in batch]
        except Exception:
            db.execute("ROLLBACK")
            return [self._single(r.op) for r in batch]
        db.execute("COMMIT")
        return [(v, None) for v in values]

    def _single(self, op: Callable[[sqlite3.Connection], Any]) -> tuple[Any, BaseException | None]:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            value = op(db)
        except sqlite3.OperationalError:
            db.execute("ROLLBACK")
            raise  # the disk, not the op: fail the batch
        except Exception as e:
            db.execute("ROLLBACK")
            return None, e
        db.execute("COMMIT")
        return value, None

    def close(self) -> None:
        self._requests.put(None)
        self._writer.join(30)
        try:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error:
            pass
        self._db.close()

    # --- reads (any thread) ---------------------------------------------------------
    @property
    def reader(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = self._local.db = connect(self.path)
        return db

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
                only: Sequence[int] | None = None) -> list[tuple[int, float, str, str, int | None]]:
        """(id, next_at, endpoint, route, concurrency) of pending jobs updated since `changed_since`,
        or of those among the ids `only`."""
        query = ("SELECT j.id, j.next_at, d.endpoint, j.route, j.spec FROM jobs j JOIN deliveries d"
                 " ON d.id = j.delivery_id WHERE j.state = 'pending' AND ")
        if only is None:
            rows = self.reader.execute(query + "j.updated_at >= ?", (changed_since,)).fetchall()
        else:
            rows = []
            for at in range(0, len(only), 500):
                chunk = only[at:at + 500]
                rows += self.reader.execute(query + f"j.id IN ({','.join('?' * len(chunk))})", chunk).fetchall()
        return [(r[0], r[1], r[2], r[3], json.loads(r[4])["concurrency"]) for r in rows]

    def pending_ids(self, changed_since: float) -> list[int]:
        """Ids of pending jobs updated since `changed_since`: from the index alone, cheap to poll."""
        rows = self.reader.execute("SELECT id FROM jobs WHERE state = 'pending' AND updated_at >= ?",
                                   (changed_since,)).fetchall()
        return [r[0] for r in rows]

    # --- writes -----------------------------------------------------------------------
    def accept(self, delivery: Delivery, routes: Sequence[Route]) -> Accepted:
        """Commit a delivery and one job per route; dedupe on (endpoint, delivery id).

        A redelivery whose jobs all finished or are still queued is a duplicate and
        adds nothing; one with failed jobs puts those back in the queue.
        """
        def op(db: sqlite3.Connection) -> Accepted:
            now = time.time()
            row = db.execute("SELECT id FROM deliveries WHERE endpoint = ? AND delivery = ?",
                             (delivery.endpoint, delivery.delivery)).fetchone()
            if row is not None:
                failed = db.execute("SELECT id, route FROM jobs WHERE delivery_id = ? AND state = 'failed'",
                                    (row[0],)).fetchall()
                if not failed:
                    return Accepted("duplicate", (), ())
                db.executemany("UPDATE jobs SET state = 'pending', attempts = 0, next_at = 0, updated_at = ?"
                               " WHERE id = ?", [(now, j[0]) for j in failed])
                return Accepted("accepted", tuple(j[0] for j in failed), tuple(j[1] for j in failed))
            cur = db.execute(
                "INSERT INTO deliveries (endpoint, delivery, provider, event, request_id, cwd, body, received_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (delivery.endpoint, delivery.delivery, delivery.provider, delivery.event, delivery.request_id,
                 delivery.cwd, delivery.body, now))
            ids = []
            for route in routes:
                job = db.execute("INSERT INTO jobs (delivery_id, route, spec, updated_at) VALUES (?, ?, ?, ?)",
                                 (cur.lastrowid, route.name, route_spec(route), now))
                ids.append(int(job.lastrowid or 0))
            return Accepted("accepted", tuple(ids), tuple(r.name for r in routes))

        return self.write(op)

    def finish(self, job_id: int, state: str, attempts: int, next_at: float, exit_code: int | None,
               outcome: str, output_tail: str) -> Future[Any]:
        """Record an attempt: done, failed (dead letter), or pending again for a retry at `next_at`.

        Not durable in the fsync sense: if the record is lost (power loss), the job is
        still pending on disk and runs again, which at-least-once allows.
        """
        return self.submit_write(lambda db: db.execute(
            "UPDATE jobs SET state = ?, attempts = ?, next_at = ?, exit_code = ?, outcome = ?, output_tail = ?,"
            " updated_at = ? WHERE id = ?",
            (state, attempts, next_at, exit_code, outcome, output_tail, time.time(), job_id)), durable=False)

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

    def purge(self, older_than_s: float, states: Sequence[str] = ("done", "failed")) -> int:
        """Delete finished jobs last updated more than `older_than_s` ago, and deliveries left without jobs."""
        def op(db: sqlite3.Connection) -> int:
            marks = ",".join("?" * len(states))
            cur = db.execute(f"DELETE FROM jobs WHERE state IN ({marks}) AND updated_at < ?",
                             (*states, time.time() - older_than_s))
            db.execute("DELETE FROM deliveries WHERE id NOT IN (SELECT delivery_id FROM jobs)")
            return cur.rowcount

        return self.write(op)
