"""Admission, deadlines and the one response writer.

The listener admits a connection within the connection caps (or answers 503 from the accept
thread), reads the table a new request starts on from the live table, and ends any request not in by its deadline.
Every answer, a delivery's, a parser's error or a refusal, is written by `response`.
"""

from __future__ import annotations

import _thread
import io
import json
import os
import random
import re
import socket
import struct
import sys
import threading
import time
from collections.abc import Mapping
from email.utils import formatdate
from http import HTTPStatus
from http.server import ThreadingHTTPServer
from typing import Any

from . import logs, metrics, tls
from .config import Config
from .connections import Connection, Connections, RequestReader, raise_nofile
from .errors import BadRequest, RequestTimeout, Unavailable
from .http11 import Http11
from .live import Live
from .spool import Scheduler

SERVER = "webhook-sidecar"
BUSY = b'{"error":"too many connections"}'
LIVENESS = re.compile(rb"GET /healthz(?:\?[^ ]*)? HTTP/1\.[01]\r?\n")
PEEK_S = 0.01  # how long a refused connection may take to show its request line
_date: tuple[int, str] = (0, "")  # the Date header of the current second


def http_date() -> str:
    """The Date header's value, formatted once a second rather than per response."""
    global _date
    now = int(time.time())
    if _date[0] != now:
        _date = (now, formatdate(now, usegmt=True))
    return _date[1]


def response(status: HTTPStatus, body: bytes, request_id: str, content_type: str = "application/json",
             headers: Mapping[str, str] | None = None, close: bool = False, head: bool = False) -> bytes:
    """The one response writer: status line, headers and body as one buffer, for one write."""
    text = f"HTTP/1.1 {int(status)} {status.phrase}\r\nServer: {SERVER}\r\nDate: {http_date()}\r\n"
    if status != HTTPStatus.NO_CONTENT:  # RFC 9110 8.6: a 204 carries neither (Discord's webhook events)
        text += f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
    text += f"X-Request-Id: {request_id}\r\n"
    if headers:
        text += "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    if close:
        text += "Connection: close\r\n"
    return (text + "\r\n").encode("latin-1", "strict") + (b"" if head else body)


def too_many(request_id: str) -> bytes:
    """The answer to a connection beyond the caps, or one closed to make room: retry soon."""
    return response(HTTPStatus.SERVICE_UNAVAILABLE, BUSY, request_id, headers={"Retry-After": "2"}, close=True)


