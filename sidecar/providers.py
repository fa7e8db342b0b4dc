"""Sender schemes: one small class per provider behind one interface.

A provider verifies the signature on the raw body bytes (before anything is
parsed), parses the payload, and names the event type and delivery id. Adding a
sender means adding one subclass and registering it in PROVIDERS.
"""

from __future__ import annotations

import hmac
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol
from urllib.parse import parse_qs

from .errors import BadRequest, SignatureError

MAX_JSON_DEPTH = 64


class HeaderMap(Protocol):
    """Case-insensitive header lookup, as http.client.HTTPMessage provides."""

    def get(self, name: str, default: Any = None) -> Any: ...


@dataclass(frozen=True)
class Reply:
    """An answer the provider gives itself (e.g. a ping); no hook runs."""

    body: bytes
    content_type: str = "application/json"


@dataclass(frozen=True)
class Option:
    """An endpoint setting a provider accepts in config.yaml."""

    type: type
    default: Any


class Provider:
    """Base class: the interface every sender implements."""

    name: ClassVar[str] = ""
    needs_secret: ClassVar[bool] = True
    options: ClassVar[dict[str, Option]] = {}

    def __init__(self, **options: Any) -> None:
        self.opts = {k: options.get(k, o.default) for k, o in self.options.items()}

    def verify(self, headers: HeaderMap, body: bytes, secrets: Sequence[bytes], now: float) -> None:
        """Raise SignatureError unless one of `secrets` signed `body`."""
        raise NotImplementedError

    def parse(self, headers: HeaderMap, body: bytes) -> Any:
        """The payload as JSON values; BadRequest if it is not valid JSON."""
        return parse_json(body)

    def event(self, headers: HeaderMap, payload: Any) -> str:
        """The event type, or "" when the delivery carries none."""
        return ""

    def delivery(self, headers: HeaderMap, payload: Any) -> str | None:
        """The sender's delivery id, when it sends one."""
        return None

    def reply(self, event: str, payload: Any) -> Reply | None:
        """An immediate answer for protocol events that run no hook."""
        return None

    def sign(self, body: bytes, secret: bytes, now: float, event: str = "", delivery: str = "") -> dict[str, str]:
        """The headers a sender would add to `body` (for `webhook-sidecar sign|send`)."""
        raise NotImplementedError


def header(headers: HeaderMap, name: str) -> str:
    """A header's value, or SignatureError naming it when it is missing or empty."""
    value = headers.get(name)
    if not value:
        raise SignatureError(f"missing {name} header", reason="missing")
    return str(value)


def hmac_hex(secret: bytes, msg: bytes, digest: str = "sha256") -> str:
    return hmac.new(secret, msg, digest).hexdigest()


def matches_any(expected: Sequence[str], given: str) -> bool:
    """Constant-time comparison of `given` against every expected value (rotation).

    Every candidate is compared, so timing does not reveal which secret matched.
    """
    try:
        given_b = given.encode("ascii")
    except UnicodeEncodeError:
        return False
    ok = False
    for candidate in expected:
        ok |= hmac.compare_digest(candidate.encode("ascii"), given_b)
    return ok


def _depth_ok(value: Any, limit: int = MAX_JSON_DEPTH) -> bool:
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return False
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return True


def parse_json(body: bytes | str) -> Any:
    """Decode a JSON payload; BadRequest for invalid or absurdly nested documents."""
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise BadRequest("body is not valid JSON", reason="invalid_json") from e
    if not _depth_ok(payload):
        raise BadRequest(f"JSON nested deeper than {MAX_JSON_DEPTH}", reason="too_deep")
    return payload


def is_form(headers: HeaderMap) -> bool:
    ctype = str(headers.get("Content-Type") or "").split(";")[0].strip().lower()
    return ctype == "application/x-www-form-urlencoded"


def form_field(body: bytes, field: str) -> str:
    """One field of a form-encoded body; BadRequest when it is absent."""
    try:
        values = parse_qs(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False).get(field)
    except UnicodeDecodeError as e:
        raise BadRequest("form body is not UTF-8", reason="invalid_form") from e
    if not values:
        raise BadRequest(f"form body has no {field!r} field", reason="invalid_form")
    return values[0]


def text(value: Any) -> str:
    """An event type from a payload field: strings only, anything else is ""."""
    return value if isinstance(value, str) else ""


class GitHub(Provider):
    """GitHub: X-Hub-Signature-256 = "sha256=" + hex HMAC-SHA256 of the raw body.

    Legacy X-Hub-Signature ("sha1=") is accepted only with `allow_sha1: true`.
    """

    name = "github"
    options = {"allow_sha1": Option(bool, False)}

    def verify(self, headers: HeaderMap, body: bytes, secrets: Sequence[bytes], now: float) -> None:
        sig256 = headers.get("X-Hub-Signature-256")
        if not sig256 and self.opts["allow_sha1"] and headers.get("X-Hub-Signature"):
            scheme, digest, given = "sha1=", "sha1", header(headers, "X-Hub-Signature")
        else:
            scheme, digest, given = "sha256=", "sha256", header(headers, "X-Hub-Signature-256")
        if not given.startswith(scheme):
            raise SignatureError(f"signature must start with {scheme!r}", reason="malformed")
        expected = [hmac_hex(s, body, digest) for s in secrets]
        if not matches_any(expected, given[len(scheme):]):
            raise SignatureError("signature does not match", reason="mismatch")

    def parse(self, headers: HeaderMap, body: bytes) -> Any:
        if is_form(headers):
            return parse_json(form_field(body, "payload"))
        return parse_json(body)

    def event(self, headers: HeaderMap, payload: Any) -> str:
        return str(headers.get("X-GitHub-Event") or "")

    def delivery(self, headers: HeaderMap, payload: Any) -> str | None:
        return headers.get("X-GitHub-Delivery")

    def reply(self, event: str, payload: Any) -> Reply | None:
        if event == "ping":
            return Reply(b'{"status":"pong"}')
        return None

    def sign(self, body: bytes, secret: bytes, now: float, event: str = "", delivery: str = "") -> dict[str, str]:
        return {
            "X-Hub-Signature-256": "sha256=" + hmac_hex(secret, body),
            "X-GitHub-Event": event or "push",
            "X-GitHub-Delivery": delivery or str(uuid.uuid4()),
        }


class Unverified(Provider):
    """`none`: no signature at all, an explicit choice that is warned about."""

    name = "none"
    needs_secret = False

    def verify(self, headers: HeaderMap, body: bytes, secrets: Sequence[bytes], now: float) -> None:
        return None

    def event(self, headers: HeaderMap, payload: Any) -> str:
        named = str(headers.get("X-Webhook-Event") or "")
        return named or (text(payload.get("type")) if isinstance(payload, dict) else "")

    def delivery(self, headers: HeaderMap, payload: Any) -> str | None:
        return headers.get("X-Webhook-Delivery")

    def sign(self, body: bytes, secret: bytes, now: float, event: str = "", delivery: str = "") -> dict[str, str]:
        headers = {"X-Webhook-Delivery": delivery or str(uuid.uuid4())}
        if event:
            headers["X-Webhook-Event"] = event
        return headers


PROVIDERS: dict[str, type[Provider]] = {p.name: p for p in (GitHub, Unverified)}
