"""Connection admission: at most max_connections at once, at most max_connections_per_client from
one address, and which connection to close when a new one needs the room.

ThreadingHTTPServer starts a thread per connection; its accept thread asks admit() first. Within
the limits a connection is admitted. At a limit, room is made in the scope of that limit (the one
address, or everyone) by closing, oldest first:
  1. an idle connection: between requests, with no request byte pending (keep-alive, or never used);
  2. else one still receiving its request: the one whose request has been arriving longest (or,
     when no thread has started reading any, one whose request bytes wait for their thread).
A connection whose request is complete and being handled is never closed to make room: when only
those are left, the new connection is refused (503 from the accept thread).

Closing is shutdown(SHUT_RD): the connection's thread wakes from its read and ends; a response it
is writing still goes out. A connection is forgotten (release) before its descriptor is closed, and
both happen under one lock, so an eviction can never shut down a stranger that reused the number.
"""

from __future__ import annotations

import io
import resource
import select
import socket
import threading
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import Any

from . import logs, metrics

IDLE, READING, HANDLING = "idle", "reading", "handling"
PER_CLIENT = "max_connections_per_client"
TOTAL = "max_connections"
REPORT_EVERY_S = 10.0  # evictions are logged as one aggregate line per this interval, at most
PEEKS = 16  # idle candidates checked for pending bytes per admission, so an accept stays O(1)


@dataclass(eq=False)
class Connection:
    """One admitted connection: its client address, what it is doing, and whether it was evicted."""

    sock: socket.socket
    client: str
    state: str = IDLE
    evicted: str = ""  # the limit whose room it made: PER_CLIENT or TOTAL


class _Group:
    """The counted connections of one scope (everyone, or one address), by state, oldest first."""

    __slots__ = ("count", "idle", "reading")

    def __init__(self) -> None:
        self.count = 0
        self.idle: OrderedDict[Connection, None] = OrderedDict()
        self.reading: OrderedDict[Connection, None] = OrderedDict()

    def move(self, conn: Connection, old: str, new: str) -> None:
        if old == IDLE:
            self.idle.pop(conn, None)
        elif old == READING:
            self.reading.pop(conn, None)
        if new == IDLE:
            self.idle[conn] = None
        elif new == READING:
            self.reading[conn] = None

    def victim(self) -> tuple[Connection, str] | None:
        """The connection to close and its kind ("idle" or "slow"), or None when all are handling."""
        pending = None  # idle in name only: its request's first bytes are in, its thread not yet running
        for i, conn in enumerate(self.idle):
            if i == PEEKS:
                break
            if not _has_bytes(conn.sock):
                return conn, "idle"
            pending = pending or conn
        slow = next(iter(self.reading), None) or pending
        return (slow, "slow") if slow is not None else None


