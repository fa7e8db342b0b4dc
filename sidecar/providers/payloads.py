"""Payload helpers every scheme shares: JSON with a depth limit, form bodies, dotted fields, ids."""

from __future__ import annotations

import hashlib
import json
from typing import Any
from urllib.parse import parse_qs, parse_qsl

from ..errors import BadRequest

MAX_JSON_DEPTH = 64


def _depth_ok(value: Any, limit: int = MAX_JSON_DEPTH) -> bool:
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return False
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return True


def _no_constant(name: str) -> Any:
    """NaN, Infinity and -Infinity are not JSON (RFC 8259); Python's decoder takes them by default."""
    raise ValueError(f"{name} is not a JSON value")


def parse_json(body: bytes | str) -> Any:
    """Decode a JSON payload; BadRequest for invalid or absurdly nested documents."""
    try:
        payload = json.loads(body, parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise BadRequest("body is not valid JSON", reason="invalid_json") from e
    # Fewer brackets than the limit cannot nest deeper than it: skip the walk.
    raw = body.encode() if isinstance(body, str) else body
    if raw.count(b"[") + raw.count(b"{") > MAX_JSON_DEPTH and not _depth_ok(payload):
        raise BadRequest(f"JSON nested deeper than {MAX_JSON_DEPTH}", reason="too_deep")
    return payload


def is_form_type(content_type: str) -> bool:
    return content_type.split(";")[0].strip().lower() == "application/x-www-form-urlencoded"


def form_field(body: bytes, field: str) -> str:
    """One field of a form-encoded body; BadRequest when it is absent."""
    try:
        values = parse_qs(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False).get(field)
    except UnicodeDecodeError as e:
        raise BadRequest("form body is not UTF-8", reason="invalid_form") from e
    if not values:
        raise BadRequest(f"form body has no {field!r} field", reason="invalid_form")
    return values[0]


def form_pairs(body: bytes, max_fields: int = 1000) -> list[tuple[str, str]]:
    """A form-encoded body as (name, value) pairs; ValueError when it is not one."""
    try:
        return parse_qsl(body.decode("utf-8"), keep_blank_values=True, errors="strict", max_num_fields=max_fields)
    except UnicodeDecodeError as e:
        raise ValueError("form body is not UTF-8") from e


def form_fields(body: bytes, max_fields: int = 1000) -> dict[str, str]:
    """A form-encoded body as {name: first value}; BadRequest when it is not one."""
    try:
        pairs = form_pairs(body, max_fields)
    except ValueError as e:
        raise BadRequest("form body is not valid", reason="invalid_form") from e
    out: dict[str, str] = {}
    for key, value in pairs:
        out.setdefault(key, value)
    return out


def text(value: Any) -> str:
    """An event type from a payload field: strings only, anything else is ""."""
    return value if isinstance(value, str) else ""


def dig(payload: Any, dotted: str) -> Any:
    """The value at a dotted path of JSON objects ("event.type"), or None."""
    for part in dotted.split("."):
        if not isinstance(payload, dict):
            return None
        payload = payload.get(part)
    return payload


def new_id() -> str:
    """A new delivery id for a signed request (uuid4 text); uuid is imported here, off the serving path."""
    import uuid

    return str(uuid.uuid4())


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
