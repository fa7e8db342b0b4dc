"""The embedded spool: accepted deliveries and their jobs in sqlite3 (WAL), for one process.

Commits go through one writer thread that batches whatever requests are waiting
into one transaction (group commit): concurrent senders share an fsync instead of
queueing for one each, and durability is not weakened.

Nothing is ever "running" on disk: a job that was running when the process died
is still pending and runs again.

The file is watched as well as written. The writer checks after every commit,
and a probe every PROBE_INTERVAL_S, that the path still names the file it has
open: a spool.db removed or replaced under a running process would otherwise
take commits into an unlinked file (200s into a void). On a mismatch the batch
answers 503, /readyz turns 503, and the open database is copied back to the
path (sqlite's backup API) so nothing accepted is lost and no restart is needed.
"""

from __future__ import annotations

import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from .. import logs, metrics
from ..config import Route
from ..errors import Unavailable
from . import Accepted, Delivery, JobRow, SpoolDamaged, route_from_spec, route_spec

T = TypeVar("T")
DB_NAME = "spool.db"
MAX_BATCH = 256
PROBE_INTERVAL_S = 1.0
PROBE_TIMEOUT_S = 5.0
BUSY_TIMEOUT_S = 10.0

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
CREATE TABLE IF NOT EXISTS probe (id INTEGER PRIMARY KEY CHECK (id = 1), at REAL NOT NULL);
"""


@dataclass
class _Request:
    op: Callable[[sqlite3.Connection], Any]
    future: Future[Any]
    durable: bool
    # queued -> started (inside a transaction) | cancelled (its caller gave up first: never runs)
    state: str = "queued"
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> bool:
        with self.lock:
            if self.state != "queued":
                return False
            self.state = "started"
            return True

    def cancel(self) -> bool:
        with self.lock:
            if self.state != "queued":
                return False
            self.state = "cancelled"
            return True


JOB_COLUMNS = """j.id, j.state, j.attempts, j.next_at, j.updated_at, j.spec, d.endpoint, d.delivery, d.provider,
    d.event, d.request_id, d.cwd, d.received_at, j.exit_code, j.outcome, j.output_tail"""


def _job_row(r: Sequence[Any]) -> JobRow:
    return JobRow(id=r[0], state=r[1], attempts=r[2], next_at=r[3], updated_at=r[4], route=route_from_spec(r[5]),
                  endpoint=r[6], delivery=r[7], provider=r[8], event=r[9], request_id=r[10], cwd=r[11],
                  received_at=r[12], exit_code=r[13], outcome=r[14], output_tail=r[15])


def connect(path: Path, create: bool = False) -> sqlite3.Connection:
    # mode=rw: a connection never creates the file. Only the writer at start (and a
    # restore) may; a reader that found it missing would otherwise make an empty one.
    uri = f"file:{path}?mode={'rwc' if create else 'rw'}"
    db = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_S)
    db.execute("PRAGMA journal_mode=WAL")
    # FULL: a commit is on disk before the 200 goes out, power loss included.
    db.execute("PRAGMA synchronous=FULL")
    db.execute("PRAGMA foreign_keys=ON")
    return db


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _companions(path: Path) -> list[Path]:
    return [path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")]


def set_aside(path: Path, why: str) -> Path:
    """Rename a spool file and its -wal/-shm to `<name>.<why>-<UTC time>`; the new main file's path."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    aside = path.with_name(f"{path.name}.{why}-{stamp}")
    for src in _companions(path):
        if src.exists():
            os.replace(src, aside.with_name(aside.name + src.name[len(path.name):]))
    return aside


def integrity(path: Path, quick: bool = False) -> list[str]:
    """sqlite's own integrity check of a spool file: [] when sound, else what is wrong."""
    if path.is_file() and path.stat().st_size == 0:
        return ["the file is empty (0 bytes): a spool always holds its schema, so it was truncated"]
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            rows = db.execute("PRAGMA quick_check" if quick else "PRAGMA integrity_check").fetchall()
            db.execute("SELECT count(*) FROM jobs").fetchone()
        finally:
            db.close()
    except sqlite3.Error as e:
        return [str(e)]
    problems = [r[0] for r in rows if r[0] != "ok"]
    return problems


