"""PagerDuty v3 webhooks: X-PagerDuty-Signature "v1=<hex>[,v1=<hex>]" over the body."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..errors import SignatureError
from . import HeaderMap, Provider, dig, header_text, hmac_hex, key_values, new_id, require_match, signed_header, text


class PagerDuty(Provider):
    """PagerDuty (v3 webhook subscriptions): X-PagerDuty-Signature over the raw body.

    The header lists one "v1=<hex HMAC-SHA256>" per signing secret PagerDuty holds
    (several while a secret rotates); any may match. Entries of other versions are
    ignored. Event type: `event.event_type` ("incident.triggered"; the subscription
    test is "pagey.ping"). Delivery id: X-Webhook-Id.
    """

    name = "pagerduty"

    def verify(self, headers: HeaderMap, body: bytes, secrets: Sequence[bytes], now: float,
               target: str = "") -> None:
        pairs = key_values(signed_header(headers, "X-PagerDuty-Signature"), "X-PagerDuty-Signature")
        signatures = [value for key, value in pairs if key == "v1"]
        if not signatures:
            raise SignatureError("X-PagerDuty-Signature has no v1= signature", reason="malformed")
        require_match([hmac_hex(s, body) for s in secrets], signatures)

    def event(self, headers: HeaderMap, payload: Any) -> str:
        return text(dig(payload, "event.event_type"))

    def delivery(self, headers: HeaderMap, payload: Any) -> str | None:
        return header_text(headers, "X-Webhook-Id") or None

    def sign(self, body: bytes, secret: bytes, now: float, event: str = "", delivery: str = "") -> dict[str, str]:
        return {"X-PagerDuty-Signature": "v1=" + hmac_hex(secret, body), "X-Webhook-Id": delivery or new_id(),
                "X-Webhook-Subscription": "PSUBSCR"}
