"""The delivery intake: verify -> parse -> event -> id -> match -> submit, with no HTTP types.

A request whose body has been read whole becomes an Outcome: the status, the body and headers
to answer with, and what to log. Nothing is parsed before the signature holds.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from . import answers, conditions, logs, request_context, router
from .config import Config
from .errors import BadRequest, MethodNotAllowed, SidecarError
from .providers import HeaderMap
from .spool import Delivery, Scheduler

# \Z, not $: "$" also matches before a final newline, and "evt_1\n" is no safe token.
SAFE_DELIVERY = re.compile(r"^[A-Za-z0-9._:-]{1,128}\Z")
JSON = "application/json"
_dumps = json.JSONEncoder(separators=(",", ":")).encode  # json.dumps builds an encoder per call


@dataclass(slots=True)
class Outcome:
    """What to answer and log: `msg` names the log line (delivery.accepted, request.rejected, ...)."""

    status: HTTPStatus
    body: bytes
    msg: str
    fields: dict[str, Any] = field(default_factory=dict)  # for the log line and the metrics
    content_type: str = JSON
    headers: dict[str, str] = field(default_factory=dict)  # to add to the answer (Allow, Retry-After)


def answer(status: HTTPStatus, document: Any, msg: str, fields: dict[str, Any] | None = None) -> Outcome:
    """An outcome whose body is `document` as compact JSON."""
    return Outcome(status, _dumps(document).encode(), msg, {} if fields is None else fields)


def refused(error: SidecarError, fields: dict[str, Any] | None = None) -> Outcome:
    """The outcome of a request-time error: its status, message and headers; a 401 logs no message."""
    unauthorized = error.status == HTTPStatus.UNAUTHORIZED
    fields = {} if fields is None else fields
    fields["reason"] = error.reason
    if not unauthorized:
        fields["error"] = str(error)
    return Outcome(error.status, _dumps({"error": str(error)}).encode(),
                   "delivery.rejected" if unauthorized else "request.rejected", fields, JSON, dict(error.headers))


def failed(request_id: str, fields: dict[str, Any] | None = None) -> Outcome:
    """The outcome of a bug: 500, and the traceback in the log (call it in the `except`)."""
    logs.error("request.exception", exc_info=True, request_id=request_id)
    return answer(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": "internal error"}, "request.failed", fields)


def receive(method: str, target: str, headers: HeaderMap, body: bytes, request_id: str,
            config: Config, scheduler: Scheduler) -> Outcome:
    """One delivery to the endpoint at `target` (path and query), its body read whole, on `config`.

    Errors are outcomes too, never raised; `request_id` is stored with the delivery's jobs.
    """
    fields: dict[str, Any] = {}
    try:
        if method != "POST":
            raise MethodNotAllowed("POST")
        return _deliver(target, headers, body, request_id, config, scheduler, fields)
    except SidecarError as e:
        return refused(e, fields)
    except Exception:
        return failed(request_id, fields)


def _deliver(target: str, headers: HeaderMap, body: bytes, request_id: str, config: Config,
             scheduler: Scheduler, fields: dict[str, Any]) -> Outcome:
    endpoint = router.endpoint_for(config, target)
    provider = endpoint.provider
    fields.update(endpoint=endpoint.path, provider=provider.name, bytes=len(body))
    # Signature first, on the raw bytes; nothing is parsed before it holds.
    provider.verify(headers, body, endpoint.secrets, time.time(), target=target)
    payload = provider.parse(headers, body)
    event = provider.event(headers, payload)
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in event):
        raise BadRequest("event type holds control characters", reason="invalid_event")
    given = provider.delivery(headers, payload)
    delivery = given if isinstance(given, str) and SAFE_DELIVERY.match(given) else os.urandom(16).hex()
    fields.update(event=event, delivery=delivery)

    reply = provider.reply(event, payload)
    if reply is not None:
        return Outcome(HTTPStatus(reply.status), reply.body, "delivery.answered", fields, reply.content_type)

    def answered(kind: answers.Kind, names: list[str] | None = None) -> Outcome:
        # The provider's answer (Discord, Twilio, Slack forms) or the endpoint's `respond`, else the JSON status.
        chosen = answers.choose(endpoint, headers, event, payload, kind, delivery, names or ())
        return Outcome(chosen.status, chosen.body, f"delivery.{kind}", fields, chosen.content_type)

    # Conditions read the payload, the headers and the query string (target); the reason is logged only.
    routes, why = conditions.select(endpoint.routes, conditions.Request(event, payload, headers, target))
    if not routes:
        fields["reason"] = why
        return answered("ignored")
    accepted = scheduler.submit(
        Delivery(endpoint=endpoint.path, delivery=delivery, provider=provider.name, event=event,
                 request_id=request_id, cwd=str(config.base_dir), body=body,
                 context=request_context.of_request(endpoint, headers, target, payload, routes)), routes)
    if accepted.status == "duplicate":
        return answered("duplicate")
    names = list(accepted.routes)
    fields["routes"] = names
    return answered("accepted", names)
