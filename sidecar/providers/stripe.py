"""Stripe: Stripe-Signature "t=<unix>,v1=<hex>[,v1=<hex>...]" over "<t>.<body>"."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..errors import SignatureError
from . import HeaderMap, Timestamped, check_age, hmac_hex, key_values, require_match, signed_header, text, timestamp


class Stripe(Timestamped):
    """Stripe: Stripe-Signature "t=<unix>,v1=<hex>[,v1=<hex>...]" over "<t>.<body>".

    The whole `whsec_...` string is the HMAC key. Any v1 may match (Stripe sends
    several while a secret rolls); v0 and unknown keys are ignored. Event type
    and delivery id are the JSON `type` and `id`.
    """

    name = "stripe"

    def verify(self, headers: HeaderMap, body: bytes, secrets: Sequence[bytes], now: float,
               target: str = "") -> None:
        pairs = key_values(signed_header(headers, "Stripe-Signature"), "Stripe-Signature")
        times = [value for key, value in pairs if key == "t"]
        signatures = [value for key, value in pairs if key == "v1"]
        if len(times) != 1 or not signatures:
            raise SignatureError("Stripe-Signature needs one t= and a v1=", reason="malformed")
        ts = timestamp(times[0], "Stripe-Signature t")
        msg = times[0].encode("ascii") + b"." + body
        require_match([hmac_hex(s, msg) for s in secrets], signatures)
        check_age(ts, now, self.tolerance)

    def event(self, headers: HeaderMap, payload: Any) -> str:
        return self.type_field(payload)

    def delivery(self, headers: HeaderMap, payload: Any) -> str | None:
        return (text(payload.get("id")) or None) if isinstance(payload, dict) else None

    def sign(self, body: bytes, secret: bytes, now: float, event: str = "", delivery: str = "") -> dict[str, str]:
        t = str(int(now))
        return {"Stripe-Signature": f"t={t},v1={hmac_hex(secret, t.encode() + b'.' + body)}"}
