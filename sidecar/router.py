"""Pure routing: request path -> endpoint, (event, payload) -> matching routes."""

from __future__ import annotations

from typing import Any

from .config import Config, Endpoint, Route
from .errors import RouteNotFound

_MISSING = object()


def endpoint_for(config: Config, path: str) -> Endpoint:
    """The endpoint serving `path` (query string ignored), or RouteNotFound."""
    endpoint = config.endpoints.get(path.split("?", 1)[0])
    if endpoint is None:
        raise RouteNotFound("no endpoint at this path")
    return endpoint


def lookup(payload: Any, dotted: str) -> Any:
    """The value at a dotted path ("repository.owner.login", "commits.0.id"), or _MISSING."""
    value = payload
    for part in dotted.split("."):
        if isinstance(value, dict):
            value = value.get(part, _MISSING)
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return _MISSING
        if value is _MISSING:
            return _MISSING
    return value


def _equal(actual: Any, expected: Any) -> bool:
    # JSON true must not equal YAML 1, nor 1 equal true: compare types as well.
    if isinstance(actual, bool) or isinstance(expected, bool):
        return actual is expected
    return actual == expected


def matches(route: Route, event: str, payload: Any) -> bool:
    if route.event != "*" and route.event != event:
        return False
    return all(_equal(lookup(payload, key), want) for key, want in route.when)


def match(endpoint: Endpoint, event: str, payload: Any) -> list[Route]:
    """Every route of `endpoint` that `event` and `payload` select, in table order."""
    return [r for r in endpoint.routes if matches(r, event, payload)]
