"""Deadlines for statements on the shared spool's connections, kept even when the network is not.

A statement whose packets a partition drops waits for TCP to give up (tcp_user_timeout, when set),
and behind a proxy or load balancer that keeps the connection open, it waits forever. Past its
deadline, the connection's socket is shut down from another thread (shutdown(2), which is safe while
a thread waits on it; close(2) would not be): the waiting statement fails at once, and the caller
answers for it (a POST gets 503). A connection shut down is closed afterwards, never pooled again.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg

CHECK_S = 0.1  # how often overdue statements are looked for: the precision of every deadline


class Deadlines:
    """Statements in flight with their deadlines; a thread ends those that overrun."""

    def __init__(self) -> None:
        self._inflight: dict[int, list[Any]] = {}  # id -> [deadline, connection, fired]
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None

    @contextlib.contextmanager
    def bound(self, conn: psycopg.Connection[Any], deadline: float | None) -> Iterator[None]:
        """Run the block's statements on `conn` until `deadline` (monotonic) at most; None: no bound."""
        if deadline is None:
            yield
            return
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._reap, name="spool-deadline", daemon=True)
                    self._thread.start()
        entry = [deadline, conn, False]
        with self._lock:
            self._inflight[id(entry)] = entry
        try:
            yield
        finally:
            with self._lock:
                del self._inflight[id(entry)]
            if entry[2]:
                conn.close()  # its socket is shut down: the pool must not hand it out again

    def close(self) -> None:
        self._closed.set()

    def _reap(self) -> None:
        while not self._closed.wait(CHECK_S):
            now = time.monotonic()
            # Under the lock: the block cannot end, so the connection (and its fd) cannot close meanwhile.
            with self._lock:
                for entry in self._inflight.values():
                    if now >= entry[0] and not entry[2]:
                        entry[2] = True
                        with contextlib.suppress(OSError), socket.socket(fileno=os.dup(entry[1].fileno())) as s:
                            s.shutdown(socket.SHUT_RDWR)
