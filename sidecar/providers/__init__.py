"""Sender schemes: one small class per provider behind one interface.

A provider verifies the signature on the raw body bytes (before anything is
parsed), parses the payload, and names the event type and delivery id. Adding a
sender means one new module here and one line in PROVIDERS at the bottom.

This module holds the interface (Provider, Reply, Option, Signed, HeaderMap), the
helpers every scheme shares (constant-time comparison over a rotation list, the
timestamp window, header and JSON parsing) and the registry.

Rules every provider keeps:
- MACs are compared with hmac.compare_digest, against every secret of the
  rotation list, as strings in the exact form the sender emits (hex is
  lowercase; base64 is standard with padding): an uppercase or re-encoded
  signature is a mismatch, never "close enough".
- Anything wrong with the signature (missing, empty, non-ASCII, malformed,
  stale, from the future, not matching) is a SignatureError (401) whose reason
  is one of missing|malformed|mismatch|stale|future and whose message names the
  header or field and the problem, never a signature value.
- Timestamped schemes sign the timestamp exactly as received and reject it when
  it is more than `tolerance_s` away from now, in either direction.
"""

from __future__ import annotations

import base64
import hmac
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from ..errors import BadRequest, SignatureError
from .payloads import (
    MAX_JSON_DEPTH,
    dig,
    form_field,
    form_fields,
    form_pairs,
    is_form_type,
    new_id,
    parse_json,
    sha256_hex,
    text,
)

DEFAULT_TOLERANCE_S = 300.0
# A signature header listing more candidates than this is refused, so a sender
# cannot make one request cost thousands of comparisons.
MAX_SIGNATURES = 32
# Unix seconds as ASCII digits; 12 digits reach the year 33658. int() alone would
# also take " 12", "1_2" and non-ASCII digits.
TIMESTAMP = re.compile(r"[0-9]{1,12}")
HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


class HeaderMap(Protocol):
    """Case-insensitive header lookup, as http.client.HTTPMessage provides."""

    def get(self, name: str, default: Any = None) -> Any: ...


@dataclass(frozen=True)
class Reply:
    """An answer the provider gives itself (e.g. a ping); no hook runs."""

    body: bytes
    content_type: str = "application/json"
    status: int = 200  # 204 where the sender wants no body (Discord's webhook events)


@dataclass(frozen=True)
class Option:
    """An endpoint setting a provider accepts in config.yaml."""

    type: type
    default: Any


@dataclass
class Signed:
    """A request as the sender would make it (for `webhook-sidecar sign|send`)."""

    target: str  # path and query to POST to
    headers: dict[str, str]
    body: bytes
    notes: list[str] = field(default_factory=list)  # what the user must know to send it


class Provider:
    """Base class: the interface every sender implements."""

    name: ClassVar[str] = ""
    needs_secret: ClassVar[bool] = True
    options: ClassVar[dict[str, Option]] = {}
    # The variable `sign`/`send` read the signing key from when it is not the endpoint's
    # secret (discord: the endpoint knows the public key, a sender signs with the private one).
    signing_key_env: ClassVar[str] = ""

    def __init__(self, **options: Any) -> None:
        self.opts = {k: options.get(k, o.default) for k, o in self.options.items()}

    @classmethod
    def secret_needed(cls, options: Mapping[str, Any]) -> bool:
        """Whether an endpoint with these options needs `secret_env` or `secret_file`."""
        return cls.needs_secret

    @classmethod
    def secret_problem(cls, secret: bytes) -> str | None:
        """Why `secret` can never verify anything for this provider, or None when it can."""
        return None

    def verify(self, headers: HeaderMap, body: bytes, secrets: Sequence[bytes], now: float,
               target: str = "") -> None:
        """Raise SignatureError unless one of `secrets` signed the delivery.

        `target` is the request-target as received (path and query), for schemes
        that sign the URL.
        """
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

    def answer(self, headers: HeaderMap, event: str, payload: Any) -> Reply | None:
        """What this sender needs back for a delivery that ran (or was to run) hooks: accepted, ignored
        or a duplicate alike; None when the JSON status document will do (sidecar/answers.py)."""
        return None

    def sign(self, body: bytes, secret: bytes, now: float, event: str = "", delivery: str = "") -> dict[str, str]:
        """The headers a sender would add to `body` (for `webhook-sidecar sign|send`)."""
        raise NotImplementedError

    def request(self, body: bytes, secret: bytes, now: float, event: str = "", delivery: str = "",
                target: str = "/", content_type: str = "application/json") -> Signed:
        """The whole request a sender would make; schemes that sign the URL or the body override it."""
        return Signed(target, self.sign(body, secret, now, event=event, delivery=delivery), body)


# --- headers ----------------------------------------------------------------------
def header(headers: HeaderMap, name: str) -> str:
    """A header's value, or SignatureError naming it when it is missing or empty."""
    value = headers.get(name)
    if not value:
        raise SignatureError(f"missing {name} header", reason="missing")
    return str(value)


