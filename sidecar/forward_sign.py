"""What a forward sends besides the body: the request's headers, Standard Webhooks signatures, and
what an answer's Retry-After means. Pure functions over values; the connection pool is forward.py.
"""

from __future__ import annotations

import email.utils
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import quote

from .providers import HEADER_NAME, hmac_b64

# A Retry-After beyond a day is taken as a day: an answer cannot park a delivery for years.
MAX_RETRY_AFTER_S = 86400.0
# Names the forward sets itself: neither a route's static headers nor pass_headers may replace them.
PROTOCOL_HEADERS = frozenset({
    "host", "content-length", "content-type", "transfer-encoding", "connection", "keep-alive", "te", "upgrade",
    "trailer", "expect", "x-request-id", "x-webhook-delivery", "x-webhook-event", "x-webhook-attempt",
    "webhook-id", "webhook-timestamp", "webhook-signature",
})
# CloudEvents HTTP binding 3.1.3.2: header values are printable ASCII with space, '"' and '%' percent-encoded.
_CE_SAFE = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in ' "%')
_DIGITS = re.compile(r"[0-9]{1,12}")


@dataclass(frozen=True)
class Facts:
    """What a forward says about the delivery it carries (none of it secret).

    `headers` are the original request's headers stored with the delivery; only those the target's
    `pass_headers` names are sent. `received` is when the delivery was accepted (Unix time; ce-time).
    `cloudevent` holds the original event's context attributes when the delivery came in as a
    CloudEvent: a `cloudevents` forward then carries them instead of attributes made up from the rest.
    """

    delivery: str
    event: str
    attempt: int
    request_id: str
    endpoint: str = ""
    provider: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)
    received: float | None = None
    cloudevent: Mapping[str, str] | None = None


def check_header(name: str, value: str, where: str) -> None:
    """ValueError unless `name: value` is a header a forward may set (a token; no CR, LF or NUL)."""
    if not HEADER_NAME.fullmatch(name):
        raise ValueError(f"{where}: not a valid HTTP header name: {name!r}")
    if name.lower() in PROTOCOL_HEADERS or name.lower().startswith("ce-"):
        raise ValueError(f"{where}: {name} is set by the forward itself")
    if not sendable(value):
        raise ValueError(f"{where}: the value of {name} holds control characters or is not Latin-1")


def sendable(value: str) -> bool:
    """Whether `value` can travel as a header value (Latin-1, no CR, LF or NUL)."""
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return not any(c in value for c in "\r\n\0")


def standard_signature(keys: Sequence[bytes], msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """Standard Webhooks headers: one `v1,<base64 HMAC-SHA256 of "id.ts.body">` per key (rotation)."""
    msg = f"{msg_id}.{timestamp}.".encode() + body
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join("v1," + hmac_b64(k, msg) for k in keys),
    }


def ce_value(value: str) -> str:
    """A CloudEvents attribute as a binary-mode header value (percent-encoded where the binding says)."""
    return quote(value, safe=_CE_SAFE)


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def cloudevent_headers(facts: Facts, now: float) -> dict[str, str]:
    """The ce-* headers of a binary-mode request: the original event's attributes when it was one,
    else ce-id the delivery id, ce-source the endpoint path, ce-type the event, ce-time its acceptance."""
    if facts.cloudevent:
        attributes = {k: v for k, v in facts.cloudevent.items() if k not in ("data", "datacontenttype")}
    else:
        attributes = {"id": facts.delivery, "source": facts.endpoint or "/", "type": facts.event,
                      "time": rfc3339(facts.received if facts.received is not None else now)}
    attributes["specversion"] = attributes.get("specversion") or "1.0"
    return {"ce-" + k: ce_value(str(v)) for k, v in attributes.items() if v is not None and HEADER_NAME.fullmatch(k)}


def request_headers(static: Iterable[tuple[str, str]], passed: Sequence[str], facts: Facts) -> list[tuple[str, str]]:
    """The headers every forward carries, then the static ones, then the allowed original ones.

    An original header is sent only when `passed` names it (case-insensitive) and its stored value can
    travel as a header; a reserved name can never be passed (Target refuses it at load).
    """
    out = [
        ("X-Request-Id", facts.request_id),
        ("X-Webhook-Delivery", facts.delivery),
        ("X-Webhook-Event", facts.event),
        ("X-Webhook-Attempt", str(facts.attempt)),
    ]
    out = [(k, v) for k, v in out if sendable(v)]
    out.extend(static)
    wanted = {name.lower() for name in passed}
    out.extend((k, v) for k, v in facts.headers.items() if k.lower() in wanted and sendable(v))
    return out


def retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds a Retry-After value asks for (delta-seconds or an HTTP date), in [0, a day]; None if unusable."""
    if not value:
        return None
    value = value.strip()
    if _DIGITS.fullmatch(value):
        return min(float(value), MAX_RETRY_AFTER_S)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    wait = when.timestamp() - (time.time() if now is None else now)
    return min(max(wait, 0.0), MAX_RETRY_AFTER_S)
