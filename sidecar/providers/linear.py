"""Linear: Linear-Signature = hex HMAC-SHA256 of the body; `webhookTimestamp` (ms) in the body."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from ..errors import SignatureError
from . import (
    HeaderMap,
    Signed,
    Timestamped,
    check_age,
    header_text,
    hmac_hex,
    new_id,
    require_match,
    signed_header,
    text,
)


class Linear(Timestamped):
    """Linear: Linear-Signature hex HMAC-SHA256 of the raw body (no prefix).

    The time Linear sent the delivery is the body's `webhookTimestamp` (Unix
    milliseconds), covered by the MAC; like @linear/sdk's LinearWebhooks.verify it
    must lie within `tolerance_s` (default 60 s) of now. Event type: Linear-Event
    (the entity: "Issue", "Comment"), else the body's `type`; filter the action with
    `if: {action: create}`. Delivery id: Linear-Delivery.
    """

    name = "linear"
    default_tolerance = 60.0

    def verify(self, headers: HeaderMap, body: bytes, secrets: Sequence[bytes], now: float,
               target: str = "") -> None:
        given = signed_header(headers, "Linear-Signature")
        require_match([hmac_hex(s, body) for s in secrets], given)
        # Only a signed body is parsed, so this costs nothing for a forged one.
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError) as e:
            raise SignatureError("body is not JSON, so it has no webhookTimestamp", reason="malformed") from e
        ts = payload.get("webhookTimestamp") if isinstance(payload, dict) else None
        if ts is None:
            raise SignatureError("missing webhookTimestamp field", reason="missing")
        if isinstance(ts, bool) or not isinstance(ts, int) or not 0 <= ts < 10**15:
            raise SignatureError("webhookTimestamp is not Unix time in milliseconds", reason="malformed")
        check_age(ts / 1000, now, self.tolerance)

    def event(self, headers: HeaderMap, payload: Any) -> str:
        return header_text(headers, "Linear-Event") or self.type_field(payload)

    def delivery(self, headers: HeaderMap, payload: Any) -> str | None:
        return header_text(headers, "Linear-Delivery") or None

    def sign(self, body: bytes, secret: bytes, now: float, event: str = "", delivery: str = "") -> dict[str, str]:
        return {"Linear-Signature": hmac_hex(secret, body), "Linear-Delivery": delivery or new_id(),
                "Linear-Event": event or "Issue"}

    def request(self, body: bytes, secret: bytes, now: float, event: str = "", delivery: str = "",
                target: str = "/", content_type: str = "application/json") -> Signed:
        """The body with `webhookTimestamp` set to now (it is signed), then signed."""
        notes: list[str] = []
        try:
            payload = json.loads(body)
        except ValueError:
            payload = None
        if isinstance(payload, dict):
            payload["webhookTimestamp"] = int(now * 1000)
            body = json.dumps(payload, separators=(",", ":")).encode()
            notes.append("webhookTimestamp set to now in the body")
        if not event and isinstance(payload, dict):
            event = text(payload.get("type"))
        return Signed(target, self.sign(body, secret, now, event=event, delivery=delivery), body, notes)