class Listener(ThreadingHTTPServer):
    """The listening socket with its connection caps, the live table and the request deadlines."""

    daemon_threads = True
    allow_reuse_address = True
    # The kernel's queue of connections not yet accepted (capped by net.core.somaxconn). When it is
    # full, new SYNs are dropped and a sender's connect() waits a 1 s retransmit: a flood's burst
    # waits here instead, and is accepted (and evicted, if idle) within milliseconds.
    request_queue_size = 1024

    def __init__(self, address: tuple[str, int], live: Live, workers: Scheduler,
                 handler: type[AdmittedHandler]) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.live = live
        config = live.current
        self.workers = workers
        self.draining = False
        self._deadlines: dict[AdmittedHandler, float] = {}
        self._deadline_lock = threading.Lock()
        self.connections = Connections()  # admitted connections, each with a handler thread
        raise_nofile(_descriptors(config))
        # HTTPS when the config has `tls`: the context of each new connection, renewed when the files change.
        self.tls = tls.Certificates(config.tls) if config.tls else None
        super().__init__(address, handler)
        live.subscribe("limits", self._follow)
        threading.Thread(target=self._reap, name="deadlines", daemon=True).start()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """socketserver prints tracebacks to stderr; keep to one JSON line, quiet for dropped peers."""
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError, BlockingIOError)):  # BlockingIOError: SO_SNDTIMEO
            logs.debug("connection.dropped", remote=client_address[0], error=type(exc).__name__)
        else:
            logs.error("connection.failed", exc_info=True, remote=client_address[0])

    # The connection caps. ThreadingHTTPServer starts a thread per connection, without
    # bound; at max_connections (or max_connections_per_client from one address) an idle
    # or slow connection is closed to make room (see connections.py). When every one is
    # handling a complete request, the accept thread itself answers 503 with one
    # non-blocking send and closes, so idle or slow sockets cannot pile up threads.
    def process_request(self, request: Any, client_address: Any) -> None:
        config = self.config
        admitted = self.connections.admit(request, client_address[0], config.max_connections,
                                          config.max_connections_per_client)
        if isinstance(admitted, str):
            self._refuse(request, client_address, admitted)
            return
        # _thread, not threading.Thread: Thread.start() waits until the new thread has run, so under
        # load every accept would wait for the scheduler and the GIL twice, and a flood of connections
        # would queue up in the kernel in front of a sender's. (Daemon-like: never joined at exit.)
        _thread.start_new_thread(self.process_request_thread, (request, client_address))

    def shutdown_request(self, request: Any) -> None:
        # Forget the connection before its descriptor is closed and the number can be reused.
        self.connections.release(request)
        super().shutdown_request(request)

    def _refuse(self, request: socket.socket, client_address: Any, limit: str = "max_connections") -> None:
        """Answer beyond the cap from the accept thread: 503, except a liveness probe.

        A liveness probe still gets 200, so that a flood of idle sockets makes the pod unready
        (/readyz gets the 503) without the kubelet restarting it. The accept thread waits at most
        PEEK_S for a request line and reads only what already came.
        """
        request_id = os.urandom(16).hex()
        alive = False
        try:
            request.settimeout(PEEK_S)
            try:
                head = request.recv(65536)  # also drains: a close with unread data would reset the answer
            except TimeoutError:
                head = b""
            alive = LIVENESS.match(head) is not None
            request.setblocking(False)
            if self.tls is None:  # to a TLS client, plain text is a broken record: the close alone says it
                request.send(response(HTTPStatus.OK, b'{"status":"ok"}', request_id, close=True) if alive
                             else too_many(request_id))
        except OSError:
            pass
        self.shutdown_request(request)
        if alive:
            logs.debug("request", request_id=request_id, remote=client_address[0], method="GET", path="/healthz",
                       status=200, reason="max_connections")
            metrics.REQUESTS.labels("/healthz", "200").inc()
            return
        logs.warning("connection.refused", request_id=request_id, remote=client_address[0], status=503,
                     reason=limit, limit=getattr(self.config, limit))

    @property
    def config(self) -> Config:
        """The table a new request starts on (the live table's)."""
        return self.live.current

    def _follow(self, _old: Config, new: Config) -> None:
        """The live table's "limits" stage: ready for the new table before a request starts on it."""
        raise_nofile(_descriptors(new))  # max_connections may have grown
        self.tls = tls.follow(self.tls, new.tls)

    @property
    def is_ready(self) -> tuple[bool, str]:
        if self.draining:
            return False, "draining"
        problem = self.workers.health()
        if problem:
            return False, problem
        return True, "ok"

    # Whole-request deadlines. A socket timeout only bounds one recv, so a client
    # trickling a byte a second would hold its thread forever; the reaper shuts
    # down the read side of any connection whose request is not in by its deadline.
    def set_deadline(self, handler: AdmittedHandler, seconds: float | None) -> None:
        with self._deadline_lock:
            if seconds is None:
                self._deadlines.pop(handler, None)
            else:
                self._deadlines[handler] = time.monotonic() + seconds

    def _reap(self) -> None:
        while True:
            time.sleep(0.2)
            self.connections.report()
            now = time.monotonic()
            with self._deadline_lock:
                late = [h for h, t in self._deadlines.items() if t <= now]
                for h in late:
                    del self._deadlines[h]
            for h in late:
                h.expire()


def _descriptors(config: Config) -> int:
    """Connections, those closing, and the spool's; with TLS, each connection's TLS socket holds a second one."""
    return (3 if config.tls else 2) * config.max_connections + 128


