"""Forward a delivery to an HTTP target: one POST, and what its answer means for the job.

A `Forwarder` keeps a small pool of keep-alive connections per target (scheme, host, port, CA file),
shared by the worker threads. Redirects are never followed (http.client follows none) and TLS
certificates are verified by default, against the target's `ca_file` or the system's store.

An Outcome is the verdict the scheduler needs: ok (2xx), retry (a connection error, a timeout, 408,
429, 5xx; with the answer's Retry-After), or fail (any other status, 3xx included). Nothing here
logs; no outcome, error text or repr holds a secret (signing keys and static header values are
not shown).
"""

from __future__ import annotations

import enum
import http.client
import os
import select
import socket
import ssl
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from .forward_sign import (  # Facts is part of this module's API
    Facts,
    check_header,
    cloudevent_headers,
    request_headers,
    retry_after,
    sendable,
    standard_signature,
)
from .providers.standard import whsec_key

MODES = ("raw", "cloudevents")
TAIL_BYTES = 4096  # of the answer's body, for hook.finished's output_tail (as a hook's output)
MAX_DRAIN_BYTES = 1 << 20  # a longer answer is not read to its end: its connection is closed instead
IDLE_S = 30.0  # an idle connection older than this is closed rather than reused
USER_AGENT = "webhook-sidecar"


class CAFileError(OSError):
    """The target's ca_file is missing or unreadable (config checks it at load; it may go away later)."""


class Verdict(enum.Enum):
    OK = "ok"
    RETRY = "retry"
    FAIL = "fail"


@dataclass(frozen=True)
class Target:
    """Where a route forwards to; ValueError (naming the key, never a value) when it cannot be one.

    `sign` lists Standard Webhooks secrets (`whsec_<base64>`; several sign with each, for a rotation
    on the application's side); `pass_headers` names the original request's headers to carry.
    """

    url: str
    headers: Mapping[str, str] | Sequence[tuple[str, str]] = field(default=(), repr=False)
    timeout_s: float = 10.0
    ca_file: str | None = None
    sign: Sequence[bytes | str] = field(default=(), repr=False)
    mode: str = "raw"
    pass_headers: Sequence[str] = ()
    keys: tuple[bytes, ...] = field(init=False, repr=False, compare=False)
    static: tuple[tuple[str, str], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("url: must be an http:// or https:// URL with a host")
        if parts.username is not None or parts.password is not None:
            raise ValueError("url: credentials in the URL are not allowed (use headers)")
        if parts.fragment or not self.url.isascii() or not self.url.isprintable() or " " in self.url:
            raise ValueError("url: must be ASCII (percent-encoded) with no fragment, spaces or control characters")
        try:
            parts.port  # noqa: B018 (raises on a port that is not a number in range)
        except ValueError as e:
            raise ValueError("url: the port is not a number from 1 to 65535") from e
        if isinstance(self.timeout_s, bool) or not 0 < self.timeout_s <= 3600:
            raise ValueError("timeout_s: must be more than 0 and at most 3600 seconds")
        if self.mode not in MODES:
            raise ValueError(f"format: must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.ca_file is not None and parts.scheme != "https":
            raise ValueError("ca_file: only an https:// target verifies a certificate")
        static = tuple(self.headers.items() if isinstance(self.headers, Mapping) else self.headers)
        for name, value in static:
            check_header(name, value, "headers")
        for name in self.pass_headers:
            check_header(name, "", "pass_headers")
        keys = tuple(whsec_key(s.encode() if isinstance(s, str) else s) for s in self.sign)
        if any(k is None for k in keys):
            raise ValueError("sign: the secret is not a Standard Webhooks secret (whsec_ followed by base64)")
        object.__setattr__(self, "static", static)
        object.__setattr__(self, "sign", tuple(self.sign))
        object.__setattr__(self, "pass_headers", tuple(self.pass_headers))
        object.__setattr__(self, "keys", tuple(k for k in keys if k is not None))

    @property
    def pool_key(self) -> tuple[str, str, int, str | None]:
        parts = urlsplit(self.url)
        https = parts.scheme == "https"
        return parts.scheme, parts.hostname or "", parts.port or (443 if https else 80), self.ca_file

    @property
    def request_target(self) -> str:
        parts = urlsplit(self.url)
        return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


@dataclass(frozen=True)
class Outcome:
    """What one forward came to: the verdict, the HTTP status (None without an answer), how long it
    took, the answer's Retry-After in seconds, the tail of its body, and a short reason when not ok."""

    verdict: Verdict
    status: int | None
    duration_s: float
    retry_after_s: float | None = None
    tail: str = ""
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.verdict is Verdict.OK

    @property
    def retryable(self) -> bool:
        return self.verdict is Verdict.RETRY

    @property
    def final(self) -> bool:
        return self.verdict is Verdict.FAIL

    def log_fields(self) -> dict[str, Any]:
        """Fields for hook.finished: target, http_status, duration_ms, output_tail, error, retry_after_s."""
        fields: dict[str, Any] = {"target": "forward", "http_status": self.status,
                                  "duration_ms": round(self.duration_s * 1000, 1), "output_tail": self.tail}
        if self.error:
            fields["error"] = self.error
        if self.retry_after_s is not None:
            fields["retry_after_s"] = self.retry_after_s
        return fields


def verdict(status: int) -> Verdict:
    """2xx ok; 408, 429 and 5xx worth another try; anything else (3xx included) final."""
    if 200 <= status < 300:
        return Verdict.OK
    if status in (408, 429) or 500 <= status < 600:
        return Verdict.RETRY
    return Verdict.FAIL


def describe(error: BaseException) -> str:
    """A short, secret-free reason for a failed exchange (for logs)."""
    if isinstance(error, CAFileError):
        return f"ca_file: cannot read it ({os.strerror(error.errno or 0)})"
    if isinstance(error, TimeoutError):
        return "timeout"
    if isinstance(error, ssl.SSLCertVerificationError):
        return f"tls: certificate not trusted ({error.verify_message})"
    if isinstance(error, ssl.SSLError):
        return f"tls: {error.reason or 'handshake failed'}"
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected)):
        return "connection closed by the target"
    if isinstance(error, socket.gaierror):
        return "host name not resolved"
    if isinstance(error, http.client.HTTPException):
        return f"invalid HTTP answer ({type(error).__name__})"
    if isinstance(error, OSError) and error.errno:
        return f"connection error ({os.strerror(error.errno)})"
    return f"connection error ({type(error).__name__})"