class Spool:
    """sqlite3 store with a single group-committing writer; readers use their own connections."""

    def __init__(self, directory: Path, max_bytes: int = 0, *, serving: bool = True, reserve_bytes: int = 0) -> None:
        """Open (or create) the spool in `directory`. serving=True (the server): a damaged file is
        set aside and SpoolDamaged raised, and a probe keeps health() true; False (the CLI): neither.
        `reserve_bytes`: free disk space below which the spool reports itself full (one delivery must fit)."""
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / DB_NAME
        self.location = str(self.path)
        self.max_bytes = max_bytes
        self._serving = serving
        self.reserve_bytes = reserve_bytes
        if serving and self.path.exists():
            problems = integrity(self.path, quick=True)
            if problems:
                aside = set_aside(self.path, "corrupt")
                raise SpoolDamaged(self.path, aside, problems)
        self._db = connect(self.path, create=True)
        self._db.executescript(SCHEMA)
        self._ident = _identity(self.path)
        self._generation = 0
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._requests: queue.Queue[_Request | None] = queue.Queue()
        self._full_sync = True
        self._local = threading.local()
        self._problem: str | None = None  # why the spool cannot take deliveries now
        self._probe_ok_at = time.monotonic()
        self.used_bytes = self._used_bytes()
        metrics.track_spool(lambda: self.used_bytes, max_bytes)
        self._closing = threading.Event()
        self._writer = threading.Thread(target=self._write_loop, name="spool-writer", daemon=True)
        self._writer.start()
        if serving:
            threading.Thread(target=self._probe_loop, name="spool-probe", daemon=True).start()

    # --- health -------------------------------------------------------------------
    def health(self) -> str | None:
        """Why the spool cannot take deliveries now (for /readyz and 503s), or None."""
        if self._serving and time.monotonic() - self._probe_ok_at > PROBE_TIMEOUT_S + PROBE_INTERVAL_S:
            return "spool not responding"
        if self._problem is None and _identity(self.path) != self._ident:
            return "spool file removed or replaced"  # the next probe restores it
        return self._problem

    @property
    def writable(self) -> bool:
        return self.health() is None

    def _probe_loop(self) -> None:
        """A write/read round trip through the writer on a timer, so readiness tells the
        truth without traffic and comes back by itself (an unready pod gets no POSTs)."""
        while not self._closing.wait(PROBE_INTERVAL_S):
            future = self.submit_write(self._probe_op, durable=False)
            try:
                future.result(PROBE_TIMEOUT_S)
            except TimeoutError:
                self._set_problem("spool not responding", "the writer did not finish a probe within "
                                  f"{PROBE_TIMEOUT_S:g} s (a hung disk or a lock held elsewhere)")
                continue
            except Exception:
                pass  # an answer all the same (the writer responds); _commit recorded the problem
            else:
                self._check_disk()
            self._probe_ok_at = time.monotonic()

    def _check_disk(self) -> None:
        """A probe's write is small and may fit in the WAL's old space on a full disk; a delivery
        may not. Free space below the reserve is "disk full", so readiness does not flap."""
        try:
            st = os.statvfs(self.path.parent)
        except OSError:
            return
        free = st.f_bavail * st.f_frsize
        if free < self.reserve_bytes:
            self._set_problem("spool disk full", f"{free} bytes free, below the reserve of {self.reserve_bytes}")
        elif self._problem == "spool disk full":
            self._set_problem(None)

    def _probe_op(self, db: sqlite3.Connection) -> None:
        db.execute("INSERT INTO probe (id, at) VALUES (1, ?) ON CONFLICT (id) DO UPDATE SET at = excluded.at",
                   (time.time(),))
        self.used_bytes = self._used_bytes(db)
        if self.max_bytes and self.used_bytes > self.max_bytes * 0.9:
            self._shrink(db)

    def _used_bytes(self, db: sqlite3.Connection | None = None) -> int:
        db = db or self._db
        pages = db.execute("PRAGMA page_count").fetchone()[0] - db.execute("PRAGMA freelist_count").fetchone()[0]
        return int(pages * db.execute("PRAGMA page_size").fetchone()[0])

    def _shrink(self, db: sqlite3.Connection) -> None:
        """Near spool_max_bytes: drop the oldest finished records first (dead letters last)."""
        for state in ("done", "failed"):
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

    def _set_problem(self, problem: str | None, detail: str = "") -> None:
        if problem != self._problem:
            if problem is None:
                logs.info("spool.recovered_writable", was=self._problem)
            else:
                logs.error("spool.unavailable", reason=problem, detail=detail or None, spool=self.location)
            self._problem = problem

    # --- the writer ---------------------------------------------------------------
    def write(self, op: Callable[[sqlite3.Connection], T], timeout: float = 30) -> T:
        """Run `op` in the writer's next transaction; return once it is committed (fsync'd).

        Unavailable (503) when the commit does not come within `timeout` (a hung disk):
        an op that has not started by then never will, so the 503 means "not accepted";
        one caught inside a commit whose outcome is unknown also gets 503, and the
        sender's retry is absorbed by the delivery-id dedupe.
        """
        request = self._submit(op, True)
        try:
            return request.future.result(timeout)
        except TimeoutError as e:
            request.cancel()
            raise Unavailable("spool not responding", retry_after=30) from e

    def submit_write(self, op: Callable[[sqlite3.Connection], T], durable: bool = True) -> Future[T]:
        """Queue `op` for the writer; the future resolves when it is committed.

        durable=False lets a batch holding only such ops commit with synchronous=NORMAL:
        safe against a crash of the process, and on power loss such a write may be
        lost, never corrupted. Use it only where losing the write is harmless.
        """
        return self._submit(op, durable).future

    def _submit(self, op: Callable[[sqlite3.Connection], Any], durable: bool) -> _Request:
        request = _Request(op, Future(), durable)
        self._requests.put(request)
        return request

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
            batch = [r for r in batch if r.start()]
            if not batch:
                continue
            try:
                self._commit(batch)
            except Exception as e:  # a bug must not kill the only writer: fail this batch, go on
                logs.error("spool.write_failed", exc_info=True)
                for request in batch:
                    if not request.future.done():
                        request.future.set_exception(e)

    def _commit(self, batch: list[_Request]) -> None:
        if _identity(self.path) != self._ident:
            self._file_lost(batch)
            return
        try:
            outcomes = self._transaction(batch)
        except sqlite3.Error as e:
            if self._db.in_transaction:  # a failed COMMIT leaves it open; the next BEGIN would fail forever
                try:
                    self._db.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            self._set_problem("spool not writable", str(e))
            failure = Unavailable("spool not writable", retry_after=30)
            failure.__cause__ = e
            for request in batch:
                request.future.set_exception(failure)
            return
        if _identity(self.path) != self._ident:
            # Committed, but into a file that is no longer at the path. The restore copies it
            # back, so nothing is lost; the senders are told 503 and their retries dedupe.
            self._file_lost(batch)
            return
        if self._problem is not None and self._problem != "spool disk full":  # that one is the probe's to clear
            self._set_problem(None)
        for request, (value, error) in zip(batch, outcomes, strict=True):
            if error is not None:
                request.future.set_exception(error)
            else:
                request.future.set_result(value)

    def _file_lost(self, batch: list[_Request]) -> None:
        failure = Unavailable("spool file removed or replaced", retry_after=5)
        for request in batch:
            if not request.future.done():
                request.future.set_exception(failure)
        self._set_problem("spool file removed or replaced",
                          f"{self.path} is not the file this process opened; restoring it from the open database")
        try:
            self._restore()
        except (OSError, sqlite3.Error) as e:
            logs.error("spool.restore_failed", error=str(e), spool=self.location,
                       detail="stays unready; tried again at the next probe")

    def _restore(self) -> None:
        """Put the database this process has open back at its path (writer thread only)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            aside = set_aside(self.path, "foreign")
            logs.error("spool.foreign_file", spool=self.location, kept_as=str(aside),
                       detail="another file took the spool's place; kept aside, ours restored")
        staging = self.path.with_name(DB_NAME + ".restoring")
        for p in _companions(staging):
            p.unlink(missing_ok=True)
        copy = sqlite3.connect(staging)
        try:
            self._db.backup(copy)
            copy.execute("PRAGMA journal_mode=DELETE")
        finally:
            copy.close()
        # Close every connection to the lost file before ours takes the path: the last
        # close of a WAL database removes "<path>-wal" by name.
        with self._readers_lock:
            for reader in self._readers:
                try:
                    reader.close()
                except sqlite3.Error:
                    pass
            self._readers.clear()
            self._generation += 1
        self._db.close()
        for p in _companions(self.path)[1:]:
            p.unlink(missing_ok=True)
        os.replace(staging, self.path)
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        self._db = connect(self.path)
        self._full_sync = True
        self._ident = _identity(self.path)
        logs.warning("spool.restored", spool=self.location, detail="the open database was copied back to its path")

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
        except sqlite3.DatabaseError as e:
            db.execute("ROLLBACK")
            if isinstance(e, sqlite3.IntegrityError):
                return None, e
            raise  # the disk or the file (full, locked, damaged), not the op: fail the batch
        except Exception as e:
            db.execute("ROLLBACK")
            return None, e
        db.execute("COMMIT")
        return value, None

    def close(self) -> None:
        self._closing.set()
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
        local = self._local
        if getattr(local, "generation", -1) != self._generation:
            db = connect(self.path)
            with self._readers_lock:
                self._readers.append(db)
                local.db, local.generation = db, self._generation
        return local.db  # type: ignore[no-any-return]

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
        return [(r[0], r[1], r[2], r[3], route_from_spec(r[4]).concurrency) for r in rows]

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
    def accept(self, delivery: Delivery, routes: Sequence[Route]) -> Accepted:
        """Commit a delivery and one job per route; dedupe on (endpoint, delivery id).

        A redelivery whose jobs all finished or are still queued is a duplicate and
        adds nothing; one with failed jobs puts those back in the queue.
        """
        problem = self.health()
        if problem:
            raise Unavailable(problem, retry_after=10)
        if self.max_bytes and self.used_bytes + len(delivery.body) > self.max_bytes:
            raise Unavailable("spool full (spool_max_bytes)", retry_after=30)

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
            self.used_bytes += len(delivery.body) + 256 * (1 + len(routes))  # until the probe measures it
            return Accepted("accepted", tuple(ids), tuple(r.name for r in routes))

        return self.write(op)

    def finish(self, job_id: int, state: str, attempts: int, next_at: float, exit_code: int | None,
               outcome: str, output_tail: str) -> Future[Any]:
        """Record an attempt: done, failed (dead letter), or pending again for a retry at `next_at`.

        Not durable in the fsync sense: if the record is lost (power loss), the job is
        still pending on disk and runs again, which at-least-once allows. A delivery whose
        jobs are all done drops its body (its id stays for dedupe; dead letters keep theirs).
        """
        def op(db: sqlite3.Connection) -> None:
            db.execute("UPDATE jobs SET state = ?, attempts = ?, next_at = ?, exit_code = ?, outcome = ?,"
                       " output_tail = ?, updated_at = ? WHERE id = ?",
                       (state, attempts, next_at, exit_code, outcome, output_tail, time.time(), job_id))
            if state == "done":
                db.execute("UPDATE deliveries SET body = x'' WHERE id = (SELECT delivery_id FROM jobs WHERE id = ?)"
                           " AND NOT EXISTS (SELECT 1 FROM jobs WHERE delivery_id = deliveries.id"
                           " AND state != 'done')", (job_id,))

        return self.submit_write(op, durable=False)

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
