"""What /admin/* answers, with no HTTP types: the listing's filters read from a query string, and the
JSON documents of deliveries and jobs (times as RFC 3339 UTC, bodies as text or base64)."""

from __future__ import annotations

import base64
import time
from typing import Any
from urllib.parse import parse_qs

from .errors import BadRequest
from .spool.history import MAX_LIMIT, STATES, DeliveryRecord, Filter, JobRecord

FILTERS = ("state", "endpoint", "route", "event", "limit", "before")


def when(ts: float | None) -> str | None:
    if not ts:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts * 1000) % 1000:03d}Z"


def listing_filter(query: str) -> Filter:
    """GET /admin/deliveries' query string as a Filter; BadRequest naming the parameter at fault."""
    given = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True, max_num_fields=20).items()}
    unknown = sorted(set(given) - set(FILTERS))
    if unknown:
        raise BadRequest(f"unknown parameter {unknown[0]!r} (known: {', '.join(FILTERS)})", reason="bad_query")
    state = given.get("state") or None
    if state is not None and state not in STATES:
        raise BadRequest(f"state must be one of {', '.join(STATES)}", reason="bad_query")
    limit = _number(given, "limit", 50)
    if limit is None or not 1 <= limit <= MAX_LIMIT:
        raise BadRequest(f"limit must be 1 to {MAX_LIMIT}", reason="bad_query")
    return Filter(state=state, endpoint=given.get("endpoint") or None, route=given.get("route") or None,
                  event=given.get("event") if "event" in given else None, limit=limit,
                  before=_number(given, "before", None))


def _number(given: dict[str, str], name: str, default: int | None) -> int | None:
    text = given.get(name) or ""
    if not text:
        return default
    if not text.isascii() or not text.isdigit() or len(text) > 18:
        raise BadRequest(f"{name} must be a whole number", reason="bad_query")
    return int(text)


def listing(found: list[DeliveryRecord], f: Filter) -> dict[str, Any]:
    """{"deliveries": [...], "next_before": the id to pass as `before` for the next page, or null}."""
    more = len(found) == f.limit
    return {"deliveries": [summary(d) for d in found], "next_before": found[-1].id if more and found else None}


def summary(d: DeliveryRecord) -> dict[str, Any]:
    return {"id": d.id, "delivery": d.delivery, "endpoint": d.endpoint, "provider": d.provider, "event": d.event,
            "received_at": when(d.received_at),
            "jobs": [{"id": j.id, "route": j.route, "state": j.state, "attempts": j.attempts,
                      "exit_code": j.exit_code, "replay_of": j.replay_of} for j in d.jobs]}


def detail(d: DeliveryRecord, with_body: bool) -> dict[str, Any]:
    """One delivery in full; with `with_body`, its body while kept: `body` (UTF-8 text) or `body_base64`."""
    doc = {**summary(d), "request_id": d.request_id, "body_kept": d.body_kept,
           "headers": dict(d.context.headers), "query": d.context.query, "jobs": [job(j) for j in d.jobs]}
    if with_body:
        body = d.body if d.body_kept and d.body is not None else None
        try:
            doc["body"] = None if body is None else body.decode("utf-8")
        except UnicodeDecodeError:
            doc["body_base64"] = base64.b64encode(body or b"").decode("ascii")
    return doc


def job(j: JobRecord) -> dict[str, Any]:
    return {"id": j.id, "route": j.route, "state": j.state, "attempts": j.attempts, "exit_code": j.exit_code,
            "outcome": j.outcome, "output_tail": j.output_tail, "updated_at": when(j.updated_at),
            "next_attempt_at": when(j.next_at) if j.state == "pending" else None, "replay_of": j.replay_of,
            **({"replica": j.replica} if j.replica else {})}
