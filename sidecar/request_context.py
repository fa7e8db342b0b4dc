"""What a delivery keeps of its request for its hooks (spool.Context), read once at acceptance: the
endpoint's `pass_headers` found, the raw query string (`pass_query`), and each matched route's
`env_from` values and lane (lanes.py) from the request. Stored with the delivery, it reaches any replica and survives a
restart; the hook's environment is built from it (launcher.Launcher.env)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from . import lanes, logs
from .conditions import MISSING, lookup
from .config import Endpoint, Route
from .providers import HeaderMap
from .spool import NO_CONTEXT, Context

MAX_VALUE_BYTES = 32 * 1024  # an env_from value above this is not set (logged): environments are small


def of_request(endpoint: Endpoint, headers: HeaderMap, target: str, payload: Any, routes: Sequence[Route],
               cloudevent: Mapping[str, str] | None = None, content_type: str | None = None) -> Context:
    """The context to store with a delivery to `endpoint` whose jobs are `routes`."""
    passed = _found(headers, endpoint.pass_headers)
    query = target.partition("?")[2] if endpoint.pass_query else None
    env = tuple((r.name, values) for r in routes if r.env_from and (values := env_values(r, payload)))
    forwards = [r.forward for r in routes if r.forward is not None]
    forwarded = _found(headers, dict.fromkeys(n for t in forwards for n in t.pass_headers))
    if content_type is None:  # a CloudEvent's data has its own (datacontenttype)
        content_type = headers.get("Content-Type") or ""
    content_type = content_type if forwards else ""
    lanes_of = tuple((r.name, lanes.value_of(r.lane, payload, headers)) for r in routes if r.lane is not None)
    context = Context(headers=passed, query=query, env=env, content_type=content_type, forwarded=forwarded,
                      cloudevent=tuple(cloudevent.items()) if cloudevent else (), lanes=lanes_of)
    return NO_CONTEXT if context == NO_CONTEXT else context


def _found(headers: HeaderMap, names: Iterable[str]) -> tuple[tuple[str, str], ...]:
    return tuple((name, value) for name in names if (value := headers.get(name)) is not None)


def env_values(route: Route, payload: Any) -> tuple[tuple[str, str], ...]:
    """`env_from` read from the payload: strings as they are, other scalars as JSON text, objects and
    lists as compact JSON; a missing path leaves its variable unset, as does a value over 32 KiB."""
    out = []
    for name, path in route.env_from:
        value = lookup(payload, path)
        if value is MISSING:
            continue
        text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"), ensure_ascii=False)
        if len(text.encode("utf-8", "surrogatepass")) > MAX_VALUE_BYTES or "\x00" in text:
            logs.warning("route.env_from_skipped", route=route.name, variable=name, path=path,
                         detail=f"value over {MAX_VALUE_BYTES} bytes or holding a NUL: not set")
            continue
        out.append((name, text))
    return tuple(out)
