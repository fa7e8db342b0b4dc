"""Transport credentials: a shared secret in Authorization (Basic or Bearer), nothing signed."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from typing import Any, ClassVar

from ..errors import SignatureError
from . import HeaderMap, Provider, any_equal, header_text, new_id, signed_header
from .generic import EVENT_OPTIONS, check_event_options, configured_event


class Credential(Provider):
    """A shared credential in the Authorization header, compared in constant time.

    It authenticates the transport only: it does not cover the body, has no
    timestamp, and anyone who sees one request (a proxy log, a non-TLS hop) can
    send any body with it. Use it for senders that can do nothing better
    (Prometheus Alertmanager, Jira, Docker Hub behind a proxy), over TLS.
    The event type comes from `event_header` or the dotted JSON path `event_field`;
    the delivery id from `delivery_header` (otherwise every delivery is new).
    """

    scheme: ClassVar[str] = ""
    options = dict(EVENT_OPTIONS)

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        check_event_options(self.opts)

    def credential(self, value: str) -> bytes:
        """The secret bytes the Authorization value after the scheme carries."""
        raise NotImplementedError

    def verify(self, headers: HeaderMap, body: bytes, secrets: Sequence[bytes], now: float,
               target: str = "") -> None:
        value = signed_header(headers, "Authorization")
        scheme, _, rest = value.partition(" ")
        # The scheme name is case-insensitive (RFC 7235); the credentials are taken exactly,
        # after one space, as every sender writes them.
        if scheme.lower() != self.scheme.lower() or not rest or rest != rest.strip(" "):
            raise SignatureError(f"Authorization must be '{self.scheme} <credentials>'", reason="malformed")
        if not any_equal(list(secrets), [self.credential(rest)]):
            raise SignatureError("Authorization credentials do not match", reason="mismatch")

    def event(self, headers: HeaderMap, payload: Any) -> str:
        return configured_event(self.opts, headers, payload)

    def delivery(self, headers: HeaderMap, payload: Any) -> str | None:
        name = self.opts["delivery_header"]
        return (header_text(headers, name) or None) if name else None

    def authorization(self, secret: bytes) -> str:
        raise NotImplementedError

    def sign(self, body: bytes, secret: bytes, now: float, event: str = "", delivery: str = "") -> dict[str, str]:
        out = {"Authorization": self.authorization(secret)}
        if self.opts["event_header"] and event:
            out[self.opts["event_header"]] = event
        if self.opts["delivery_header"]:
            out[self.opts["delivery_header"]] = delivery or new_id()
        return out


class Basic(Credential):
    """`basic`: Authorization "Basic base64(user:password)"; the secret is "user:password".

    The decoded credentials are compared with every secret (rotation); base64 is
    decoded strictly, so a credential with stray characters is malformed.
    """

    name = "basic"
    scheme = "Basic"

    @classmethod
    def secret_problem(cls, secret: bytes) -> str | None:
        if b":" not in secret:
            return "is not 'user:password' (Basic credentials need a colon)"
        return None

    def credential(self, value: str) -> bytes:
        try:
            decoded = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as e:
            raise SignatureError("Authorization Basic credentials are not base64", reason="malformed") from e
        # b64decode forgives surplus padding ("...=="+"="): only the one canonical spelling is accepted,
        # so no other header value stands for the same credentials.
        if base64.b64encode(decoded).decode("ascii") != value:
            raise SignatureError("Authorization Basic credentials are not canonical base64", reason="malformed")
        return decoded

    def authorization(self, secret: bytes) -> str:
        return "Basic " + base64.b64encode(secret).decode("ascii")


class Bearer(Credential):
    """`bearer`: Authorization "Bearer <token>"; the secret is the token."""

    name = "bearer"
    scheme = "Bearer"

    def credential(self, value: str) -> bytes:
        return value.encode("ascii")

    def authorization(self, secret: bytes) -> str:
        return "Bearer " + secret.decode("latin-1")
