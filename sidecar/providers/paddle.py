"""Paddle Billing: Paddle-Signature "ts=<unix>;h1=<hex>[;h1=<hex>]" over "<ts>:<body>"."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from . import HeaderMap, Timestamped, hmac_hex, text, verify_listed


class Paddle(Timestamped):
    """Paddle Billing: Paddle-Signature "ts=<unix>;h1=<hex>" = HMAC-SHA256 of "<ts>:<body>".

    The key is the notification destination's secret key (`pdl_ntfset_...`), used
    as it is. Several h1 entries may come while a secret rotates; any may match.
    Like paddle-python-sdk's Verifier, `tolerance_s` defaults to 5 s. Event type:
    `event_type` ("transaction.completed"); delivery id: `event_id`.
    """

    name = "paddle"
    default_tolerance = 5.0

    def verify(self, headers: HeaderMap, body: bytes, secrets: Sequence[bytes], now: float,
               target: str = "") -> None:
        verify_listed(headers, "Paddle-Signature", "ts", "h1", b":", body, secrets, now, self.tolerance, sep=";")

    def event(self, headers: HeaderMap, payload: Any) -> str:
        return text(payload.get("event_type")) if isinstance(payload, dict) else ""

    def delivery(self, headers: HeaderMap, payload: Any) -> str | None:
        return (text(payload.get("event_id")) or None) if isinstance(payload, dict) else None

    def sign(self, body: bytes, secret: bytes, now: float, event: str = "", delivery: str = "") -> dict[str, str]:
        t = str(int(now))
        return {"Paddle-Signature": f"ts={t};h1={hmac_hex(secret, t.encode() + b':' + body)}"}
