"""Replay: a stored delivery runs again under today's table, for the admin listener and `spool replay`.

The routes are those that take the delivery now (conditions.select on the stored body, event, headers
kept by `pass_headers` and query kept by `pass_query`); each becomes a new job marked `replay_of`, beside
the delivery's earlier jobs, with the same body and delivery id. Nothing is run here: the scheduler
picks the new jobs up like any requeued job.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from http import HTTPStatus
from typing import Any

from . import conditions, request_context
from .config import Config, Endpoint
from .errors import QueueFull, SidecarError
from .spool.history import DeliveryRecord, History


class NotFound(SidecarError, status=HTTPStatus.NOT_FOUND):
    """No such delivery or job in the spool."""


class Conflict(SidecarError, status=HTTPStatus.CONFLICT):
    """The spool's state does not allow it: the body is gone, no route takes it, not a dead letter."""


class StoredHeaders:
    """The request headers a delivery kept (`pass_headers`, and a forward's content type), by any case."""

    def __init__(self, pairs: tuple[tuple[str, str], ...]) -> None:
        self._by_name = {name.lower(): value for name, value in reversed(pairs)}

    def get(self, name: str, default: Any = None) -> Any:
        return self._by_name.get(name.lower(), default)

    def get_all(self, name: str, default: Any = None) -> Any:
        found = self._by_name.get(name.lower())
        return [found] if found is not None else default


@dataclass(frozen=True)
class Replayed:
    delivery: DeliveryRecord
    jobs: tuple[int, ...]
    routes: tuple[str, ...]


def replay(history: History, config: Config, delivery_id: int, depth: int | None = None) -> Replayed:
    """New jobs for the delivery `delivery_id` (the spool's id) under `config`. NotFound, Conflict (body
    gone, endpoint or routes no longer taking it), or QueueFull when `depth` (the queue's, when known)
    leaves no room under max_queue."""
    found = history.delivery(delivery_id, body=True)
    if found is None:
        raise NotFound(f"no delivery {delivery_id}", reason="unknown_delivery")
    if not found.body_kept:
        raise Conflict("the delivery's body is no longer kept (see keep_bodies_s)", reason="body_gone")
    endpoint = config.endpoints.get(found.endpoint)
    if endpoint is None:
        raise Conflict(f"endpoint {found.endpoint} is no longer in the table", reason="endpoint_gone")
    context = found.context
    headers = StoredHeaders(context.headers + _content_type(context))
    target = endpoint.path + (f"?{context.query}" if context.query is not None else "")
    payload = _payload(endpoint, headers, found.body or b"")
    routes, why = conditions.select(endpoint.routes, conditions.Request(found.event, payload, headers, target))
    if not routes:
        raise Conflict(f"no route of the table takes it now: {why}", reason="no_route")
    if depth is not None and depth + len(routes) > config.max_queue:
        raise QueueFull()
    names = {r.name for r in routes}
    env = tuple(e for e in context.env if e[0] not in names) + tuple(
        (r.name, values) for r in routes if r.env_from and (values := request_context.env_values(r, payload)))
    ids = history.replay(delivery_id, routes, replace(context, env=env))
    if ids is None:  # dropped between the read and the write
        raise Conflict("the delivery's body is no longer kept (see keep_bodies_s)", reason="body_gone")
    return Replayed(found, tuple(ids), tuple(r.name for r in routes))


def _content_type(context: Any) -> tuple[tuple[str, str], ...]:
    kept = getattr(context, "content_type", "")  # kept for forwards only
    return (("Content-Type", kept),) if kept else ()


def _payload(endpoint: Endpoint, headers: StoredHeaders, body: bytes) -> Any:
    """The body parsed as its provider does; without the request's other headers that may fail (a form
    post): then as JSON, else None (conditions on the payload do not hold)."""
    try:
        return endpoint.provider.parse(headers, body)
    except Exception:
        try:
            return json.loads(body)
        except ValueError:
            return None