def signed_header(headers: HeaderMap, *names: str) -> str:
    """The first non-empty of `names` (aliases of one header), as printable ASCII.

    Only the first one present is used: a wrong value is never rescued by an alias.
    """
    for name in names:
        value = headers.get(name)
        if value:
            value = str(value)
            if not (value.isascii() and value.isprintable()):
                raise SignatureError(f"{name} header is not printable ASCII", reason="malformed")
            return value
    raise SignatureError(f"missing {names[0]} header", reason="missing")


def header_text(headers: HeaderMap, *names: str) -> str:
    """The first non-empty of `names` (an event type or delivery id), or ""."""
    for name in names:
        value = headers.get(name)
        if value:
            return str(value)
    return ""


def strip_prefix(value: str, prefix: str, name: str) -> str:
    if not value.startswith(prefix):
        raise SignatureError(f"{name} must start with {prefix!r}", reason="malformed")
    return value[len(prefix):]


def prefixed(headers: HeaderMap, prefix: str, *names: str) -> str:
    """A signature header's value (the first of `names` present) after its required `prefix` ("sha256=")."""
    return strip_prefix(signed_header(headers, *names), prefix, names[0])


def key_values(value: str, name: str, sep: str = ",") -> list[tuple[str, str]]:
    """A "k=v<sep>k=v" signature header as pairs; malformed when an item is not k=v."""
    items = value.split(sep)
    if len(items) > MAX_SIGNATURES:
        raise SignatureError(f"{name} lists too many items", reason="malformed")
    pairs = [item.partition("=") for item in items]
    if any(not key or not eq or not val for key, eq, val in pairs):
        raise SignatureError(f"{name} must be a list of key=value", reason="malformed")
    return [(key, val) for key, _, val in pairs]


def verify_listed(headers: HeaderMap, name: str, ts_key: str, sig_key: str, joiner: bytes, body: bytes,
                  secrets: Sequence[bytes], now: float, tolerance: float, sep: str = ",") -> None:
    """A header listing one timestamp and one or more hex HMAC-SHA256 signatures of
    "<timestamp as sent><joiner><body>" (Stripe's "t=..,v1=..", Paddle's "ts=..;h1=.."); other keys ignored."""
    pairs = key_values(signed_header(headers, name), name, sep=sep)
    times = [value for key, value in pairs if key == ts_key]
    signatures = [value for key, value in pairs if key == sig_key]
    if len(times) != 1 or not signatures:
        raise SignatureError(f"{name} needs one {ts_key}= and at least one {sig_key}=", reason="malformed")
    ts = timestamp(times[0], f"{name} {ts_key}")
    msg = times[0].encode("ascii") + joiner + body
    require_hmac(secrets, msg, signatures)
    check_age(ts, now, tolerance)


# --- MACs -------------------------------------------------------------------------
def hmac_hex(secret: bytes, msg: bytes, digest: str = "sha256") -> str:
    return hmac.new(secret, msg, digest).hexdigest()


def hmac_b64(secret: bytes, msg: bytes, digest: str = "sha256") -> str:
    return base64.b64encode(hmac.new(secret, msg, digest).digest()).decode("ascii")


def any_equal(expected: Sequence[bytes], given: Sequence[bytes]) -> bool:
    """compare_digest of every expected value against every given one.

    All pairs are compared, so timing does not reveal which secret matched.
    """
    ok = False
    for g in given:
        for e in expected:
            ok |= hmac.compare_digest(e, g)
    return ok


def matching(expected: Sequence[str], given: str | Sequence[str]) -> int:
    """Index of the first expected value any given one equals (-1: none); every pair is compared."""
    givens = [given] if isinstance(given, str) else list(given)
    encoded = [g.encode("ascii") for g in givens if g.isascii()]
    found = -1
    for i, e in enumerate(expected):
        hit = any_equal([e.encode("ascii")], encoded)
        if hit and found < 0:
            found = i
    return found


def matches_any(expected: Sequence[str], given: str | Sequence[str]) -> bool:
    """Constant-time comparison of the given signature(s) with every expected one (rotation)."""
    givens = [given] if isinstance(given, str) else list(given)
    encoded = [g.encode("ascii") for g in givens if g.isascii()]
    return any_equal([e.encode("ascii") for e in expected], encoded)


def require_match(expected: Sequence[str], given: str | Sequence[str]) -> None:
    if not matches_any(expected, given):
        raise SignatureError("signature does not match", reason="mismatch")


def require_hmac(secrets: Sequence[bytes], msg: bytes, given: str | Sequence[str], digest: str = "sha256") -> None:
    """SignatureError unless `given` is the hex HMAC of `msg` under one of `secrets`."""
    require_match([hmac_hex(s, msg, digest) for s in secrets], given)


