"""HTTP only: framing, size limits, deadlines, and errors mapped to status codes.

Everything about senders lives in providers, everything about routing in router;
this module turns a request into a call of those and a SidecarError into a status.
"""

from __future__ import annotations

import _thread
import io
import json
import os
import re
import socket
import sys
import threading
import time
from collections.abc import Callable
from email.utils import formatdate
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

from . import logs, metrics, router, tls
from .config import Config
from .connections import Connection, Connections, RequestReader, raise_nofile
from .errors import (
    BadRequest,
    LengthRequired,
    MethodNotAllowed,
    PayloadTooLarge,
    RequestTimeout,
    SidecarError,
    Unavailable,
)
from .spool import Delivery, Scheduler

# \Z, not $: "$" also matches before a final newline, and "evt_1\n" is no safe token.
SAFE_TOKEN = re.compile(r"^[A-Za-z0-9._-]{1,128}\Z")
SAFE_DELIVERY = re.compile(r"^[A-Za-z0-9._:-]{1,128}\Z")
HEALTH_PATHS = {"/healthz", "/readyz", "/metrics"}
DIGITS = re.compile(r"[0-9]+")
HTTP_VERSION = re.compile(r"HTTP/([0-9]{1,10})\.([0-9]{1,10})")
# A header line: a token, a colon, a value without CR, LF or NUL (so no obs-fold, no bare CR).
HEADER_LINE = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+:[^\r\n\x00]*\r?\n")
# A whole header block of such lines, each ending in CRLF, then the blank line: what senders send.
HEADER_BLOCK = re.compile(rb"(?:[!#$%&'*+.^_`|~0-9A-Za-z-]+:[^\r\n\x00]*\r\n)*\r\n")
MAX_HEADER_BYTES = 64 * 1024
MAX_HEADER_FIELDS = 99  # http.client refuses more than 100 lines, the blank one included
_BUSY = b'{"error":"too many connections"}'
TOO_MANY_CONNECTIONS = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                        b"Content-Length: %d\r\nRetry-After: 2\r\nX-Request-Id: %%s\r\nConnection: close\r\n"
                        b"\r\n%s" % (len(_BUSY), _BUSY))
_ALIVE = b'{"status":"ok"}'
ALIVE = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
         b"X-Request-Id: %%s\r\nConnection: close\r\n\r\n%s" % (len(_ALIVE), _ALIVE))
LIVENESS = re.compile(rb"GET /healthz(?:\?[^ ]*)? HTTP/1\.[01]\r?\n")
PEEK_S = 0.01  # how long a refused connection may take to show its request line
_dumps = json.JSONEncoder(separators=(",", ":")).encode  # json.dumps builds an encoder per call
_date: tuple[int, str] = (0, "")  # the Date header of the current second


class Headers:
    """A request's header fields by lower-case name, built from lines _read_header_block checked.

    What the handler and providers use of http.client's HTTPMessage (get, get_all, items) with
    the same values: the first field of a name wins in get(), surrounding SP and HTAB are not
    part of a value, bytes are ISO-8859-1. The email parser behind HTTPMessage cost about a
    fifth of a delivery's CPU.
    """

    __slots__ = ("_fields",)

    def __init__(self, lines: list[bytes]) -> None:
        # Each line ends in CRLF and holds no other CR (see _read_header_block): one decode for all
        # of them (names are ASCII, so ISO-8859-1 reads them alike), then plain str work per line.
        fields: dict[str, list[str]] = {}
        for line in b"".join(lines).decode("iso-8859-1").split("\r\n"):
            if not line:
                continue
            name, _, value = line.partition(":")
            key = name.lower()
            found = fields.get(key)
            if found is None:
                fields[key] = [value.strip(" \t")]
            else:
                found.append(value.strip(" \t"))
        self._fields = fields

    def get(self, name: str, default: Any = None) -> Any:
        values = self._fields.get(name.lower())
        return values[0] if values else default

    def get_all(self, name: str, default: Any = None) -> Any:
        values = self._fields.get(name.lower())
        return list(values) if values else default

    def items(self) -> list[tuple[str, str]]:
        return [(name, value) for name, values in self._fields.items() for value in values]


