"""The application: what each path and method does, one JSON log line and the metrics per request.

Framing and its limits live in http11, admission, deadlines and the response writer in admission,
a delivery's verify -> parse -> event -> id -> match -> submit in intake (no HTTP types there);
senders live in providers, routing in router. A SidecarError becomes its status here.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from http import HTTPStatus

from . import intake, logs, metrics, router
from .admission import AdmittedHandler, Listener
from .config import Config, Endpoint
from .errors import MethodNotAllowed, RouteNotFound, SidecarError, Unavailable
from .http11 import content_length
from .intake import Outcome
from .live import Live
from .spool import Scheduler

# \Z, not $: "$" also matches before a final newline, and "evt_1\n" is no safe token.
SAFE_TOKEN = re.compile(r"^[A-Za-z0-9._-]{1,128}\Z")
HEALTH_PATHS = {"/healthz", "/readyz", "/metrics"}
LEVELS = {"request.failed": logs.error, "request.rejected": logs.warning, "delivery.rejected": logs.warning,
          "admin.unauthorized": logs.warning}


class Handler(AdmittedHandler):
    """Dispatch by method and path; every request ends in _handle's one answer and one log line."""

    server: SidecarServer

    def do_POST(self) -> None:
        self._handle(self._post)

    def do_GET(self) -> None:
        self._handle(self._get)

    def do_other(self) -> None:
        self._handle(self._other)

    do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = do_other

    def _handle(self, work: Callable[[Config], Outcome]) -> None:
        rid = self.request_headers.get("X-Request-Id", "")
        self.request_id = rid if SAFE_TOKEN.match(rid) else self.request_id
        config = self.server.config  # one read: this request finishes on this table
        if self.request_headers.get("Content-Length") is None and self.request_headers.get("Transfer-Encoding") is None:
            self.server.connections.handling(self.conn)  # complete: no body to come (else see read_body)
        try:
            outcome = work(config)
        except SidecarError as e:
            outcome = intake.refused(e)
        except Exception:
            outcome = intake.failed(self.request_id)
        self.fields.update(outcome.fields)
        status, msg, level = outcome.status, outcome.msg, LEVELS.get(outcome.msg, logs.info)
        if (self.path in HEALTH_PATHS and status == HTTPStatus.OK) or (
                status == HTTPStatus.SERVICE_UNAVAILABLE and self.conn.evicted):
            # Probes every few seconds would drown the real events; evictions are logged in aggregate.
            level = logs.debug
        if not self.body_read:
            # The body was not consumed, so the connection cannot carry another request.
            self.close_connection = True
        self.respond(status, outcome.body, outcome.content_type, outcome.headers)
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

    def _get(self, config: Config) -> Outcome:
        path = self.path.split("?", 1)[0]
        headers = self.request_headers
        self.body_read = not headers.get("Content-Length") and not headers.get("Transfer-Encoding")
        if path == "/healthz":
            return intake.answer(HTTPStatus.OK, {"status": "ok"}, "health")
        if path == "/metrics":
            if not self.server.metrics_here:
                raise RouteNotFound("/metrics is served on the admin listener")
            data, ctype = metrics.exposition()
            return Outcome(HTTPStatus.OK, data, "health", content_type=ctype)
        if path == "/readyz":
            ready, why = self.server.is_ready
            if not ready:
                raise Unavailable(f"not ready: {why}")
            return intake.answer(HTTPStatus.OK, {"status": "ready", "config": config.digest}, "health")
        return self._other(config)

    def _other(self, config: Config) -> Outcome:
        """An endpoint takes POST only (and a CloudEvents endpoint the OPTIONS handshake, which precedes any
        credential); elsewhere, see _endpoint."""
        endpoint = self._endpoint(config)
        handshake = getattr(endpoint.provider, "handshake", None)
        if self.command == "OPTIONS" and callable(handshake):
            self.fields.update(endpoint=endpoint.path, provider=endpoint.provider.name)
            answer = handshake(self.request_headers)
            return Outcome(answer.status, b"", "delivery.answered", content_type="text/plain",
                           headers=dict(answer.headers))
        raise MethodNotAllowed("POST")

    def _endpoint(self, config: Config) -> Endpoint:
        """The endpoint at this path; a health path takes GET only (405), any other path is a 404."""
        path = self.path.split("?", 1)[0]
        if path in HEALTH_PATHS:
            raise MethodNotAllowed("GET")
        return router.endpoint_for(config, path)

    def _post(self, config: Config) -> Outcome:
        """Path, length and state checked before the body is read (and before 100 Continue); then the intake."""
        endpoint = self._endpoint(config)
        self.fields.update(endpoint=endpoint.path, provider=endpoint.provider.name)
        length = content_length(self.request_headers, config.max_body_bytes)
        if self.server.draining:
            raise Unavailable("shutting down")
        body = self.read_body(length)
        return intake.receive(self.command, self.path, self.request_headers, body, self.request_id, config,
                              self.server.workers)


class SidecarServer(Listener):
    """The listener (admission, live table, deadlines) serving this application's Handler."""

    metrics_here = True  # False when an admin listener serves /metrics (see admin.py)

    def __init__(self, address: tuple[str, int], live: Live, workers: Scheduler) -> None:
        super().__init__(address, live, workers, Handler)

