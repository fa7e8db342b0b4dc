"""The sqlite file behind the embedded spool, kept honest.

One writer thread batches whatever requests are waiting into one transaction
(group commit): concurrent senders share an fsync instead of queueing for one
each, and durability is not weakened.

The file is watched as well as written. The writer checks after every commit,
and a probe every PROBE_INTERVAL_S, that the path still names the file it has
open: a spool.db removed or replaced under a running process would otherwise
take commits into an unlinked file (200s into a void). On a mismatch the batch
answers 503, readiness turns 503, and the open database is copied back to the
path (sqlite's backup API), so nothing accepted is lost and no restart is needed.
The probe (a small write/read round trip on a timer) also makes readiness tell
the truth without traffic: a lock held elsewhere, a hung disk, a full disk.
"""

from __future__ import annotations

import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from .. import logs
from ..errors import Unavailable
from .sqlite_file import companions, connect, identity, locked_out, set_aside

T = TypeVar("T")
MAX_BATCH = 256
PROBE_INTERVAL_S = 1.0
PROBE_TIMEOUT_S = 5.0


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


class Writer:
    """The single group-committing writer of one sqlite file, its probe and its readers."""

    def __init__(self, path: Path, *, serving: bool, reserve_bytes: int = 0,
                 on_probe: Callable[[sqlite3.Connection], None] | None = None) -> None:
        self.path = path
        self.location = str(path)
        self._serving = serving
        self.reserve_bytes = reserve_bytes
        self._on_probe = on_probe
        self.db = connect(path, create=True)
        self._ident = identity(path)
        self._generation = 0
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._requests: queue.Queue[_Request | None] = queue.Queue()
        self._full_sync = True
        self._local = threading.local()
        self._problem: str | None = None  # why the spool cannot take deliveries now
        self._probe_ok_at = time.monotonic()
        self._closing = threading.Event()

    def start(self) -> None:
        self._writer = threading.Thread(target=self._write_loop, name="spool-writer", daemon=True)
        self._writer.start()
        if self._serving:
            threading.Thread(target=self._probe_loop, name="spool-probe", daemon=True).start()

    # --- health -------------------------------------------------------------------
    def health(self) -> str | None:
        """Why the spool cannot take deliveries now (for /readyz and 503s), or None."""
        if self._serving and time.monotonic() - self._probe_ok_at > PROBE_TIMEOUT_S + PROBE_INTERVAL_S:
            return "spool not responding"
        if self._problem is None and identity(self.path) != self._ident:
            if locked_out(self.path):
                return "spool directory or file mode changed"  # the next probe restores it
            return "spool file removed or replaced"  # the next probe restores it
        return self._problem

    def _restore_modes(self) -> None:
        """The spool directory and files are ours (0700/0600): a mode someone changed (chmod is
        not covered by Landlock) is put back, with the true reason logged, before the probe."""
        for path, want in ((self.path.parent, 0o700), *((p, 0o600) for p in companions(self.path))):
            try:
                st = os.stat(path)
                if st.st_uid != os.geteuid() or st.st_mode & want == want:
                    continue
                os.chmod(path, (st.st_mode & 0o7777) | want)
            except OSError:
                continue
            logs.error("spool.mode_restored", path=str(path), was=oct(st.st_mode & 0o7777),
                       now=oct((st.st_mode & 0o7777) | want),
                       detail="someone removed the owner's access to the spool; the sidecar restored it")

    def _probe_loop(self) -> None:
        """A write/read round trip through the writer on a timer, so readiness tells the
        truth without traffic and comes back by itself (an unready pod gets no POSTs)."""
        while not self._closing.wait(PROBE_INTERVAL_S):
            self._restore_modes()
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

    def _check_disk(self, committed: bool = False) -> None:
        """A probe's write is small and may fit in the WAL's old space on a full disk; a delivery
        may not. Free space below the reserve is "disk full", so readiness does not flap.
        `committed`: a commit just succeeded, which clears any other problem in the same step
        (never a moment of "ready" in between)."""
        try:
            st = os.statvfs(self.path.parent)
            free = st.f_bavail * st.f_frsize
        except OSError:
            free = self.reserve_bytes
        if free < self.reserve_bytes:
            self._set_problem("spool disk full", f"{free} bytes free, below the reserve of {self.reserve_bytes}")
        elif committed or self._problem == "spool disk full":
            self._set_problem(None)

    def _probe_op(self, db: sqlite3.Connection) -> None:
        db.execute("INSERT INTO probe (id, at) VALUES (1, ?) ON CONFLICT (id) DO UPDATE SET at = excluded.at",
                   (time.time(),))
        if self._on_probe is not None:
            self._on_probe(db)

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
        if identity(self.path) != self._ident:
            self._file_lost(batch)
            return
        try:
            outcomes = self._transaction(batch)
        except sqlite3.Error as e:
            if self.db.in_transaction:  # a failed COMMIT leaves it open; the next BEGIN would fail forever
                try:
                    self.db.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            self._set_problem("spool not writable", str(e))
            failure = Unavailable("spool not writable", retry_after=30)
            failure.__cause__ = e
            for request in batch:
                request.future.set_exception(failure)
            return
        if identity(self.path) != self._ident:
            # Committed, but into a file that is no longer at the path. The restore copies it
            # back, so nothing is lost; the senders are told 503 and their retries dedupe.
            self._file_lost(batch)
            return
        if self._problem is not None:
            self._check_disk(committed=True)
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
        staging = self.path.with_name(self.path.name + ".restoring")
        for p in companions(staging):
            p.unlink(missing_ok=True)
        copy = sqlite3.connect(staging)
        try:
            self.db.backup(copy)
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
        self.db.close()
        for p in companions(self.path)[1:]:
            p.unlink(missing_ok=True)
        os.replace(staging, self.path)
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        self.db = connect(self.path)
        self._full_sync = True
        self._ident = identity(self.path)
        logs.warning("spool.restored", spool=self.location, detail="the open database was copied back to its path")

    def _transaction(self, batch: list[_Request]) -> list[tuple[Any, BaseException | None]]:
        """Run every op in one transaction. An op that raises (rare: ops check before they
        write) sends the batch round again with one transaction per op, so only it fails."""
        db = self.db
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
        db = self.db
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
            self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error:
            pass
        self.db.close()

    @property
    def reader(self) -> sqlite3.Connection:
        local = self._local
        if getattr(local, "generation", -1) != self._generation:
            db = connect(self.path)
            with self._readers_lock:
                self._readers.append(db)
                local.db, local.generation = db, self._generation
        return local.db
