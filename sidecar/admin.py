"""The admin listener (`admin: {listen, token_env | token_file}`): /metrics, /healthz and /readyz with no
token, and /admin/* behind `Authorization: Bearer <token>`: the spool's history, replay and retry.

The same framing, connection caps and request deadlines as the webhook listener (admission.py), and
the same one log line per request: a write's line is its audit record (`admin.replayed`,
`admin.retried`, with `remote` and `request_id`). Paths (ids are the spool's own):
  GET  /admin/deliveries?state=&endpoint=&route=&event=&limit=&before=
  GET  /admin/deliveries/{id}[?body=1]
  POST /admin/deliveries/{id}/replay
  POST /admin/jobs/{id}/retry
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable
from http import HTTPStatus

from . import admin_api, admin_replay, intake, metrics
from .admin_replay import Conflict, NotFound
from .admission import Listener
from .config import Config, Endpoint
from .errors import BadRequest, MethodNotAllowed, RouteNotFound, SignatureError, Unavailable
from .http11 import content_length
from .intake import Outcome
from .live import Live
from .server import HEALTH_PATHS, Handler, SidecarServer
from .spool import Scheduler, histories
from .spool.history import History

ID = r"([0-9]{1,18})"
MAX_ADMIN_BODY = 65536  # a POST's body is not used; one this size is read and dropped


class Unauthorized(SignatureError):
    """No bearer token, or not the admin token."""


class AdminHandler(Handler):
    """/admin/* dispatch; health and metrics as on the webhook listener; no webhook endpoint here."""

    server: AdminServer

    def _routes(self) -> list[tuple[re.Pattern[str], str, Callable[[re.Match[str], str, Config], Outcome]]]:
        return [(re.compile(r"/admin/deliveries"), "GET", self._list),
                (re.compile(rf"/admin/deliveries/{ID}"), "GET", self._detail),
                (re.compile(rf"/admin/deliveries/{ID}/replay"), "POST", self._replay),
                (re.compile(rf"/admin/jobs/{ID}/retry"), "POST", self._retry)]

    def _get(self, config: Config) -> Outcome:
        if not self._is_admin():
            return super()._get(config)  # /healthz, /readyz, /metrics; else _other: 404
        return self._admin(config)

    def _post(self, config: Config) -> Outcome:
        if not self._is_admin():
            self._endpoint(config)  # 405 on a health path, else 404
        return self._admin(config)

    def _other(self, config: Config) -> Outcome:
        if self._is_admin():
            return self._admin(config)
        self._endpoint(config)
        raise AssertionError("unreachable")

    def _endpoint(self, config: Config) -> Endpoint:
        if self.path.split("?", 1)[0] in HEALTH_PATHS:
            raise MethodNotAllowed("GET")
        raise RouteNotFound("not found (webhook endpoints are on the webhook port)")

    def _is_admin(self) -> bool:
        path = self.path.split("?", 1)[0]
        return path == "/admin" or path.startswith("/admin/")

    def _admin(self, config: Config) -> Outcome:
        """Authorized first (an unknown path is not told apart without the token), then dispatched."""
        self._drop_body()
        if not self.server.token.allows(self.request_headers.get("Authorization")):
            refused = intake.refused(Unauthorized("missing or wrong bearer token", reason="admin_token"))
            refused.msg, refused.headers["WWW-Authenticate"] = "admin.unauthorized", 'Bearer realm="admin"'
            return refused
        path, _, query = self.path.partition("?")
        allowed = []
        for pattern, method, work in self._routes():
            m = pattern.fullmatch(path)
            if m and method == self.command:
                problem = self.server.workers.health()
                if problem:
                    raise Unavailable(f"spool unavailable: {problem}")
                return _spool_call(work, m, query, config)
            if m:
                allowed.append(method)
        if allowed:
            raise MethodNotAllowed(", ".join(allowed))
        raise RouteNotFound("no such admin path")

    def _drop_body(self) -> None:
        """Admin requests carry no body: none is fine (a bare `curl -X POST`); a small one is read and dropped."""
        headers = self.request_headers
        if headers.get("Content-Length") is None and headers.get("Transfer-Encoding") is None:
            self.body_read = True
            return
        self.read_body(content_length(headers, MAX_ADMIN_BODY))

    @property
    def history(self) -> History:
        return histories.of(self.server.workers.spool)

    def _list(self, _m: re.Match[str], query: str, _config: Config) -> Outcome:
        f = admin_api.listing_filter(query)
        return intake.answer(HTTPStatus.OK, admin_api.listing(self.history.deliveries(f), f), "admin.listed")

    def _detail(self, m: re.Match[str], query: str, _config: Config) -> Outcome:
        with_body = _flag(query, "body")
        found = self.history.delivery(int(m[1]), body=with_body)
        if found is None:
            raise NotFound(f"no delivery {m[1]}", reason="unknown_delivery")
        return intake.answer(HTTPStatus.OK, admin_api.detail(found, with_body), "admin.shown")

    def _replay(self, m: re.Match[str], _query: str, config: Config) -> Outcome:
        done = admin_replay.replay(self.history, config, int(m[1]), depth=self.server.workers.depth)
        fields = {"id": done.delivery.id, "delivery": done.delivery.delivery, "endpoint": done.delivery.endpoint,
                  "event": done.delivery.event, "jobs": list(done.jobs), "routes": list(done.routes)}
        return intake.answer(HTTPStatus.ACCEPTED, {"status": "accepted", **fields}, "admin.replayed", dict(fields))

    def _retry(self, m: re.Match[str], _query: str, _config: Config) -> Outcome:
        job_id = int(m[1])
        row = self.server.workers.spool.job(job_id)
        if row is None:
            raise NotFound(f"no job {job_id}", reason="unknown_job")
        if row.state != "failed" or not self.server.workers.spool.retry([job_id]):
            raise Conflict(f"job {job_id} is not a dead letter (state {row.state})", reason="not_dead_letter")
        fields = {"job": job_id, "route": row.route.name, "delivery": row.delivery, "endpoint": row.endpoint}
        return intake.answer(HTTPStatus.ACCEPTED, {"status": "accepted", **fields}, "admin.retried", dict(fields))

    def _count(self, status: HTTPStatus, msg: str) -> None:
        # One label for all of /admin/*: ids in paths would be unbounded label values.
        path = self.path.split("?", 1)[0]
        endpoint = path if path in HEALTH_PATHS else "/admin" if self._is_admin() else "other"
        metrics.child(metrics.REQUESTS, endpoint, str(int(status))).inc()


def _flag(query: str, name: str) -> bool:
    values = [v for k, _, v in (p.partition("=") for p in query.split("&")) if k == name]
    if values and values[-1] not in ("0", "1", "true", "false", ""):
        raise BadRequest(f"{name} must be 1 or 0", reason="bad_query")
    return bool(values) and values[-1] in ("1", "true", "")


def _spool_call(work: Callable[[re.Match[str], str, Config], Outcome], m: re.Match[str], query: str,
                config: Config) -> Outcome:
    """work(m, query, config); a database error is 503 (the spool's to recover from), not 500."""
    try:
        return work(m, query, config)
    except sqlite3.Error as e:
        raise Unavailable(f"spool error: {type(e).__name__}") from e
    except Exception as e:
        if type(e).__module__.split(".")[0] in ("psycopg", "psycopg_pool"):
            raise Unavailable(f"spool database error: {type(e).__name__}") from e
        raise


class AdminServer(SidecarServer):
    """The admin listener: the webhook listener's admission and deadlines, the AdminHandler, the token."""

    metrics_here = True

    def __init__(self, address: tuple[str, int], live: Live, workers: Scheduler) -> None:
        from .admin_token import Token

        self.token = Token(lambda: live.current)
        Listener.__init__(self, address, live, workers, AdminHandler)
