"""A route's `reply: {timeout_s, max_bytes, content_type}`: its first run's stdout answers the sender."""

from __future__ import annotations

from typing import Any

from .replies import ReplySpec
from .yamldoc import Doc, Path_

MAX_TIMEOUT_S = 25.0  # senders give up sooner (Slack 3 s, Discord 3 s, Twilio 15 s, GitHub 10 s)
MAX_BYTES = 1024 * 1024


def reply(doc: Doc, path: Path_, raw: dict[str, Any]) -> ReplySpec | None:
    value = raw.get("reply")
    if value is None:
        return None
    if value is True:
        return ReplySpec()
    at = path + ("reply",)
    if not isinstance(value, dict):
        doc.error(at, "must be true or a mapping {timeout_s, max_bytes, content_type}")
        return None
    doc.unknown_keys(value, at, {"timeout_s", "max_bytes", "content_type"})
    timeout_s = doc.get(value, at, "timeout_s", float, 2.5, minimum=0.001)
    if timeout_s > MAX_TIMEOUT_S:
        doc.error(at + ("timeout_s",), f"must be at most {MAX_TIMEOUT_S:g} seconds (senders wait less),"
                                       f" got {timeout_s:g}")
    max_bytes = doc.get(value, at, "max_bytes", int, 65536, minimum=1)
    if max_bytes > MAX_BYTES:
        doc.error(at + ("max_bytes",), f"must be at most {MAX_BYTES}, got {max_bytes}")
    content_type = doc.get(value, at, "content_type", str, "")
    if content_type and not (content_type.isascii() and content_type.isprintable()):
        doc.error(at + ("content_type",), "must be printable ASCII")
    return ReplySpec(min(timeout_s, MAX_TIMEOUT_S), min(max_bytes, MAX_BYTES), content_type)