class RequestHeaders(Protocol):
    """What the handler reads of a request's header fields: a Headers, or for a rarer spelling of
    HTTP/1.x the stdlib's message (BaseHTTPRequestHandler.parse_request builds it)."""

    def get(self, name: str, default: Any = None) -> Any: ...
    def get_all(self, name: str, default: Any = None) -> Any: ...


class SidecarServer(ThreadingHTTPServer):
    """ThreadingHTTPServer holding the live routing table and the worker pool."""

    daemon_threads = True
    allow_reuse_address = True
    # The kernel's queue of connections not yet accepted (capped by net.core.somaxconn). When it is
    # full, new SYNs are dropped and a sender's connect() waits a 1 s retransmit: a flood's burst
    # waits here instead, and is accepted (and evicted, if idle) within milliseconds.
    request_queue_size = 1024

    def __init__(self, address: tuple[str, int], config: Config, workers: Scheduler) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self._config = config
        self.workers = workers
        self.draining = False
        self._deadlines: dict[Handler, float] = {}
        self._deadline_lock = threading.Lock()
        self.connections = Connections()  # admitted connections, each with a handler thread
        raise_nofile(_descriptors(config))
        # HTTPS when the config has `tls`: the context of each new connection, renewed when the files change.
        self.tls = tls.Certificates(config.tls) if config.tls else None
        super().__init__(address, Handler)
        threading.Thread(target=self._reap, name="deadlines", daemon=True).start()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """socketserver prints tracebacks to stderr; keep to one JSON line, quiet for dropped peers."""
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
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
        answer, alive = TOO_MANY_CONNECTIONS, False
        try:
            request.settimeout(PEEK_S)
            try:
                head = request.recv(65536)  # also drains: a close with unread data would reset the answer
            except TimeoutError:
                head = b""
            alive = LIVENESS.match(head) is not None
            answer = ALIVE if alive else TOO_MANY_CONNECTIONS
            request.setblocking(False)
            if self.tls is None:  # to a TLS client, plain text is a broken record: the close alone says it
                request.send(answer % request_id.encode())
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
        """The table a new request starts on; swapping it is one reference assignment."""
        return self._config

    def swap(self, config: Config) -> None:
        raise_nofile(_descriptors(config))  # max_connections may have grown
        self.tls = tls.follow(self.tls, config.tls)
        self._config = config

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
    def set_deadline(self, handler: Handler, seconds: float | None) -> None:
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


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "webhook-sidecar"
    sys_version = ""
    # Headers and body are one write (see _respond), and no Nagle delay either.
    disable_nagle_algorithm = True
    server: SidecarServer
    request_headers: RequestHeaders  # set by parse_request: the stdlib's `headers` would be an email Message

    def setup(self) -> None:
        self.conn: Connection = self.server.connections.get(self.request)
        certificates = self.server.tls
        if certificates is not None:  # here, in the connection's thread: a slow client never holds up accept
            self.request = tls.accept(certificates.context, self.request, self.server.config.request_timeout_s,
                                      self.client_address[0])
        super().setup()
        # Above the deadline, so that the reaper (not a recv timeout) ends a slow request.
        self.connection.settimeout(self.server.config.request_timeout_s + 1.0)
        self.expired = False
        # The same buffering as makefile("rb"), over a reader that tells idle from reading.
        self.rfile.close()
        self.reader = RequestReader(self.connection, self.server.connections, self.conn)
        self.rfile = self.buffered = io.BufferedReader(self.reader)  # typed: rfile's type has no peek()

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
        self.request_id = os.urandom(16).hex()  # 32 hex digits, as uuid4().hex without its object
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

    # --- dispatch -------------------------------------------------------------
    def do_POST(self) -> None:
        self._handle(self._post)

    def do_GET(self) -> None:
        self._handle(self._get)

    def do_other(self) -> None:
        self._handle(self._other)

    do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = do_other

    def _handle(self, work: Callable[[Config], tuple[HTTPStatus, Any, str]]) -> None:
        rid = self.request_headers.get("X-Request-Id", "")
        self.request_id = rid if SAFE_TOKEN.match(rid) else self.request_id
        config = self.server.config  # one read: this request finishes on this table
        if self.request_headers.get("Content-Length") is None and self.request_headers.get("Transfer-Encoding") is None:
            self.server.connections.handling(self.conn)  # complete: no body to come (else see _read_body)
        extra: dict[str, str] = {}
        msg, level = "request", logs.info
        try:
            status, body, msg = work(config)
            ctype = "application/json"
            if isinstance(body, tuple):
                body, ctype = body
        except SidecarError as e:
            status, body, extra = e.status, {"error": str(e)}, dict(e.headers)
            ctype = "application/json"
            unauthorized = status == HTTPStatus.UNAUTHORIZED
            msg, level = ("delivery.rejected" if unauthorized else "request.rejected"), logs.warning
            self.fields["reason"] = e.reason
            if status not in (HTTPStatus.UNAUTHORIZED,):
                self.fields["error"] = str(e)
        except Exception:
            status, body, ctype = HTTPStatus.INTERNAL_SERVER_ERROR, {"error": "internal error"}, "application/json"
            msg, level = "request.failed", logs.error
            logs.error("request.exception", exc_info=True, request_id=self.request_id)
        if (self.path in HEALTH_PATHS and status == HTTPStatus.OK) or (
                status == HTTPStatus.SERVICE_UNAVAILABLE and self.conn.evicted):
            # Probes every few seconds would drown the real events; evictions are logged in aggregate.
            level = logs.debug
        if not self.body_read:
            # The body was not consumed, so the connection cannot carry another request.
            self.close_connection = True
        self._respond(status, body, ctype, extra)
        self._count(status, msg)
        level(msg, request_id=self.request_id, remote=self.client_address[0], method=self.command or None,
              path=self.path[:256], status=int(status), duration_ms=round((time.monotonic() - self.started) * 1000, 2),
              **self.fields)

    def _count(self, status: HTTPStatus, msg: str) -> None:
        path = self.path.split("?", 1)[0]
        endpoint = self.fields.get("endpoint") or (path if path in HEALTH_PATHS else "other")
        metrics.child(metrics.REQUESTS, endpoint, str(int(status))).inc()
        if status == HTTPStatus.UNAUTHORIZED:
            metrics.child(metrics.VERIFICATION_FAILURES, self.fields.get("provider", ""),
                          self.fields.get("reason", "")).inc()
        elif msg.startswith("delivery."):
            metrics.child(metrics.DELIVERIES, endpoint, msg.split(".", 1)[1]).inc()

    def _respond(self, status: HTTPStatus, body: Any, ctype: str, headers: dict[str, str]) -> None:
        data = body if isinstance(body, bytes) else _dumps(body).encode()
        code = int(status)
        # What send_response and these send_header calls would buffer, formatted in one go.
        if not hasattr(self, "_headers_buffer"):
            self._headers_buffer = []
        self._headers_buffer.append(
            f"{self.protocol_version} {code} {self.responses[code][0] if code in self.responses else ''}\r\n"
            f"Server: {self.version_string()}\r\nDate: {self.date_time_string()}\r\n"
            f"Content-Type: {ctype}\r\nContent-Length: {len(data)}\r\nX-Request-Id: {self.request_id}\r\n"
            .encode("latin-1", "strict"))
        for name, value in headers.items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        # One write for headers and body: end_headers() would flush the headers
        # alone and leave the body to a second segment.
        self._headers_buffer.append(b"\r\n" + (data if self.command != "HEAD" else b""))
        self.flush_headers()

    # --- routes ---------------------------------------------------------------
    def _get(self, config: Config) -> tuple[HTTPStatus, Any, str]:
        path = self.path.split("?", 1)[0]
        headers = self.request_headers
        self.body_read = not headers.get("Content-Length") and not headers.get("Transfer-Encoding")
        if path == "/healthz":
            return HTTPStatus.OK, {"status": "ok"}, "health"
        if path == "/metrics":
            data, ctype = metrics.exposition()
            return HTTPStatus.OK, (data, ctype), "health"
        if path == "/readyz":
            ready, why = self.server.is_ready
            if not ready:
                raise Unavailable(f"not ready: {why}")
            return HTTPStatus.OK, {"status": "ready", "config": config.digest}, "health"
        router.endpoint_for(config, path)
        raise MethodNotAllowed("POST")

    def _other(self, config: Config) -> tuple[HTTPStatus, Any, str]:
        path = self.path.split("?", 1)[0]
        if path in HEALTH_PATHS:
            raise MethodNotAllowed("GET")
        router.endpoint_for(config, path)
        raise MethodNotAllowed("POST")

    def _post(self, config: Config) -> tuple[HTTPStatus, Any, str]:
        path = self.path.split("?", 1)[0]
        if path in HEALTH_PATHS:
            raise MethodNotAllowed("GET")
        endpoint = router.endpoint_for(config, path)
        provider = endpoint.provider
        self.fields.update(endpoint=endpoint.path, provider=provider.name)
        length = self._content_length(config.max_body_bytes)
        if self.server.draining:
            raise Unavailable("shutting down")
        body = self._read_body(length)
        self.server.set_deadline(self, None)
        self.fields["bytes"] = len(body)

        # Signature first, on the raw bytes; nothing is parsed before it holds.
        provider.verify(self.request_headers, body, endpoint.secrets, time.time(), target=self.path)
        payload = provider.parse(self.request_headers, body)
        event = provider.event(self.request_headers, payload)
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in event):
            raise BadRequest("event type holds control characters", reason="invalid_event")
        given = provider.delivery(self.request_headers, payload)
        delivery = given if isinstance(given, str) and SAFE_DELIVERY.match(given) else os.urandom(16).hex()
        self.fields.update(event=event, delivery=delivery)

        reply = provider.reply(event, payload)
        if reply is not None:
            return HTTPStatus.OK, (reply.body, reply.content_type), "delivery.answered"
        routes = router.match(endpoint, event, payload)
        if not routes:
            return HTTPStatus.OK, {"status": "ignored", "delivery": delivery}, "delivery.ignored"
        accepted = self.server.workers.submit(
            Delivery(endpoint=endpoint.path, delivery=delivery, provider=provider.name, event=event,
                     request_id=self.request_id, cwd=str(config.base_dir), body=body), routes)
        if accepted.status == "duplicate":
            return HTTPStatus.OK, {"status": "duplicate", "delivery": delivery}, "delivery.duplicate"
        names = list(accepted.routes)
        self.fields["routes"] = names
        return HTTPStatus.OK, {"status": "accepted", "delivery": delivery, "routes": names}, "delivery.accepted"

    # --- framing --------------------------------------------------------------
    def _content_length(self, limit: int) -> int:
        if self.request_headers.get("Transfer-Encoding") is not None:
            raise LengthRequired("chunked or other transfer codings are not accepted; send Content-Length")
        values = self.request_headers.get_all("Content-Length") or []
        if not values:
            raise LengthRequired("Content-Length required")
        given = {v.strip(" \t") for v in values}
        # ASCII digits only: str.isdigit() takes '\u00b2', which int() refuses. A length of more
        # than 18 digits is too large without int() (which refuses more than 4300 of them).
        if len(given) != 1 or not DIGITS.fullmatch(value := given.pop()):
            raise BadRequest("invalid Content-Length", reason="bad_length")
        digits = value.lstrip("0") or "0"
        length = int(digits) if len(digits) <= 18 else limit + 1
        if length > limit:
            raise PayloadTooLarge(f"body larger than {limit} bytes", reason="too_large")
        return length

    def _read_body(self, length: int) -> bytes:
        if self.expects_continue and length:
            # Only now, with path, method, length and state checked: a 404, 411, 413 or 503
            # goes out instead, and the client never sends a body it would be refused for.
            self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
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
        return body

    # --- stdlib hooks -----------------------------------------------------------
    def parse_request(self) -> bool:
        """The stdlib parser behind stricter framing.

        HTTP/0.9 is refused (a bare `GET /` would get an answer without status line). The header
        block is read here first: at most 64 KiB and 99 fields, each line `name: value` without
        obs-fold; a bare CR or NUL becomes a space (the email parser behind http.client splits lines
        at a bare CR, and silently drops every header after a line it cannot parse). A request line
        or header block cut short by the deadline is 408, never handled with the headers so far.
        """
        self.reader.arrived()  # a pipelined request line comes from the buffer, not the socket
        raw = self.raw_requestline
        words = str(raw, "iso-8859-1").rstrip("\r\n").split()
        self.command, self.request_version = (words[0] if words else ""), self.protocol_version
        if not raw.endswith(b"\n"):
            self._incomplete()
            return False
        version = HTTP_VERSION.fullmatch(words[2]) if len(words) == 3 else None
        if (len(words) == 2 and words[0] == "GET") or (version and int(version[1]) < 1):
            self.send_error(HTTPStatus.HTTP_VERSION_NOT_SUPPORTED, "HTTP/0.9 is not supported")
            return False
        if not version or int(version[1]) >= 2:
            return super().parse_request()  # 400 or 505 from the request line alone, no header read
        lines = self._read_header_block()
        if lines is None:
            return False
        if words[2] in ("HTTP/1.1", "HTTP/1.0"):
            return self._parse_head(words, Headers(lines))
        # A rarer spelling of 1.x (HTTP/1.01): the stdlib's rules, on the checked header block.
        stream, self.rfile = self.rfile, io.BytesIO(b"".join(lines) + b"\r\n")
        try:
            parsed = super().parse_request()
        finally:
            self.rfile = stream
        self.request_headers = self.headers
        return parsed

    def _parse_head(self, words: list[str], headers: Headers) -> bool:
        """What BaseHTTPRequestHandler.parse_request does for HTTP/1.0 and 1.1, without the email parser."""
        self.command, self.path, self.request_version = words
        self.requestline = " ".join(words)
        if self.path.startswith("//"):
            self.path = "/" + self.path.lstrip("/")  # as the stdlib does (gh-87389)
        self.request_headers = headers
        self.close_connection = self.request_version != "HTTP/1.1"
        connection = headers.get("Connection", "").lower()
        if connection == "close":
            self.close_connection = True
        elif connection == "keep-alive":
            self.close_connection = False
        if self.request_version == "HTTP/1.1" and headers.get("Expect", "").lower() == "100-continue":
            return self.handle_expect_100()
        return True

    def date_time_string(self, timestamp: float | None = None) -> str:
        """The stdlib's, formatted once a second rather than per response."""
        global _date
        if timestamp is not None:
            return super().date_time_string(timestamp)
        now = int(time.time())
        if _date[0] != now:
            _date = (now, formatdate(now, usegmt=True))
        return _date[1]

    def _read_header_block(self) -> list[bytes] | None:
        """The header lines up to the blank one, each ending in CRLF, or None once an error is answered."""
        # Fast path: the whole block already buffered (a request's head comes in one segment) and
        # every line a plain `name: value` CRLF line: one match, one read. Anything else (a bare LF,
        # CR or NUL, obs-fold, a block not yet all in) goes line by line below, with its limits.
        try:
            buffered = self.buffered.peek(MAX_HEADER_BYTES)
        except TimeoutError:  # the socket timeout fired before the reaper did
            self.expired = True
            self._incomplete()
            return None
        end = buffered.find(b"\r\n\r\n", 0, MAX_HEADER_BYTES) + 4
        if end > 3 and HEADER_BLOCK.fullmatch(buffered, 0, end):
            lines = self.rfile.read(end).split(b"\r\n")[:-2]
            if len(lines) > MAX_HEADER_FIELDS:
                self.send_error(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
                                f"more than {MAX_HEADER_FIELDS} header fields")
                return None
            # A field value has no trailing whitespace (RFC 9110 5.5), as below.
            return [line.rstrip(b" \t") + b"\r\n" for line in lines]
        return self._read_header_lines()

    def _read_header_lines(self) -> list[bytes] | None:
        lines: list[bytes] = []
        size = 0
        while True:
            try:
                line = self.rfile.readline(MAX_HEADER_BYTES + 1)
            except TimeoutError:
                self.expired, line = True, b""
            size += len(line)
            if size > MAX_HEADER_BYTES:
                self.send_error(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
                                f"header block larger than {MAX_HEADER_BYTES} bytes")
                return None
            if not line.endswith(b"\n"):
                self._incomplete()
                return None
            if line in (b"\r\n", b"\n"):
                return lines
            if len(lines) == MAX_HEADER_FIELDS:
                self.send_error(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
                                f"more than {MAX_HEADER_FIELDS} header fields")
                return None
            if not HEADER_LINE.fullmatch(line):
                # A NUL or a bare CR becomes SP (RFC 9110 5.5, RFC 9112 2.2); anything else is refused.
                line = line.rstrip(b"\r\n").replace(b"\r", b" ").replace(b"\x00", b" ") + b"\r\n"
                if not HEADER_LINE.fullmatch(line):
                    self.send_error(HTTPStatus.BAD_REQUEST, "malformed header line")
                    return None
            # A field value has no trailing whitespace (RFC 9110 5.5): "push " is the event "push".
            lines.append(line.rstrip(b"\r\n").rstrip(b" \t") + b"\r\n")

    def handle_expect_100(self) -> bool:
        """The stdlib answers 100 Continue while parsing headers; _read_body does it when it reads."""
        self.expects_continue = True
        return True

    def _incomplete(self) -> None:
        if self.expired:
            self.send_error(HTTPStatus.REQUEST_TIMEOUT, "request not complete within the deadline")
        elif self.conn.evicted:
            # Closed to make room: the sender should retry. No log line per socket (see connections.report).
            self.close_connection = True
            try:
                self.wfile.write(TOO_MANY_CONNECTIONS % self.request_id.encode())
            except OSError:
                pass
        else:
            self.send_error(HTTPStatus.BAD_REQUEST, "connection closed inside the request head")

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Errors raised by the stdlib parser (bad request line, huge headers): small JSON too."""
        self.close_connection = True
        # Until the request line's version is parsed, the stdlib's default is
        # HTTP/0.9, for which send_response writes neither status line nor headers.
        if self.request_version == "HTTP/0.9":
            self.request_version = self.protocol_version
        status = HTTPStatus(code)
        timeout = status == HTTPStatus.REQUEST_TIMEOUT
        reason = "timeout" if timeout else "malformed_request"
        self.fields = {"reason": reason, "error": message or status.phrase}
        body = json.dumps({"error": (message or status.phrase)[:200]}).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("X-Request-Id", self.request_id)
            self.send_header("Connection", "close")
            self._headers_buffer.append(b"\r\n" + (body if self.command != "HEAD" else b""))
            self.flush_headers()
        except OSError:
            pass
        logs.warning("request.timeout" if timeout else "request.rejected", request_id=self.request_id,
                     remote=self.client_address[0], status=int(status), reason=reason,
                     error=(message or status.phrase)[:200])

    def version_string(self) -> str:
        return self.server_version

    def log_message(self, format: str, *args: Any) -> None:
        logs.debug("http", detail=(format % args)[:300], remote=self.client_address[0])

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass  # every request gets one JSON line from _handle instead