def _has_bytes(sock: socket.socket) -> bool:
    """Whether a request byte (or the peer's close) is waiting: a poll, never a read or a wait."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


class Connections:
    """The admitted connections; every method is safe from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: dict[socket.socket, Connection] = {}  # admitted and not yet released, evicted or not
        self._all = _Group()
        self._clients: dict[str, _Group] = {}
        self._evictions: Counter[tuple[str, str]] = Counter()
        self._evicted_from: Counter[str] = Counter()
        self._reported = -REPORT_EVERY_S
        self._since = 0.0  # when the first eviction not yet reported happened

    def __len__(self) -> int:
        """Connections counted against the limits (evicted ones still closing are not)."""
        return self._all.count

    def admit(self, sock: socket.socket, client: str, limit: int, per_client: int) -> Connection | str:
        """Count a new connection in, evicting another if a limit is reached; else the limit's name."""
        with self._lock:
            group = self._clients.get(client)
            scope, reason = None, ""
            if group is not None and group.count >= per_client:
                scope, reason = group, PER_CLIENT
            elif self._all.count >= limit:
                scope, reason = self._all, TOTAL
            if scope is not None:
                victim = scope.victim()
                if victim is None:
                    return reason
                self._evict(*victim, reason)
                group = self._clients.get(client)
            conn = self._open[sock] = Connection(sock, client)
            if group is None:
                group = self._clients[client] = _Group()
            for g in (self._all, group):
                g.count += 1
                g.idle[conn] = None
            return conn

    def get(self, sock: socket.socket) -> Connection:
        """The record admit() made for `sock` (its handler thread asks)."""
        with self._lock:
            return self._open[sock]

    def idle(self, conn: Connection) -> None:
        """Between requests, nothing pending: the first to go (a no-op if it already is)."""
        self._move(conn, IDLE)

    def reading(self, conn: Connection) -> None:
        """A request's first byte is in; until handling(), it can still be made to go."""
        self._move(conn, READING)

    def handling(self, conn: Connection) -> None:
        """The request is complete; never evicted until it is back to idle()."""
        self._move(conn, HANDLING)

    def release(self, sock: socket.socket) -> None:
        """Forget a connection; called before its socket is closed. A no-op for one never admitted."""
        with self._lock:
            conn = self._open.pop(sock, None)
            if conn is not None and not conn.evicted:
                self._uncount(conn)

    def _move(self, conn: Connection, state: str) -> None:
        with self._lock:
            if conn.state != state and not conn.evicted:
                for g in (self._all, self._clients[conn.client]):
                    g.move(conn, conn.state, state)
            conn.state = state

    def _uncount(self, conn: Connection) -> None:
        group = self._clients[conn.client]
        for g in (self._all, group):
            g.count -= 1
            g.move(conn, conn.state, "")
        if not group.count:
            del self._clients[conn.client]  # one entry per address with a connection, not per address seen

    def _evict(self, conn: Connection, kind: str, reason: str) -> None:
        if not self._evictions:
            self._since = time.monotonic()
        self._uncount(conn)
        conn.evicted = reason
        self._evictions[(kind, reason)] += 1
        self._evicted_from[conn.client] += 1
        metrics.CONNECTIONS_EVICTED.labels(kind, reason).inc()
        try:
            conn.sock.shutdown(socket.SHUT_RD)
        except OSError:
            pass  # the peer is gone already; its thread is ending

    def report(self) -> None:
        """Log evictions since the last report as one line, at most every REPORT_EVERY_S.

        A flood evicts thousands of sockets a second; a line each would bury every other event.
        The first eviction after a quiet spell is reported at once (by the next call).
        """
        now = time.monotonic()
        with self._lock:
            if not self._evictions or now - self._reported < REPORT_EVERY_S:
                return
            counts, self._evictions = self._evictions, Counter()
            clients, self._evicted_from = self._evicted_from, Counter()
            since, self._reported = self._since, now
            held = self._all.count
        logs.warning(
            "connection.evicted", evicted=sum(counts.values()),
            idle=sum(n for (kind, _), n in counts.items() if kind == "idle"),
            slow=sum(n for (kind, _), n in counts.items() if kind == "slow"),
            by_limit={limit: sum(n for (_, r), n in counts.items() if r == limit) for limit in (TOTAL, PER_CLIENT)},
            clients=len(clients), top_clients=[f"{c} ({n})" for c, n in clients.most_common(3)],
            window_s=round(now - since, 1), connections=held)


class RequestReader(io.RawIOBase):
    """A handler's read side of its socket, under its buffered rfile, that marks idle and reading.

    Between requests it waits for the next first byte with MSG_PEEK, which leaves the byte in the
    kernel: until the connection is marked as reading, an eviction's poll still sees it pending,
    so a request that has begun to arrive is never taken for an idle connection.
    """

    def __init__(self, sock: socket.socket, connections: Connections, conn: Connection) -> None:
        super().__init__()
        self._sock, self._connections, self._conn = sock, connections, conn
        self._waiting = False

    def readable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._sock.fileno()

    def await_request(self) -> None:
        """Before each request: idle until its first byte comes from the socket (or arrived())."""
        self._connections.idle(self._conn)
        self._waiting = True

    def arrived(self) -> None:
        """The request has begun: evicted now only when nothing idle is left (see Connections)."""
        if self._waiting:
            self._waiting = False
            self._connections.reading(self._conn)

    def readinto(self, buffer: Any) -> int:
        try:
            if self._waiting:
                self._sock.recv(1, socket.MSG_PEEK)  # waits; b"" at the end or after an eviction
                self.arrived()
            return self._sock.recv_into(buffer)
        except BlockingIOError as e:  # a blocking socket's SO_RCVTIMEO (see AdmittedHandler.setup)
            raise TimeoutError("timed out") from e


def raise_nofile(need: int) -> None:
    """Raise the soft RLIMIT_NOFILE to the hard limit when fewer than `need` descriptors are allowed.

    Each connection is a descriptor. At the limit accept() fails, socketserver drops the error, and
    the listening socket stays readable: the sidecar spins without accepting, and nothing can be
    evicted. A 1024 soft limit (a common default) is below 2 x 256 connections plus the spool's.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= need:
        return
    target = hard if hard != resource.RLIM_INFINITY else max(need, 1 << 16)  # Linux refuses infinity here
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as e:
        logs.warning("server.nofile", soft=soft, hard=hard, needed=need, error=str(e))
        return
    if target < need:
        logs.warning("server.nofile", soft=target, was=soft, needed=need,
                     error="the hard limit is below what max_connections needs")
    else:
        logs.info("server.nofile", soft=target, was=soft, needed=need)
