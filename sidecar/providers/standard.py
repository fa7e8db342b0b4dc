"""Standard Webhooks (and Svix): webhook-id, webhook-timestamp, webhook-signature."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from typing import Any

from ..errors import SignatureError
from . import (
    MAX_SIGNATURES,
    HeaderMap,
    Timestamped,
    check_age,
    header_text,
    hmac_b64,
    new_id,
    require_match,
    signed_header,
    timestamp,
)


def whsec_key(secret: bytes) -> bytes | None:
    """The HMAC key of a `whsec_<base64>` (or bare base64) secret; None if it is not base64."""
    raw = secret.removeprefix(b"whsec_")
    try:
        key = base64.b64decode(raw + b"=" * (-len(raw) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None
    return key or None


def verify_signed(headers: HeaderMap, body: bytes, keys: Sequence[bytes], now: float, tolerance: float,
                  family: str = "webhook-") -> None:
    """Check `<family>signature` over "<id>.<timestamp>.<body>" with any of `keys` (raw HMAC keys)."""
    msg_id = signed_header(headers, family + "id")
    raw_ts = signed_header(headers, family + "timestamp")
    ts = timestamp(raw_ts, family + "timestamp")
    entries = signed_header(headers, family + "signature").split(" ")
    if len(entries) > MAX_SIGNATURES:
        raise SignatureError(f"{family}signature lists too many signatures", reason="malformed")
    pairs = [entry.partition(",") for entry in entries]
    if any(not version or not sep or not sig for version, sep, sig in pairs):
        raise SignatureError(f"{family}signature must be space-separated 'v1,<base64>' entries", reason="malformed")
    signatures = [sig for version, _, sig in pairs if version == "v1"]
    if not signatures:
        raise SignatureError(f"{family}signature has no v1 signature", reason="malformed")
    if not keys:
        raise SignatureError("no secret of this endpoint is a whsec_ base64 key", reason="bad_secret")
    msg = f"{msg_id}.{raw_ts}.".encode("ascii") + body
    require_match([hmac_b64(k, msg) for k in keys], signatures)
    check_age(ts, now, tolerance)


def sign_standard(body: bytes, key: bytes, now: float, msg_id: str) -> dict[str, str]:
    t = str(int(now))
    signature = hmac_b64(key, f"{msg_id}.{t}.".encode() + body)
    return {"webhook-id": msg_id, "webhook-timestamp": t, "webhook-signature": "v1," + signature}


class StandardWebhooks(Timestamped):
    """Standard Webhooks (and Svix): webhook-id, webhook-timestamp, webhook-signature.

    The signature header is a space-separated list of "<version>,<base64>";
    every "v1" entry is a candidate, other versions are ignored. The MAC covers
    "<id>.<timestamp>.<body>" and its key is the base64 after `whsec_`; a secret
    without the prefix is base64-decoded too, as the reference libraries do.
    The `svix-` names are used when no `webhook-` header is present.
    """

    name = "standard"
    families = ("webhook-", "svix-")
    key = staticmethod(whsec_key)

    @classmethod
    def secret_problem(cls, secret: bytes) -> str | None:
        if whsec_key(secret) is None:
            return "is not a Standard Webhooks secret (whsec_ followed by base64)"
        return None

    def family(self, headers: HeaderMap) -> str:
        present = (f for f in self.families if any(headers.get(f + n) for n in ("id", "timestamp", "signature")))
        return next(present, self.families[0])

    def verify(self, headers: HeaderMap, body: bytes, secrets: Sequence[bytes], now: float,
               target: str = "") -> None:
        keys = [k for k in map(whsec_key, secrets) if k is not None]
        verify_signed(headers, body, keys, now, self.tolerance, self.family(headers))

    def event(self, headers: HeaderMap, payload: Any) -> str:
        return self.type_field(payload)

    def delivery(self, headers: HeaderMap, payload: Any) -> str | None:
        return header_text(headers, *(f + "id" for f in self.families)) or None

    def sign(self, body: bytes, secret: bytes, now: float, event: str = "", delivery: str = "") -> dict[str, str]:
        key = whsec_key(secret)
        if key is None:
            raise ValueError("the secret is not a Standard Webhooks secret (whsec_ followed by base64)")
        return sign_standard(body, key, now, delivery or "msg_" + new_id().replace("-", ""))
