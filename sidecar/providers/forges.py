"""Git forges that sign the body with one HMAC header: GitHub, Gitea/Forgejo, Bitbucket Cloud."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qsl

from ..errors import SignatureError
from . import HeaderMap, Option, Reply, is_form, json_or_form, prefixed, require_hmac
from .generic import HeaderSigned


class GitHub(HeaderSigned):
    """GitHub: X-Hub-Signature-256 = "sha256=" + hex HMAC-SHA256 of the raw body.

    Legacy X-Hub-Signature ("sha1=") is accepted only with `allow_sha1: true`,
    and only when X-Hub-Signature-256 is absent. Form posts (`payload=`) are
    signed over the raw form body like JSON ones.
    """

    name = "github"
    options = {"allow_sha1": Option(bool, False)}
    signature_headers = ("X-Hub-Signature-256",)
    prefix = "sha256="
    event_headers = ("X-GitHub-Event",)
    delivery_headers = ("X-GitHub-Delivery",)
    sample_event = "push"

    def verify(self, headers: HeaderMap, body: bytes, secrets: Sequence[bytes], now: float,
               target: str = "") -> None:
        if self.opts["allow_sha1"] and not headers.get("X-Hub-Signature-256") and headers.get("X-Hub-Signature"):
            require_hmac(secrets, body, prefixed(headers, "sha1=", "X-Hub-Signature"), "sha1")
            return
        super().verify(headers, body, secrets, now)

    def parse(self, headers: HeaderMap, body: bytes) -> Any:
        return json_or_form(headers, body)

    def reply(self, event: str, payload: Any) -> Reply | None:
        if event == "ping":
            return Reply(b'{"status":"pong"}')
        return None


class Gitea(HeaderSigned):
    """Gitea and Forgejo: X-Gitea-Signature / X-Forgejo-Signature = hex HMAC-SHA256, no prefix.

    Gitea signs the payload JSON itself: for a form post the MAC covers the
    `payload` field, so such a body must be exactly one `payload=` field (nothing
    unsigned can ride along to the hook). With no secret set in Gitea the
    signature headers are empty, which is a 401 like a missing header.
    """

    name = "gitea"
    signature_headers = ("X-Gitea-Signature", "X-Forgejo-Signature")
    event_headers = ("X-Gitea-Event", "X-Forgejo-Event")
    delivery_headers = ("X-Gitea-Delivery", "X-Forgejo-Delivery")
    sample_event = "push"

    def signed_bytes(self, headers: HeaderMap, body: bytes) -> bytes:
        if not is_form(headers):
            return body
        try:
            pairs = parse_qsl(body.decode("ascii"), keep_blank_values=True, strict_parsing=True,
                              errors="strict", max_num_fields=1)
        except (UnicodeDecodeError, ValueError) as e:
            raise SignatureError("form body must be exactly one 'payload' field", reason="malformed") from e
        if len(pairs) != 1 or pairs[0][0] != "payload":
            raise SignatureError("form body must be exactly one 'payload' field", reason="malformed")
        return pairs[0][1].encode("utf-8")

    def parse(self, headers: HeaderMap, body: bytes) -> Any:
        return json_or_form(headers, body)


class Bitbucket(HeaderSigned):
    """Bitbucket Cloud: X-Hub-Signature = "sha256=" + hex HMAC-SHA256; X-Event-Key; X-Request-UUID."""

    name = "bitbucket"
    signature_headers = ("X-Hub-Signature",)
    prefix = "sha256="
    event_headers = ("X-Event-Key",)
    delivery_headers = ("X-Request-UUID",)
    sample_event = "repo:push"