class _Pool:
    """Connections to one target: at most `limit` open, idle ones kept up to `max_idle`."""

    def __init__(self, limit: int, max_idle: int) -> None:
        self.limit, self.max_idle = limit, max_idle
        self.idle: list[tuple[http.client.HTTPConnection, float]] = []
        self.open = 0
        self.cond = threading.Condition()

    def take(self, deadline: float, fresh: bool = False) -> http.client.HTTPConnection | None:
        """An idle connection (newest first), or None with a slot reserved for a new one (always when
        `fresh`); TimeoutError when every slot stays busy until `deadline`."""
        with self.cond:
            while True:
                while self.idle and not fresh:
                    conn, since = self.idle.pop()
                    if time.monotonic() - since < IDLE_S and _alive(conn):
                        return conn
                    conn.close()
                    self.open -= 1
                if self.open < self.limit:
                    self.open += 1
                    return None
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("every connection to the target is busy")
                self.cond.wait(left)

    def give(self, conn: http.client.HTTPConnection, reusable: bool) -> None:
        with self.cond:
            if reusable and len(self.idle) < self.max_idle:
                self.idle.append((conn, time.monotonic()))
            else:
                conn.close()
                self.open -= 1
            self.cond.notify()

    def release(self) -> None:
        """A reserved slot that got no connection."""
        with self.cond:
            self.open -= 1
            self.cond.notify()

    def close(self) -> None:
        with self.cond:
            for conn, _ in self.idle:
                conn.close()
                self.open -= 1
            self.idle.clear()


def _alive(conn: http.client.HTTPConnection) -> bool:
    """False when the peer closed an idle connection (or sent something unasked): reusing it would fail."""
    sock = conn.sock
    if sock is None:
        return False
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return False
    if not readable:
        return True
    if not isinstance(sock, ssl.SSLSocket):
        return False
    # TLS 1.3 servers send session tickets after the handshake: readable, yet no application data.
    sock.setblocking(False)
    try:
        sock.recv(1)
        return False  # data or EOF
    except ssl.SSLWantReadError:
        return True
    except OSError:
        return False


