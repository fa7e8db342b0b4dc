"""GitLab: the secret token in X-Gitlab-Token, or the signing token (Standard Webhooks headers)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..errors import SignatureError
from . import HeaderMap, Timestamped, any_equal, header, header_text, new_id
from .standard import sign_standard, verify_signed, whsec_key

SIGNING_PREFIX = b"whsec_"


class GitLab(Timestamped):
    """GitLab: X-Gitlab-Token is the secret itself, or a `whsec_` signing token signs the body.

    A secret that starts with `whsec_` is a signing token: GitLab then sends
    Standard Webhooks headers (webhook-id = Idempotency-Key, webhook-timestamp,
    webhook-signature "v1,<base64>" over "<id>.<timestamp>.<body>", keyed by the
    base64 after `whsec_`) and such a secret never matches X-Gitlab-Token: an
    endpoint whose secrets are all signing tokens accepts only signed deliveries.
    Any other secret is a secret token, compared in constant time with
    X-Gitlab-Token (which does not cover the body).

    The event type is the X-Gitlab-Event header ("Push Hook"); the payload's
    `object_kind` ("push") is filtered with `if: {object_kind: push}`. The
    delivery id is Idempotency-Key (the same on every retry), else
    X-Gitlab-Event-UUID.
    """

    name = "gitlab"

    @classmethod
    def secret_problem(cls, secret: bytes) -> str | None:
        if secret.startswith(SIGNING_PREFIX) and whsec_key(secret) is None:
            return "starts with whsec_ but is not a signing token (whsec_ followed by base64)"
        return None

    def verify(self, headers: HeaderMap, body: bytes, secrets: Sequence[bytes], now: float,
               target: str = "") -> None:
        keys = [k for s in secrets if s.startswith(SIGNING_PREFIX) and (k := whsec_key(s)) is not None]
        tokens = [s for s in secrets if not s.startswith(SIGNING_PREFIX)]
        if keys and (headers.get("webhook-signature") or not tokens):
            verify_signed(headers, body, keys, now, self.tolerance)
            return
        given = header(headers, "X-Gitlab-Token")
        try:
            # http.client decodes header bytes as latin-1: this gives back the bytes sent.
            given_b = given.encode("latin-1")
        except UnicodeEncodeError:
            given_b = b""
        if not any_equal(tokens, [given_b]):
            raise SignatureError("X-Gitlab-Token does not match", reason="mismatch")

    def event(self, headers: HeaderMap, payload: Any) -> str:
        return header_text(headers, "X-Gitlab-Event")

    def delivery(self, headers: HeaderMap, payload: Any) -> str | None:
        return header_text(headers, "Idempotency-Key", "webhook-id", "X-Gitlab-Event-UUID") or None

    def sign(self, body: bytes, secret: bytes, now: float, event: str = "", delivery: str = "") -> dict[str, str]:
        delivery = delivery or new_id()
        out = {"X-Gitlab-Event": event or "Push Hook", "X-Gitlab-Event-UUID": delivery, "Idempotency-Key": delivery}
        key = whsec_key(secret) if secret.startswith(SIGNING_PREFIX) else None
        if key is not None:
            return {**out, **sign_standard(body, key, now, delivery)}
        return {"X-Gitlab-Token": secret.decode("latin-1"), **out}
