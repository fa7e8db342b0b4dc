"""One header with an HMAC of the body (the family most senders use), `hmac-sha256` and `none`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from . import (
    HEADER_NAME,
    HeaderMap,
    Option,
    Provider,
    dig,
    header_text,
    hmac_b64,
    hmac_hex,
    new_id,
    prefixed,
    require_match,
    text,
)


class HeaderSigned(Provider):
    """One header holds `prefix` + the hex (or base64) HMAC-SHA256 of the body.

    Subclasses only name their headers; the event type and delivery id come
    from headers too. The first signature header present is the one checked.
    """

    signature_headers: tuple[str, ...] = ()
    prefix: str = ""
    encoding: str = "hex"
    event_headers: tuple[str, ...] = ()
    delivery_headers: tuple[str, ...] = ()
    sample_event: str = ""  # what `sign` puts in the event header when given none

    def signed_bytes(self, headers: HeaderMap, body: bytes) -> bytes:
        """What the MAC covers: the raw body, unless the scheme says otherwise."""
        return body

    def mac(self, secret: bytes, msg: bytes) -> str:
        return hmac_b64(secret, msg) if self.encoding == "base64" else hmac_hex(secret, msg)

    def verify(self, headers: HeaderMap, body: bytes, secrets: Sequence[bytes], now: float,
               target: str = "") -> None:
        given = prefixed(headers, self.prefix, *self.signature_headers)
        msg = self.signed_bytes(headers, body)
        require_match([self.mac(s, msg) for s in secrets], given)

    def event(self, headers: HeaderMap, payload: Any) -> str:
        return header_text(headers, *self.event_headers)

    def delivery(self, headers: HeaderMap, payload: Any) -> str | None:
        return header_text(headers, *self.delivery_headers) or None

    def sign(self, body: bytes, secret: bytes, now: float, event: str = "", delivery: str = "") -> dict[str, str]:
        out = {self.signature_headers[0]: self.prefix + self.mac(secret, body)}
        if self.event_headers and (event or self.sample_event):
            out[self.event_headers[0]] = event or self.sample_event
        if self.delivery_headers:
            out[self.delivery_headers[0]] = delivery or new_id()
        return out


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
        headers = {"X-Webhook-Delivery": delivery or new_id()}
        if event:
            headers["X-Webhook-Event"] = event
        return headers
