"""Twitch EventSub: Twitch-Eventsub-Message-Signature "sha256=" + hex HMAC of id + timestamp + body."""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from ..errors import SignatureError
from . import (
    HeaderMap,
    Reply,
    Timestamped,
    challenge_reply,
    dig,
    header_text,
    hmac_hex,
    new_id,
    prefixed,
    signed_header,
    text,
)

# RFC 3339 as Twitch sends it: "2023-07-19T10:11:12.123456789Z" (nanoseconds, or fewer digits).
RFC3339 = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt]([0-9]{2}):([0-9]{2}):([0-9]{2})(\.[0-9]{1,9})?"
                     r"(?:[Zz]|([+-])([0-9]{2}):([0-9]{2}))")
PREFIX = "Twitch-Eventsub-"
VERIFICATION = "webhook_callback_verification"


def rfc3339(value: str, name: str) -> float:
    """Unix seconds of an RFC 3339 time, or SignatureError (malformed)."""
    m = RFC3339.fullmatch(value)
    if not m:
        raise SignatureError(f"{name} is not an RFC 3339 time", reason="malformed")
    try:
        year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
        moment = datetime(year, month, day, hour, minute, second, tzinfo=UTC)
    except ValueError as e:  # month 13, February 30, second 60
        raise SignatureError(f"{name} is not an RFC 3339 time", reason="malformed") from e
    offset = 0
    if m.group(8):
        offset = (int(m.group(9)) * 3600 + int(m.group(10)) * 60) * (1 if m.group(8) == "+" else -1)
    return moment.timestamp() - offset + float(m.group(7) or 0)


class Twitch(Timestamped):
    """Twitch EventSub (webhook transport): HMAC-SHA256 of message id + timestamp + body.

    Twitch-Eventsub-Message-Signature is "sha256=<hex>", keyed by the subscription's
    secret. Twitch-Eventsub-Message-Timestamp (RFC 3339, nanoseconds) is signed as
    sent and must lie within `tolerance_s` (default 600 s: Twitch's own guide drops
    messages older than 10 minutes). A verified `webhook_callback_verification` is
    answered with its challenge as text/plain, running no hook. Event type: the
    subscription type ("channel.follow") for notifications, else the message type
    ("revocation"). Delivery id: Twitch-Eventsub-Message-Id (the same on a resend).
    """

    name = "twitch"
    default_tolerance = 600.0

    def verify(self, headers: HeaderMap, body: bytes, secrets: Sequence[bytes], now: float,
               target: str = "") -> None:
        msg_id = signed_header(headers, PREFIX + "Message-Id")
        raw_ts = signed_header(headers, PREFIX + "Message-Timestamp")
        ts = rfc3339(raw_ts, PREFIX + "Message-Timestamp")
        given = prefixed(headers, "sha256=", PREFIX + "Message-Signature")
        self.require_signed(secrets, (msg_id + raw_ts).encode("ascii") + body, given, ts, now)

    def event(self, headers: HeaderMap, payload: Any) -> str:
        kind = header_text(headers, PREFIX + "Message-Type")
        if kind and kind != "notification":
            return kind
        return header_text(headers, PREFIX + "Subscription-Type") or text(dig(payload, "subscription.type"))

    def delivery(self, headers: HeaderMap, payload: Any) -> str | None:
        return header_text(headers, PREFIX + "Message-Id") or None

    def reply(self, event: str, payload: Any) -> Reply | None:
        return challenge_reply(payload, event) if event == VERIFICATION else None

    def sign(self, body: bytes, secret: bytes, now: float, event: str = "", delivery: str = "") -> dict[str, str]:
        msg_id = delivery or new_id()
        whole = int(now)
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{int((now - whole) * 1e9):09d}Z"
        kind = event if event in (VERIFICATION, "revocation") else "notification"
        out = {PREFIX + "Message-Id": msg_id, PREFIX + "Message-Timestamp": ts,
               PREFIX + "Message-Signature": "sha256=" + hmac_hex(secret, (msg_id + ts).encode() + body),
               PREFIX + "Message-Type": kind}
        if kind == "notification":
            out[PREFIX + "Subscription-Type"] = event or "channel.follow"
        return out