class AdmittedHandler(Http11):
    """One admitted connection's requests: TLS, the deadline of each request, its body and its answer."""

    server: Listener

    def setup(self) -> None:
        self.conn: Connection = self.server.connections.get(self.request)
        certificates = self.server.tls
        if certificates is not None:  # here, in the connection's thread: a slow client never holds up accept
            self.request = tls.accept(certificates.context, self.request, self.server.config.request_timeout_s,
                                      self.client_address[0])
        super().setup()
        # Above the deadline, so that the reaper (not a recv timeout) ends a slow request.
        timeout = self.server.config.request_timeout_s + 1.0
        if certificates is None:
            # A blocking socket with the kernel's timeouts: a Python socket timeout polls before
            # every recv and send, a syscall and a GIL hand-off each (RequestReader turns a recv's
            # EAGAIN into TimeoutError; a send's ends the connection, see handle_error).
            self.connection.settimeout(None)
            interval = struct.pack("ll", int(timeout), int(timeout % 1 * 1e6))
            for option in (socket.SO_RCVTIMEO, socket.SO_SNDTIMEO):
                self.connection.setsockopt(socket.SOL_SOCKET, option, interval)
        else:
            self.connection.settimeout(timeout)
        self.expired = False
        # The same buffering as makefile("rb"), over a reader that tells idle from reading.
        self.rfile.close()
        self.reader = RequestReader(self.connection, self.server.connections, self.conn)
        self.rfile = self.buffered = io.BufferedReader(self.reader)

    def finish(self) -> None:
        self.server.set_deadline(self, None)
        try:
            super().finish()
        finally:
            if self.request is not self.conn.sock:
                self.request.close()  # the TLS socket's own descriptor; the server closes the raw one

    def expire(self) -> None:
        """Called by the reaper: the request missed its deadline; unblock the read."""
        self.expired = True
        try:
            # The raw socket: with TLS, the SSLSocket's shutdown() would drop its TLS state, and the
            # 408 that follows would go out in plain text.
            self.conn.sock.shutdown(socket.SHUT_RD)
        except OSError:
            pass

    def handle_one_request(self) -> None:
        # The deadline covers waiting for the request line, headers and body.
        self.server.set_deadline(self, self.server.config.request_timeout_s)
        # 32 hex digits, as uuid4().hex, without a getrandom() syscall per request: not a secret.
        self.request_id = f"{random.getrandbits(128):032x}"
        self.started = time.monotonic()
        self.fields: dict[str, Any] = {}
        self.body_read = False
        self.expects_continue = False
        self.raw_requestline = b""
        self.reader.await_request()
        super().handle_one_request()
        if self.conn.evicted:
            self.close_connection = True  # it made room for another; this request still got its answer
        if self.expired:
            self.close_connection = True
            if not self.raw_requestline:  # an idle keep-alive connection, not a request
                logs.debug("connection.idle", remote=self.client_address[0])

    def parse_request(self) -> bool:
        self.reader.arrived()  # a pipelined request line comes from the buffer, not the socket
        return super().parse_request()

    def read_body(self, length: int) -> bytes:
        """The body, whole, within the request's deadline; the deadline ends with it."""
        self.send_continue(length)
        try:
            body = self.rfile.read(length) if length else b""
        except TimeoutError:  # the socket timeout fired before the reaper did
            body, self.expired = b"", True
        if len(body) != length:
            self.close_connection = True
            if self.expired:
                raise RequestTimeout("request not complete within the deadline", reason="timeout")
            if self.conn.evicted:
                raise Unavailable("too many connections", retry_after=2)
            raise BadRequest("body shorter than Content-Length", reason="short_body")
        self.body_read = True
        self.server.connections.handling(self.conn)
        self.server.set_deadline(self, None)
        return body

    def respond(self, status: HTTPStatus, body: bytes, content_type: str = "application/json",
                headers: Mapping[str, str] | None = None) -> None:
        self.wfile.write(response(status, body, self.request_id, content_type, headers,
                                  close=self.close_connection, head=self.command == "HEAD"))

    def incomplete(self) -> None:
        if not self.expired and self.conn.evicted:
            # Closed to make room: the sender should retry. No log line per socket (see connections.report).
            self.close_connection = True
            try:
                self.wfile.write(too_many(self.request_id))
            except OSError:
                pass
        else:
            super().incomplete()

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Errors raised by the parser (bad request line, huge headers): small JSON too, and the connection closed."""
        self.close_connection = True
        status = HTTPStatus(code)
        timeout = status == HTTPStatus.REQUEST_TIMEOUT
        reason = "timeout" if timeout else "malformed_request"
        self.fields = {"reason": reason, "error": message or status.phrase}
        body = json.dumps({"error": (message or status.phrase)[:200]}).encode()
        try:
            self.respond(status, body)
        except OSError:
            pass
        logs.warning("request.timeout" if timeout else "request.rejected", request_id=self.request_id,
                     remote=self.client_address[0], status=int(status), reason=reason,
                     error=(message or status.phrase)[:200])
