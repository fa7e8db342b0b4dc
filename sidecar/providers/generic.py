"""Senders without a scheme of their own: `hmac-sha256` (configurable header) and `none`."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from . import HEADER_NAME, HeaderMap, HeaderSigned, Option, Provider, dig, header_text, text

# Where the event type and delivery id come from, for providers that cannot know it.
EVENT_OPTIONS = {
    "event_header": Option(str, ""),
    "event_field": Option(str, ""),
    "delivery_header": Option(str, ""),
}


def check_event_options(opts: dict[str, Any]) -> None:
    """ValueError for header names that are not tokens, or both event sources set."""
    for key in ("event_header", "delivery_header"):
        if opts[key] and not HEADER_NAME.fullmatch(opts[key]):
            raise ValueError(f"{key}: not a valid HTTP header name: {opts[key]!r}")
    if opts["event_header"] and opts["event_field"]:
        raise ValueError("set either 'event_header' or 'event_field', not both")
    if opts["event_field"] and any(not part for part in opts["event_field"].split(".")):
        raise ValueError(f"event_field: must be a dotted JSON path such as 'event.type', got {opts['event_field']!r}")


def configured_event(opts: dict[str, Any], headers: HeaderMap, payload: Any) -> str:
    if opts["event_field"]:
        return text(dig(payload, opts["event_field"]))
    return header_text(headers, opts["event_header"]) if opts["event_header"] else ""


class GenericHmac(HeaderSigned):
    """`hmac-sha256`: any sender that puts prefix + hex/base64 HMAC-SHA256 of the body in a header.

    The event type comes from `event_header` or from the dotted JSON path
    `event_field` (not both); the delivery id from `delivery_header`.
    """

    name = "hmac-sha256"
    options = {"header": Option(str, ""), "prefix": Option(str, ""), "encoding": Option(str, "hex"), **EVENT_OPTIONS}

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        o = self.opts
        if not o["header"]:
            raise ValueError("provider 'hmac-sha256' needs 'header': the request header that holds the signature")
        if not HEADER_NAME.fullmatch(o["header"]):
            raise ValueError(f"header: not a valid HTTP header name: {o['header']!r}")
        check_event_options(o)
        if o["encoding"] not in ("hex", "base64"):
            raise ValueError(f"encoding: must be 'hex' or 'base64', got {o['encoding']!r}")
        if not o["prefix"].isascii() or not o["prefix"].isprintable():
            raise ValueError("prefix: must be printable ASCII")
        self.signature_headers = (o["header"],)
        self.prefix = o["prefix"]
        self.encoding = o["encoding"]
        self.event_headers = (o["event_header"],) if o["event_header"] else ()
        self.delivery_headers = (o["delivery_header"],) if o["delivery_header"] else ()

    def event(self, headers: HeaderMap, payload: Any) -> str:
        return configured_event(self.opts, headers, payload)


class Unverified(Provider):
    """`none`: no signature at all, an explicit choice that is warned about."""

    name = "none"
    needs_secret = False

    def verify(self, headers: HeaderMap, body: bytes, secrets: Sequence[bytes], now: float,
               target: str = "") -> None:
        return None

    def event(self, headers: HeaderMap, payload: Any) -> str:
        named = str(headers.get("X-Webhook-Event") or "")
        return named or (text(payload.get("type")) if isinstance(payload, dict) else "")

    def delivery(self, headers: HeaderMap, payload: Any) -> str | None:
        return headers.get("X-Webhook-Delivery")

    def sign(self, body: bytes, secret: bytes, now: float, event: str = "", delivery: str = "") -> dict[str, str]:
        headers = {"X-Webhook-Delivery": delivery or str(uuid.uuid4())}
        if event:
            headers["X-Webhook-Event"] = event
        return headers
