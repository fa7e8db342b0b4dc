"""Request path -> endpoint (which routes an event runs is conditions.py's)."""

from __future__ import annotations

from .config import Config, Endpoint
from .errors import RouteNotFound


def endpoint_for(config: Config, path: str) -> Endpoint:
    """The endpoint serving `path` (query string ignored), or RouteNotFound."""
    endpoint = config.endpoints.get(path.split("?", 1)[0])
    if endpoint is None:
        raise RouteNotFound("no endpoint at this path")
    return endpoint
