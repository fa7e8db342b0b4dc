"""Zoom: x-zm-signature "v0=" + hex HMAC-SHA256 of "v0:<x-zm-request-timestamp>:<body>"."""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from typing import Any

from ..errors import BadRequest, SignatureError
from . import (
    HeaderMap,
    Reply,
    Timestamped,
    check_age,
    dig,
    hmac_hex,
    matching,
    signed_header,
    strip_prefix,
    text,
    timestamp,
)

VALIDATION = "endpoint.url_validation"


class Zoom(Timestamped):
    """Zoom: x-zm-signature "v0=<hex>" over "v0:<timestamp>:<body>", keyed by the secret token.

    x-zm-request-timestamp is Unix seconds, within `tolerance_s` (default 300 s).
    A verified `endpoint.url_validation` (sent when the URL is saved and every 72 h)
    is answered with its `plainToken` and `encryptedToken` (hex HMAC-SHA256 of the
    plainToken keyed by the secret token that verified it), running no hook.
    Event type: the body's `event` ("meeting.started"). Zoom sends no delivery id,
    so deliveries are not deduplicated.
    """

    name = "zoom"

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        # The url_validation answer needs the secret that verified the request, and
        # reply() is given only the payload. The server runs verify() and reply() of
        # one request on its handler thread, one after the other, so a thread-local
        # carries it across without sharing it between requests.
        self._verified = threading.local()

    def verify(self, headers: HeaderMap, body: bytes, secrets: Sequence[bytes], now: float,
               target: str = "") -> None:
        self._verified.secret = None
        raw_ts = signed_header(headers, "x-zm-request-timestamp")
        ts = timestamp(raw_ts, "x-zm-request-timestamp")
        given = strip_prefix(signed_header(headers, "x-zm-signature"), "v0=", "x-zm-signature")
        msg = b"v0:" + raw_ts.encode("ascii") + b":" + body
        index = matching([hmac_hex(s, msg) for s in secrets], given)
        if index < 0:
            raise SignatureError("signature does not match", reason="mismatch")
        check_age(ts, now, self.tolerance)
        self._verified.secret = secrets[index]

    def event(self, headers: HeaderMap, payload: Any) -> str:
        return text(payload.get("event")) if isinstance(payload, dict) else ""

    def reply(self, event: str, payload: Any) -> Reply | None:
        if event != VALIDATION:
            return None
        plain = dig(payload, "payload.plainToken")
        secret = getattr(self._verified, "secret", None)
        self._verified.secret = None
        if not isinstance(plain, str) or not plain or secret is None:
            raise BadRequest("endpoint.url_validation without a plainToken", reason="invalid_challenge")
        answer = {"plainToken": plain, "encryptedToken": hmac_hex(secret, plain.encode("utf-8"))}
        return Reply(json.dumps(answer).encode())

    def sign(self, body: bytes, secret: bytes, now: float, event: str = "", delivery: str = "") -> dict[str, str]:
        t = str(int(now))
        return {"x-zm-request-timestamp": t, "x-zm-signature": "v0=" + hmac_hex(secret, f"v0:{t}:".encode() + body)}
