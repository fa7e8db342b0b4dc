"""Mailgun: the signature travels inside the body and covers only "<timestamp><token>"."""

from __future__ import annotations

import json
import secrets as secrets_mod
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlencode

from ..errors import BadRequest, SignatureError
from . import (
    TIMESTAMP,
    HeaderMap,
    Signed,
    Timestamped,
    check_age,
    dig,
    form_fields,
    form_pairs,
    hmac_hex,
    is_form,
    is_form_type,
    parse_json,
    require_match,
    text,
)

FIELDS = ("timestamp", "token", "signature")


def _signature_fields(headers: HeaderMap, body: bytes) -> dict[str, Any]:
    """The body's signature values: the JSON `signature` object, or the form fields."""
    try:
        if is_form(headers):
            fields: Any = form_fields(body)
        else:
            fields = parse_json(body)
            fields = fields.get("signature") if isinstance(fields, dict) else None
    except BadRequest as e:
        raise SignatureError("body is neither JSON nor a form, so it carries no signature", reason="malformed") from e
    if fields is None:
        raise SignatureError("missing signature object in the body", reason="missing")
    if not isinstance(fields, dict):
        raise SignatureError("signature in the body must be an object", reason="malformed")
    return fields


class Mailgun(Timestamped):
    """Mailgun: HMAC-SHA256 hex of "<timestamp><token>" keyed by the webhook signing key.

    The values are in the body: the JSON `signature` object (`timestamp`, `token`,
    `signature`) of webhooks, or the same form fields of legacy webhooks and routes
    (application/x-www-form-urlencoded; multipart bodies are not read). The
    signature does NOT cover the rest of the body: anyone who captured one signed
    delivery can attach other event data to its signature until the timestamp is
    older than `tolerance_s` (default 900 s, as the mailgun SDK), and the token
    being the delivery id, such a replay is deduplicated against the original.
    Event type: `event-data.event` ("delivered"), or the form's `event`.
    """

    name = "mailgun"
    default_tolerance = 900.0

    def verify(self, headers: HeaderMap, body: bytes, secrets: Sequence[bytes], now: float,
               target: str = "") -> None:
        fields = _signature_fields(headers, body)
        values = {}
        for name in FIELDS:
            value = fields.get(name)
            if value is None or value == "":
                raise SignatureError(f"missing signature {name} in the body", reason="missing")
            if name == "timestamp" and isinstance(value, int) and not isinstance(value, bool):
                value = str(value)
            if not isinstance(value, str) or not (value.isascii() and value.isprintable()):
                raise SignatureError(f"signature {name} must be printable ASCII text", reason="malformed")
            values[name] = value
        if not TIMESTAMP.fullmatch(values["timestamp"]):
            raise SignatureError("signature timestamp is not a Unix time in seconds", reason="malformed")
        msg = (values["timestamp"] + values["token"]).encode("ascii")
        require_match([hmac_hex(s, msg) for s in secrets], values["signature"])
        check_age(int(values["timestamp"]), now, self.tolerance)

    def parse(self, headers: HeaderMap, body: bytes) -> Any:
        return form_fields(body) if is_form(headers) else parse_json(body)

    def event(self, headers: HeaderMap, payload: Any) -> str:
        if not isinstance(payload, dict):
            return ""
        return text(dig(payload, "event-data.event")) or text(payload.get("event"))

    def delivery(self, headers: HeaderMap, payload: Any) -> str | None:
        if not isinstance(payload, dict):
            return None
        return text(dig(payload, "signature.token")) or text(payload.get("token")) or None

    def sign(self, body: bytes, secret: bytes, now: float, event: str = "", delivery: str = "") -> dict[str, str]:
        return {}  # the signature goes into the body: see request()

    def request(self, body: bytes, secret: bytes, now: float, event: str = "", delivery: str = "",
                target: str = "/", content_type: str = "application/json") -> Signed:
        """The body with a fresh signature written into it (the JSON object, or the form fields)."""
        t, token = str(int(now)), delivery or secrets_mod.token_hex(25)
        signature = {"timestamp": t, "token": token, "signature": hmac_hex(secret, (t + token).encode())}
        if is_form_type(content_type):
            pairs = [(k, v) for k, v in form_pairs(body) if k not in FIELDS]
            if event and not any(k == "event" for k, _ in pairs):
                pairs.append(("event", event))
            return Signed(target, {}, urlencode(pairs + list(signature.items())).encode())
        payload = json.loads(body) if body.strip() else {}
        if not isinstance(payload, dict):
            raise ValueError("a Mailgun JSON body must be an object")
        payload["signature"] = signature
        if event:
            data = payload.setdefault("event-data", {})
            if isinstance(data, dict):
                data.setdefault("event", event)
        return Signed(target, {}, json.dumps(payload, separators=(",", ":")).encode(),
                      ["the signature is written into the body"])