class Forwarder:
    """Thread-safe POSTs to targets over pooled keep-alive connections."""

    def __init__(self, max_connections: int = 16, max_idle: int = 4) -> None:
        self.max_connections, self.max_idle = max_connections, max_idle
        self._pools: dict[tuple[str, str, int, str | None], _Pool] = {}
        self._contexts: dict[tuple[str | None, int], ssl.SSLContext] = {}
        self._lock = threading.Lock()

    def post(self, target: Target, body: bytes, content_type: str, facts: Facts,
             now: float | None = None) -> Outcome:
        """POST `body` to `target` for the delivery `facts` describes; never raises for network trouble."""
        start = time.monotonic()
        deadline = start + target.timeout_s
        headers = self._headers(target, body, content_type, facts, time.time() if now is None else now)
        pool = self._pool(target)
        try:
            status, answer, tail = self._exchange(pool, target, headers, body, deadline)
        except (OSError, http.client.HTTPException) as e:
            return Outcome(Verdict.RETRY, None, time.monotonic() - start, error=describe(e))
        duration = time.monotonic() - start
        kind = verdict(status)
        wait = retry_after(answer.get("Retry-After")) if kind is Verdict.RETRY else None
        error = "" if kind is Verdict.OK else f"HTTP {status}"
        if 300 <= status < 400:
            error += " (redirects are not followed)"
        return Outcome(kind, status, duration, wait, tail, error)

    def close(self) -> None:
        """Close every idle connection (for a reload or shutdown); ones in use go back to their pool after."""
        with self._lock:
            pools = list(self._pools.values())
        for pool in pools:
            pool.close()

    def _headers(self, target: Target, body: bytes, content_type: str, facts: Facts,
                 now: float) -> list[tuple[str, str]]:
        if not content_type or not sendable(content_type):
            content_type = "application/octet-stream"
        headers = [("User-Agent", USER_AGENT), ("Content-Type", content_type)]
        headers += request_headers(target.static, target.pass_headers, facts)
        if target.mode == "cloudevents":
            headers += cloudevent_headers(facts, now).items()
        if target.keys:
            headers += standard_signature(target.keys, facts.delivery, int(now), body).items()
        return headers

    def _pool(self, target: Target) -> _Pool:
        key = target.pool_key
        with self._lock:
            pool = self._pools.get(key)
            if pool is None:
                pool = self._pools[key] = _Pool(self.max_connections, self.max_idle)
            return pool

    def _context(self, ca_file: str | None) -> ssl.SSLContext:
        """One verifying context per CA file, made again when the file changes (a renewed bundle)."""
        try:
            stamp = os.stat(ca_file).st_mtime_ns if ca_file else 0
        except OSError as e:
            raise CAFileError(e.errno or 0, "the ca_file cannot be read") from e
        with self._lock:
            context = self._contexts.get((ca_file, stamp))
        if context is None:
            context = ssl.create_default_context(cafile=ca_file)
            with self._lock:
                self._contexts = {k: v for k, v in self._contexts.items() if k[0] != ca_file}
                self._contexts[(ca_file, stamp)] = context
        return context

    def _connect(self, target: Target, deadline: float) -> http.client.HTTPConnection:
        scheme, host, port, ca_file = target.pool_key
        timeout = max(deadline - time.monotonic(), 0.001)
        if scheme == "https":
            return http.client.HTTPSConnection(host, port, timeout=timeout, context=self._context(ca_file))
        return http.client.HTTPConnection(host, port, timeout=timeout)

    def _exchange(self, pool: _Pool, target: Target, headers: list[tuple[str, str]], body: bytes,
                  deadline: float) -> tuple[int, http.client.HTTPMessage, str]:
        """Send on a pooled connection; a reused one the target had closed meanwhile is replaced once
        by a new one (the request never reached the application, or at worst arrives twice: at least once)."""
        for fresh in (False, True):
            conn = pool.take(deadline, fresh)
            reused = conn is not None
            if conn is None:
                try:
                    conn = self._connect(target, deadline)
                except BaseException:
                    pool.release()
                    raise
            try:
                return self._once(pool, conn, target, headers, body, deadline)
            except (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected):
                if not reused or time.monotonic() >= deadline:
                    raise
        raise AssertionError("unreachable: the second try uses a new connection")

    def _once(self, pool: _Pool, conn: http.client.HTTPConnection, target: Target,
              headers: list[tuple[str, str]], body: bytes, deadline: float) -> tuple[int, http.client.HTTPMessage, str]:
        reusable = False
        try:
            if conn.sock is None:
                conn.timeout = _left(deadline)
                conn.connect()
            # The answer may outlive conn.sock (http.client drops it at once for Connection: close).
            sock = conn.sock
            sock.settimeout(_left(deadline))
            conn.putrequest("POST", target.request_target, skip_accept_encoding=True)
            for name, value in headers:
                conn.putheader(name, value)
            conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body)
            sock.settimeout(_left(deadline))
            answer = conn.getresponse()
            tail, drained = _read(sock, answer, deadline)
            reusable = drained and not answer.will_close
            return answer.status, answer.headers, tail
        finally:
            pool.give(conn, reusable)


def _left(deadline: float) -> float:
    """What is left of the forward's timeout, for the next socket wait."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("forward timed out")
    return left


def _read(sock: socket.socket, answer: http.client.HTTPResponse, deadline: float) -> tuple[str, bool]:
    """The tail of the answer's body, and whether it was read to its end (so the connection is reusable)."""
    kept = b""
    total = 0
    while total <= MAX_DRAIN_BYTES:
        sock.settimeout(_left(deadline))
        chunk = answer.read(65536)
        if not chunk:
            return kept.decode("utf-8", "replace"), True
        total += len(chunk)
        kept = (kept + chunk)[-TAIL_BYTES:]
    return kept.decode("utf-8", "replace"), False
