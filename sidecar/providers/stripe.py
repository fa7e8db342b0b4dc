"""Stripe: Stripe-Signature "t=<unix>,v1=<hex>[,v1=<hex>...]" over "<t>.<body>"."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from . import HeaderMap, Signed, Timestamped, hmac_hex, text, verify_listed


class Stripe(Timestamped):
    """Stripe: Stripe-Signature "t=<unix>,v1=<hex>[,v1=<hex>...]" over "<t>.<body>".

    The whole `whsec_...` string is the HMAC key. Any v1 may match (Stripe sends
    several while a secret rolls); v0 and unknown keys are ignored. Event type
    and delivery id are the JSON `type` and `id`.
    """

    name = "stripe"

    def verify(self, headers: HeaderMap, body: bytes, secrets: Sequence[bytes], now: float,
               target: str = "") -> None:
        verify_listed(headers, "Stripe-Signature", "t", "v1", b".", body, secrets, now, self.tolerance)

    def event(self, headers: HeaderMap, payload: Any) -> str:
        return self.type_field(payload)

    def delivery(self, headers: HeaderMap, payload: Any) -> str | None:
        return (text(payload.get("id")) or None) if isinstance(payload, dict) else None

    def sign(self, body: bytes, secret: bytes, now: float, event: str = "", delivery: str = "") -> dict[str, str]:
        t = str(int(now))
        return {"Stripe-Signature": f"t={t},v1={hmac_hex(secret, t.encode() + b'.' + body)}"}

    def request(self, body: bytes, secret: bytes, now: float, event: str = "", delivery: str = "",
                target: str = "/", content_type: str = "application/json") -> Signed:
        """Stripe carries the event type and id in the body: `--event`/`--delivery` are written there."""
        notes: list[str] = []
        if event or delivery:
            try:
                payload = json.loads(body) if body.strip() else {}
            except ValueError as e:
                raise ValueError("--event/--delivery for stripe need a JSON object body") from e
            if not isinstance(payload, dict):
                raise ValueError("--event/--delivery for stripe need a JSON object body")
            for key, value in (("type", event), ("id", delivery)):
                if value and payload.get(key) != value:
                    payload[key] = value
                    notes.append(f"{key} set to {value!r} in the body (Stripe has no header for it)")
            if notes:  # else the body goes as it was, byte for byte
                body = json.dumps(payload, separators=(",", ":")).encode()
        return Signed(target, self.sign(body, secret, now), body, notes)
