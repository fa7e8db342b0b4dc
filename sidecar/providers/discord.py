"""Discord interactions (and webhook events): Ed25519 over "<timestamp><body>"."""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from typing import Any

from ..errors import SignatureError
from . import HeaderMap, Reply, Signed, Timestamped, check_age, dig, signed_header, text, timestamp

HEX_KEY = re.compile(rb"[0-9a-fA-F]{64}")
# Discord sends the 64-byte signature as lowercase hex; any other spelling is refused,
# so a header is accepted in exactly one form.
HEX_SIGNATURE = re.compile(r"[0-9a-f]{128}")
INTERACTION_TYPES = {1: "PING", 2: "APPLICATION_COMMAND", 3: "MESSAGE_COMPONENT",
                     4: "APPLICATION_COMMAND_AUTOCOMPLETE", 5: "MODAL_SUBMIT"}
# What Discord needs back within 3 s (else "This interaction failed"), by interaction type: a deferred
# message (5: the hook follows up through the interaction token), a deferred update for a component
# (6: the message stays as it is), and for autocomplete, whose only valid answer is a list of choices, none.
DEFERRED = {3: b'{"type":6}', 4: b'{"type":8,"data":{"choices":[]}}'}
DEFERRED_MESSAGE = b'{"type":5}'
# Webhook events (and their PING) want 204 and no body, as Discord's own libraries answer.
NO_CONTENT = Reply(b"", "text/plain", 204)


def _ed25519() -> Any:
    # Imported on first use: the sidecar's idle memory does not grow for endpoints
    # that never see Discord, and the module loads only where Ed25519 is needed.
    from cryptography.hazmat.primitives.asymmetric import ed25519

    return ed25519


@functools.lru_cache(maxsize=64)
def _public_key(secret: bytes) -> Any:
    """The loaded Ed25519 public key of a hex secret (None if it is not one); public keys may be cached."""
    if not HEX_KEY.fullmatch(secret.strip()):
        return None
    try:
        return _ed25519().Ed25519PublicKey.from_public_bytes(bytes.fromhex(secret.strip().decode()))
    except ValueError:
        return None


class Discord(Timestamped):
    """Discord: X-Signature-Ed25519 (hex) over X-Signature-Timestamp + body.

    The secret is the application's public key (64 hex digits, from the Developer
    Portal); several keys may be listed. Verification uses Ed25519 from the
    `cryptography` package. Discord sends deliberately invalid signatures to check
    that an endpoint refuses them. X-Signature-Timestamp (Unix seconds) must lie
    within `tolerance_s` (default 300 s). A verified PING (interaction type 1) is
    answered {"type": 1} without a hook, a webhook events PING 204 without a hook.
    Other interactions are answered {"type": 5} (a deferred message), {"type": 6}
    for message components, an empty choice list for autocomplete; webhook events
    204 with an empty body. Event type: the interaction type's name
    ("APPLICATION_COMMAND") or, for webhook events, `event.type`
    ("APPLICATION_AUTHORIZED"). Delivery id: the interaction `id`.
    """

    name = "discord"
    signing_key_env = "DISCORD_PRIVATE_KEY"

    @classmethod
    def secret_problem(cls, secret: bytes) -> str | None:
        if not HEX_KEY.fullmatch(secret.strip()):
            return "is not an Ed25519 public key (64 hex digits, the application's PUBLIC KEY)"
        return None

    def verify(self, headers: HeaderMap, body: bytes, secrets: Sequence[bytes], now: float,
               target: str = "") -> None:
        given = signed_header(headers, "X-Signature-Ed25519")
        raw_ts = signed_header(headers, "X-Signature-Timestamp")
        ts = timestamp(raw_ts, "X-Signature-Timestamp")
        if not HEX_SIGNATURE.fullmatch(given):
            raise SignatureError("X-Signature-Ed25519 must be 128 lowercase hex digits", reason="malformed")
        from cryptography.exceptions import InvalidSignature

        signature, msg = bytes.fromhex(given), raw_ts.encode("ascii") + body
        ok = False
        for secret in secrets:
            key = _public_key(secret)
            if key is None:
                continue
            try:
                key.verify(signature, msg)
                ok = True
            except (InvalidSignature, ValueError):
                pass
        if not ok:
            raise SignatureError("signature does not match", reason="mismatch")
        check_age(ts, now, self.tolerance)

    def event(self, headers: HeaderMap, payload: Any) -> str:
        if not isinstance(payload, dict):
            return ""
        if isinstance(payload.get("event"), dict):  # a webhook event
            return text(dig(payload, "event.type"))
        kind = payload.get("type")
        if isinstance(kind, bool) or not isinstance(kind, int):
            return ""
        if kind == 0 and "token" not in payload:  # the webhook events endpoint check
            return "WEBHOOK_PING"
        return INTERACTION_TYPES.get(kind, str(kind))

    def delivery(self, headers: HeaderMap, payload: Any) -> str | None:
        return (text(payload.get("id")) or None) if isinstance(payload, dict) else None

    def reply(self, event: str, payload: Any) -> Reply | None:
        if event == "PING":
            return Reply(b'{"type":1}')
        if event == "WEBHOOK_PING":
            return NO_CONTENT
        return None

    def answer(self, headers: HeaderMap, event: str, payload: Any) -> Reply | None:
        if not isinstance(payload, dict):
            return None
        if isinstance(payload.get("event"), dict):  # a webhook event (type 1)
            return NO_CONTENT
        kind = payload.get("type")
        if isinstance(kind, bool) or not isinstance(kind, int) or kind < 2:
            return None
        return Reply(DEFERRED.get(kind, DEFERRED_MESSAGE))

    def sign(self, body: bytes, secret: bytes, now: float, event: str = "", delivery: str = "") -> dict[str, str]:
        """Sign with the PRIVATE key (32-byte seed as 64 hex digits); the endpoint holds the public one."""
        if not HEX_KEY.fullmatch(secret.strip()):
            raise ValueError("discord signs with an Ed25519 private key: 64 hex digits (the 32-byte seed)")
        key = _ed25519().Ed25519PrivateKey.from_private_bytes(bytes.fromhex(secret.strip().decode()))
        t = str(int(now))
        return {"X-Signature-Ed25519": key.sign(t.encode() + body).hex(), "X-Signature-Timestamp": t}

    def request(self, body: bytes, secret: bytes, now: float, event: str = "", delivery: str = "",
                target: str = "/", content_type: str = "application/json") -> Signed:
        headers = self.sign(body, secret, now, event=event, delivery=delivery)
        return Signed(target, headers, body, [f"public key (the endpoint's secret): {public_key(secret)}"])


def public_key(private_hex: bytes) -> str:
    """The hex public key of a hex Ed25519 private key (seed)."""
    from cryptography.hazmat.primitives import serialization

    key = _ed25519().Ed25519PrivateKey.from_private_bytes(bytes.fromhex(private_hex.strip().decode()))
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()