def timestamp(value: str, name: str) -> int:
    """A Unix-seconds header value, or SignatureError when it is not one."""
    if not TIMESTAMP.fullmatch(value):
        raise SignatureError(f"{name} is not a Unix time in seconds", reason="malformed")
    return int(value)


def check_age(ts: float, now: float, tolerance: float) -> None:
    """Reject a signed timestamp outside [now - tolerance, now + tolerance]."""
    if ts < now - tolerance:
        raise SignatureError(f"timestamp is more than {tolerance:g} s old", reason="stale")
    if ts > now + tolerance:
        raise SignatureError(f"timestamp is more than {tolerance:g} s in the future", reason="future")


def is_form(headers: HeaderMap) -> bool:
    return is_form_type(str(headers.get("Content-Type") or ""))


def json_or_form(headers: HeaderMap, body: bytes) -> Any:
    """A JSON body, or the JSON in a form body's `payload` field (the forges' form posts)."""
    return parse_json(form_field(body, "payload")) if is_form(headers) else parse_json(body)


def challenge_reply(payload: Any, event: str) -> Reply:
    """The answer to a URL verification: the payload's `challenge`, as text/plain."""
    challenge = payload.get("challenge") if isinstance(payload, dict) else None
    if not isinstance(challenge, str):
        raise BadRequest(f"{event} without a challenge", reason="invalid_challenge")
    return Reply(challenge.encode("utf-8"), "text/plain")


# --- the family of every scheme that signs a time -------------------------------------
class Timestamped(Provider):
    """A scheme that signs a timestamp: `tolerance_s` bounds its age both ways."""

    default_tolerance: ClassVar[float] = DEFAULT_TOLERANCE_S
    options = {"tolerance_s": Option(float, DEFAULT_TOLERANCE_S)}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # Each sender's own SDK default; the option table follows the class attribute.
        if "default_tolerance" in cls.__dict__:
            cls.options = {**cls.options, "tolerance_s": Option(float, cls.default_tolerance)}

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        tolerance = self.opts["tolerance_s"]
        if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not 0 < tolerance <= 86400:
            raise ValueError(f"tolerance_s: must be more than 0 and at most 86400 seconds, got {tolerance!r}")
        self.tolerance = float(tolerance)

    def require_signed(self, secrets: Sequence[bytes], msg: bytes, given: str, ts: float, now: float) -> None:
        """SignatureError unless `given` is the hex HMAC-SHA256 of `msg` and `ts` is within the tolerance."""
        require_hmac(secrets, msg, given)
        check_age(ts, now, self.tolerance)

    def type_field(self, payload: Any) -> str:
        return text(payload.get("type")) if isinstance(payload, dict) else ""


# --- the registry (imported last: the modules build on the names above) -------------
from .cloudevents import CloudEvents  # noqa: E402
from .credentials import Basic, Bearer  # noqa: E402
from .discord import Discord  # noqa: E402
from .forges import Bitbucket, Gitea, GitHub  # noqa: E402
from .generic import GenericHmac, HeaderSigned, Unverified  # noqa: E402
from .gitlab import GitLab  # noqa: E402
from .linear import Linear  # noqa: E402
from .mailgun import Mailgun  # noqa: E402
from .paddle import Paddle  # noqa: E402
from .pagerduty import PagerDuty  # noqa: E402
from .sentry import Sentry  # noqa: E402
from .shopify import Shopify  # noqa: E402
from .slack import Slack  # noqa: E402
from .standard import StandardWebhooks  # noqa: E402
from .stripe import Stripe  # noqa: E402
from .twilio import Twilio  # noqa: E402
from .twitch import Twitch  # noqa: E402
from .zoom import Zoom  # noqa: E402

PROVIDERS: dict[str, type[Provider]] = {
    p.name: p
    for p in (GitHub, GitLab, Gitea, Bitbucket, Stripe, Slack, StandardWebhooks, Shopify, GenericHmac, Unverified,
              Twilio, Discord, Linear, Paddle, Mailgun, Zoom, PagerDuty, Twitch, Sentry, Basic, Bearer, CloudEvents)
}

# The payload helpers are re-exported: the sender modules import every shared helper from the package.
__all__ = [
    "MAX_JSON_DEPTH", "PROVIDERS", "Basic", "Bearer", "Bitbucket", "CloudEvents", "Discord", "GenericHmac", "GitHub",
    "GitLab", "Gitea", "HeaderMap", "HeaderSigned", "Linear", "Mailgun", "Option", "Paddle", "PagerDuty", "Provider",
    "Reply",
    "Sentry", "Shopify", "Signed", "Slack", "StandardWebhooks", "Stripe", "Timestamped", "Twilio", "Twitch",
    "Unverified", "Zoom", "dig", "form_field", "form_fields", "form_pairs", "is_form_type", "new_id", "parse_json",
    "sha256_hex", "text",
]
