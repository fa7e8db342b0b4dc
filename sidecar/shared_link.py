"""The shared spool's link to its database: opened with back-off, watched by a probe, told as readiness.

- Opening: the first try runs at start, waited for up to FIRST_TRY_S, so that a reachable database is
  ready from the replica's first answer on. When it fails, the replica serves anyway (unready, POSTs
  503) and tries again with back-off (OPEN_BACKOFF_S doubling up to OPEN_BACKOFF_MAX_S): in Kubernetes
  an unready pod that recovers by itself, not a crash loop whose back-off outlasts the outage. Only a
  malformed URL (Store()) and a schema newer than this release found at the first try stop the start.
- Probing: a connection of its own runs `SELECT 1` every PROBE_EVERY_S with a short TCP deadline. No
  successful round trip for PROBE_STALE_S is "not responding": a partition that drops packets answers
  nothing at all (no error to wait for), so silence itself turns the replica unready.
- health() is what /readyz and the POSTs' 503 say: short reasons, never the host, the user or the URL
  (/readyz answers anyone); the logs carry the details (redacted).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from . import logs, metrics
from .spool.pg_schema import SchemaTooNew, Unusable
from .spool.postgres import DB_ERRORS, Store

FIRST_TRY_S = 7.0  # connect_timeout (5 s) and a migration
OPEN_BACKOFF_S = 0.5
OPEN_BACKOFF_MAX_S = 5.0
PROBE_EVERY_S = 0.25
PROBE_STALE_S = 1.5  # no round trip for this long: unready (within 2 s of a silent cut)
PROBE_TCP_TIMEOUT_MS = 1500  # the probe's tcp_user_timeout: its stuck connection is dropped, then redialled


class Link:
    """Opens `store` (calling `opened` once, before the replica turns ready), then watches it."""

    def __init__(self, store: Store, opened: Callable[[], None]) -> None:
        self.store = store
        self._opened_cb = opened
        self.opened = threading.Event()
        self._first = threading.Event()  # the first try ended (either way)
        self._first_error: Unusable | None = None
        self._detached = False  # start() no longer waits for the first try
        self._closed = threading.Event()
        self._reason = "spool database unreachable"  # until opened: why not (short, safe to show)
        self._problem: str | None = None
        self._ok_at = time.monotonic()

    def start(self) -> None:
        """Try to open now (waiting up to FIRST_TRY_S), then keep trying in the background.

        SchemaTooNew when the first try found a database this release must not use."""
        threading.Thread(target=self._run, name="spool-link", daemon=True).start()
        self._first.wait(FIRST_TRY_S)
        self._detached = True
        if isinstance(self._first_error, SchemaTooNew):
            self.close()
            raise self._first_error

    def health(self) -> str | None:
        """Why the spool cannot take deliveries now, or None when it can."""
        if not self.opened.is_set():
            return self._reason
        if self._problem is None and time.monotonic() - self._ok_at > PROBE_STALE_S:
            return "spool database not responding"
        return self._problem

    def failed(self, operation: str, error: BaseException, counted: bool = False) -> None:
        """A database operation failed: unready until the next successful round trip."""
        if not counted:
            metrics.DATABASE_ERRORS.labels(operation).inc()
        problem = "spool database unreachable"
        if self._problem != problem:
            self._problem = problem
            logs.error("spool.unavailable", reason=problem, operation=operation, spool=self.store.location,
                       error=str(error).strip()[:300])

    def ok(self) -> None:
        """A round trip succeeded."""
        self._ok_at = time.monotonic()
        if self._problem is not None:
            logs.info("spool.recovered_writable", was=self._problem, spool=self.store.location)
            self._problem = None
            self.store.pool.check()  # drop the connections the outage broke before a request meets one

    def close(self) -> None:
        self._closed.set()

    def _run(self) -> None:
        if self._open():
            self._probe()

    def _open(self) -> bool:
        delay, tries = OPEN_BACKOFF_S, 0
        while not self._closed.is_set():
            tries += 1
            try:
                self.store.open()
                self._opened_cb()
            except Unusable as e:
                self._failed_open(e, tries, delay)
            except DB_ERRORS as e:  # the first reads after opening
                self._failed_open(Unusable(str(e).strip()[:300]), tries, delay)
            else:
                self._ok_at = time.monotonic()
                self.opened.set()
                self._first.set()
                logs.info("spool.connected", spool=self.store.location, tries=tries, replica=self.store.replica)
                return True
            if self._closed.wait(delay):
                return False
            delay = min(OPEN_BACKOFF_MAX_S, delay * 2)
        return False

    def _failed_open(self, e: Unusable, tries: int, delay: float) -> None:
        metrics.DATABASE_ERRORS.labels("open").inc()
        self._reason = e.reason
        if tries == 1:
            self._first_error = e
            self._first.set()
            if isinstance(e, SchemaTooNew) and not self._detached:
                return  # start() refuses to start and says why
        (logs.error if tries == 1 else logs.warning)(
            "spool.unavailable", reason=e.reason, operation="open", spool=self.store.location, tries=tries,
            retry_in_s=delay, error=str(e), detail="not ready; POSTs get 503 until the database can be used")

    def _probe(self) -> None:
        conn = None
        while not self._closed.wait(PROBE_EVERY_S if conn is not None else OPEN_BACKOFF_S):
            try:
                if conn is None:
                    conn = self.store.connect_probe(PROBE_TCP_TIMEOUT_MS)
                conn.execute("SELECT 1")
                self.ok()
            except DB_ERRORS as e:
                self.failed("probe", e)
                if conn is not None:
                    conn.close()
                conn = None
        if conn is not None:
            conn.close()
