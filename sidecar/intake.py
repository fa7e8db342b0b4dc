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
from .config import Config, Endpoint, Route
from .errors import BadRequest, MethodNotAllowed, SidecarError
from .providers import HeaderMap
from .replies import Waiter
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


@dataclass(slots=True)
class _Item:
    """One delivery a request carries (a CloudEvents batch carries several)."""

    payload: Any
    event: str
    delivery: str
    body: bytes
    cloudevent: dict[str, str] | None = None
    content_type: str | None = None  # the data's, for a CloudEvent


def _items(provider: Any, headers: HeaderMap, body: bytes) -> list[_Item]:
    """The deliveries of a verified request: its events for CloudEvents, else the one the provider reads."""
    events = getattr(provider, "events", None)
    if callable(events):
        return [_Item(e.payload, e.type, e.delivery, e.data, dict(e.attributes), e.content_type)
                for e in events(headers, body)]
    payload = provider.parse(headers, body)
    given = provider.delivery(headers, payload)
    delivery = given if isinstance(given, str) and SAFE_DELIVERY.match(given) else os.urandom(16).hex()
    return [_Item(payload, provider.event(headers, payload), delivery, body)]


def _deliver(target: str, headers: HeaderMap, body: bytes, request_id: str, config: Config,
             scheduler: Scheduler, fields: dict[str, Any]) -> Outcome:
    endpoint = router.endpoint_for(config, target)
    provider = endpoint.provider
    fields.update(endpoint=endpoint.path, provider=provider.name, bytes=len(body))
    # Signature first, on the raw bytes; nothing is parsed before it holds.
    provider.verify(headers, body, endpoint.secrets, time.time(), target=target)
    items = _items(provider, headers, body)
    for item in items:
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in item.event):
            raise BadRequest("event type holds control characters", reason="invalid_event")
    if len(items) != 1:
        return _batch(items, endpoint, target, headers, request_id, config, scheduler, fields)
    item = items[0]
    payload, event, delivery = item.payload, item.event, item.delivery
    fields.update(event=event, delivery=delivery)

    reply = provider.reply(event, payload)
    if reply is not None:
        return Outcome(HTTPStatus(reply.status), reply.body, "delivery.answered", fields, reply.content_type)

    def answered(kind: answers.Kind, names: list[str] | None = None) -> Outcome:
        # The provider's answer (Discord, Twilio, Slack forms) or the endpoint's `respond`, else the JSON status.
        chosen = answers.choose(endpoint.respond, endpoint.provider, headers, event, payload, kind, delivery,
                                names or ())
        return Outcome(chosen.status, chosen.body, f"delivery.{kind}", fields, chosen.content_type)

    # Conditions read the payload, the headers and the query string (target); the reason is logged only.
    routes, why = conditions.select(endpoint.routes, conditions.Request(event, payload, headers, target))
    if not routes:
        fields["reason"] = why
        return answered("ignored")
    replying = next((r for r in routes if r.reply is not None), None)
    waiter = None
    if replying is not None and replying.reply is not None:  # registered first: the run may start at once
        waiter = scheduler.expect_reply(endpoint.path, delivery, replying.name, replying.reply)
    try:
        accepted = scheduler.submit(_delivery(item, endpoint, target, headers, request_id, config, routes), routes)
        if accepted.status == "duplicate":
            return answered("duplicate")
        names = list(accepted.routes)
        fields["routes"] = names
        if waiter is not None and waiter.key[2] in names:
            stdout = waiter.wait()
            fields["replied"] = stdout is not None
            if stdout is not None:
                return Outcome(HTTPStatus.OK, stdout, "delivery.accepted", fields, _reply_type(waiter, stdout))
        return answered("accepted", names)
    finally:
        if waiter is not None:
            scheduler.replied(waiter)


def _reply_type(waiter: Waiter, body: bytes) -> str:
    """The reply's content type: the route's, else JSON when the hook's stdout parses as JSON, else text."""
    if waiter.spec.content_type:
        return waiter.spec.content_type
    try:
        json.loads(body)
    except ValueError:
        return "text/plain; charset=utf-8"
    return JSON


def _delivery(item: _Item, endpoint: Endpoint, target: str, headers: HeaderMap, request_id: str, config: Config,
              routes: list[Route]) -> Delivery:
    context = request_context.of_request(endpoint, headers, target, item.payload, routes, item.cloudevent,
                                         item.content_type)
    return Delivery(endpoint=endpoint.path, delivery=item.delivery, provider=endpoint.provider.name, event=item.event,
                    request_id=request_id, cwd=str(config.base_dir), body=item.body, context=context)


def _batch(items: list[_Item], endpoint: Endpoint, target: str, headers: HeaderMap, request_id: str,
           config: Config, scheduler: Scheduler, fields: dict[str, Any]) -> Outcome:
    """A CloudEvents batch: each event its own delivery; the answer lists their ids."""
    deliveries, queued = [], 0
    for item in items:
        routes, _why = conditions.select(endpoint.routes, conditions.Request(item.event, item.payload, headers, target))
        if routes:
            queued += len(scheduler.submit(_delivery(item, endpoint, target, headers, request_id, config, routes),
                                           routes).job_ids)
        deliveries.append(item.delivery)
    fields.update(deliveries=len(deliveries), jobs=queued)
    return answer(HTTPStatus.OK, {"status": "accepted", "deliveries": deliveries}, "delivery.accepted", fields)
