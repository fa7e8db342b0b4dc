"""Sender schemes: one small class per provider behind one interface.

A provider verifies the signature on the raw body bytes (before anything is
parsed), parses the payload, and names the event type and delivery id. Adding a
sender means adding one subclass and registering it in PROVIDERS.

Rules every provider keeps:
- MACs are compared with hmac.compare_digest, against every secret of the
  rotation list, as strings in the exact form the sender emits (hex is
  lowercase; base64 is standard with padding): an uppercase or re-encoded
  signature is a mismatch, never "close enough".
- Anything wrong with the signature headers (missing, empty, non-ASCII,
  malformed, stale, from the future, not matching) is a SignatureError (401)
  whose message names the header and the problem, never a signature value.
- Timestamped schemes sign the timestamp string exactly as received and reject
  it when it is more than `tolerance_s` (default 300 s) away from now, in
  either direction.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol
from urllib.parse import parse_qs, parse_qsl

from .errors import BadRequest, SignatureError

MAX_JSON_DEPTH = 64
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

    @classmethod
    def secret_problem(cls, secret: bytes) -> str | None:
        """Why `secret` can never verify anything for this provider, or None when it can."""
        return None

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


# --- MACs -------------------------------------------------------------------------
def hmac_hex(secret: bytes, msg: bytes, digest: str = "sha256") -> str:
    return hmac.new(secret, msg, digest).hexdigest()


def hmac_b64(secret: bytes, msg: bytes) -> str:
    return base64.b64encode(hmac.new(secret, msg, hashlib.sha256).digest()).decode("ascii")


def _any_equal(expected: Sequence[bytes], given: Sequence[bytes]) -> bool:
    """compare_digest of every expected value against every given one.

    All pairs are compared, so timing does not reveal which secret matched.
    """
    ok = False
    for g in given:
        for e in expected:
            ok |= hmac.compare_digest(e, g)
    return ok


def matches_any(expected: Sequence[str], given: str | Sequence[str]) -> bool:
    """Constant-time comparison of the given signature(s) with every expected one (rotation)."""
    givens = [given] if isinstance(given, str) else list(given)
    encoded = [g.encode("ascii") for g in givens if g.isascii()]
    return _any_equal([e.encode("ascii") for e in expected], encoded)


def require_match(expected: Sequence[str], given: str | Sequence[str]) -> None:
    if not matches_any(expected, given):
        raise SignatureError("signature does not match", reason="mismatch")


def timestamp(value: str, name: str) -> int:
    """A Unix-seconds header value, or SignatureError when it is not one."""
    if not TIMESTAMP.fullmatch(value):
        raise SignatureError(f"{name} is not a Unix time in seconds", reason="malformed")
    return int(value)


def check_age(ts: int, now: float, tolerance: float) -> None:
    """Reject a signed timestamp outside [now - tolerance, now + tolerance]."""
    if ts < now - tolerance:
        raise SignatureError(f"timestamp is more than {tolerance:g} s old", reason="stale")
    if ts > now + tolerance:
        raise SignatureError(f"timestamp is more than {tolerance:g} s in the future", reason="future")


# --- payloads ---------------------------------------------------------------------
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
    # Fewer brackets than the limit cannot nest deeper than it: skip the walk.
    raw = body.encode() if isinstance(body, str) else body
    if raw.count(b"[") + raw.count(b"{") > MAX_JSON_DEPTH and not _depth_ok(payload):
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


def form_fields(body: bytes, max_fields: int = 1000) -> dict[str, str]:
    """A form-encoded body as {name: first value}; BadRequest when it is not one."""
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, errors="strict", max_num_fields=max_fields)
    except (UnicodeDecodeError, ValueError) as e:
        raise BadRequest("form body is not valid", reason="invalid_form") from e
    out: dict[str, str] = {}
    for key, value in pairs:
        out.setdefault(key, value)
    return out


def text(value: Any) -> str:
    """An event type from a payload field: strings only, anything else is ""."""
    return value if isinstance(value, str) else ""


def dig(payload: Any, dotted: str) -> Any:
    """The value at a dotted path of JSON objects ("event.type"), or None."""
    for part in dotted.split("."):
        if not isinstance(payload, dict):
            return None
        payload = payload.get(part)
    return payload


def new_id() -> str:
    return str(uuid.uuid4())


# --- one header, one HMAC of the body ---------------------------------------------
class HeaderSigned(Provider):
    """One header holds `prefix` + the hex (or base64) HMAC-SHA256 of the body.

    Subclasses only name their headers; the event type and delivery id come
    from headers too. The first signature header present is the one checked.
    """

    signature_headers: tuple[str, ...] = ()
    prefix: str = ""
    encoding: str = "hex"
    event_headers: tuple[str, ...] = ()
    delivery_headers: tuple[str, ...] = ()
    sample_event: str = ""  # what `sign` puts in the event header when given none

    def signed_bytes(self, headers: HeaderMap, body: bytes) -> bytes:
        """What the MAC covers: the raw body, unless the scheme says otherwise."""
        return body

    def mac(self, secret: bytes, msg: bytes) -> str:
        return hmac_b64(secret, msg) if self.encoding == "base64" else hmac_hex(secret, msg)

    def verify(self, headers: HeaderMap, body: bytes, secrets: Sequence[bytes], now: float) -> None:
        name = self.signature_headers[0]
        given = strip_prefix(signed_header(headers, *self.signature_headers), self.prefix, name)
        msg = self.signed_bytes(headers, body)
        require_match([self.mac(s, msg) for s in secrets], given)

    def event(self, headers: HeaderMap, payload: Any) -> str:
        return header_text(headers, *self.event_headers)

    def delivery(self, headers: HeaderMap, payload: Any) -> str | None:
        return header_text(headers, *self.delivery_headers) or None

    def sign(self, body: bytes, secret: bytes, now: float, event: str = "", delivery: str = "") -> dict[str, str]:
        out = {self.signature_headers[0]: self.prefix + self.mac(secret, body)}
        if self.event_headers and (event or self.sample_event):
            out[self.event_headers[0]] = event or self.sample_event
        if self.delivery_headers:
            out[self.delivery_headers[0]] = delivery or new_id()
        return out


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

    def verify(self, headers: HeaderMap, body: bytes, secrets: Sequence[bytes], now: float) -> None:
        if self.opts["allow_sha1"] and not headers.get("X-Hub-Signature-256") and headers.get("X-Hub-Signature"):
            given = strip_prefix(signed_header(headers, "X-Hub-Signature"), "sha1=", "X-Hub-Signature")
            require_match([hmac_hex(s, body, "sha1") for s in secrets], given)
            return
        super().verify(headers, body, secrets, now)

    def parse(self, headers: HeaderMap, body: bytes) -> Any:
        if is_form(headers):
            return parse_json(form_field(body, "payload"))
        return parse_json(body)

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
        if is_form(headers):
            return parse_json(form_field(body, "payload"))
        return parse_json(body)


class Bitbucket(HeaderSigned):
    """Bitbucket Cloud: X-Hub-Signature = "sha256=" + hex HMAC-SHA256; X-Event-Key; X-Request-UUID."""

    name = "bitbucket"
    signature_headers = ("X-Hub-Signature",)
    prefix = "sha256="
    event_headers = ("X-Event-Key",)
    delivery_headers = ("X-Request-UUID",)
    sample_event = "repo:push"


class Shopify(HeaderSigned):
    """Shopify: X-Shopify-Hmac-Sha256 = base64 HMAC-SHA256; X-Shopify-Topic; X-Shopify-Webhook-Id."""

    name = "shopify"
    signature_headers = ("X-Shopify-Hmac-Sha256",)
    encoding = "base64"
    event_headers = ("X-Shopify-Topic",)
    delivery_headers = ("X-Shopify-Webhook-Id",)
    sample_event = "orders/create"


class GenericHmac(HeaderSigned):
    """`hmac-sha256`: any sender that puts prefix + hex/base64 HMAC-SHA256 of the body in a header.

    The event type comes from `event_header` or from the dotted JSON path
    `event_field` (not both); the delivery id from `delivery_header`.
    """

    name = "hmac-sha256"
    options = {
        "header": Option(str, ""),
        "prefix": Option(str, ""),
        "encoding": Option(str, "hex"),
        "event_header": Option(str, ""),
        "event_field": Option(str, ""),
        "delivery_header": Option(str, ""),
    }

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        o = self.opts
        if not o["header"]:
            raise ValueError("provider 'hmac-sha256' needs 'header': the request header that holds the signature")
        for key in ("header", "event_header", "delivery_header"):
            if o[key] and not HEADER_NAME.fullmatch(o[key]):
                raise ValueError(f"{key}: not a valid HTTP header name: {o[key]!r}")
        if o["encoding"] not in ("hex", "base64"):
            raise ValueError(f"encoding: must be 'hex' or 'base64', got {o['encoding']!r}")
        if o["event_header"] and o["event_field"]:
            raise ValueError("set either 'event_header' or 'event_field', not both")
        if o["event_field"] and any(not part for part in o["event_field"].split(".")):
            raise ValueError(f"event_field: must be a dotted JSON path such as 'event.type', got {o['event_field']!r}")
        if not o["prefix"].isascii() or not o["prefix"].isprintable():
            raise ValueError("prefix: must be printable ASCII")
        self.signature_headers = (o["header"],)
        self.prefix = o["prefix"]
        self.encoding = o["encoding"]
        self.event_headers = (o["event_header"],) if o["event_header"] else ()
        self.delivery_headers = (o["delivery_header"],) if o["delivery_header"] else ()

    def event(self, headers: HeaderMap, payload: Any) -> str:
        if self.opts["event_field"]:
            return text(dig(payload, self.opts["event_field"]))
        return super().event(headers, payload)


# --- a shared token -----------------------------------------------------------------
class GitLab(Provider):
    """GitLab: X-Gitlab-Token is the secret itself, compared in constant time.

    The event type is the X-Gitlab-Event header ("Push Hook"); the payload's
    `object_kind` ("push") is filtered with `if: {object_kind: push}`. The
    delivery id is Idempotency-Key (the same on every retry), else
    X-Gitlab-Event-UUID. The token does not cover the body.
    """

    name = "gitlab"

    def verify(self, headers: HeaderMap, body: bytes, secrets: Sequence[bytes], now: float) -> None:
        given = header(headers, "X-Gitlab-Token")
        try:
            # http.client decodes header bytes as latin-1: this gives back the bytes sent.
            given_b = given.encode("latin-1")
        except UnicodeEncodeError:
            given_b = b""
        if not _any_equal(list(secrets), [given_b]):
            raise SignatureError("X-Gitlab-Token does not match", reason="mismatch")

    def event(self, headers: HeaderMap, payload: Any) -> str:
        return header_text(headers, "X-Gitlab-Event")

    def delivery(self, headers: HeaderMap, payload: Any) -> str | None:
        return header_text(headers, "Idempotency-Key", "X-Gitlab-Event-UUID") or None

    def sign(self, body: bytes, secret: bytes, now: float, event: str = "", delivery: str = "") -> dict[str, str]:
        return {
            "X-Gitlab-Token": secret.decode("latin-1"),
            "X-Gitlab-Event": event or "Push Hook",
            "X-Gitlab-Event-UUID": delivery or new_id(),
        }


# --- timestamped schemes --------------------------------------------------------------
class Timestamped(Provider):
    """A scheme that signs a timestamp: `tolerance_s` bounds its age both ways."""

    options = {"tolerance_s": Option(float, DEFAULT_TOLERANCE_S)}

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        tolerance = self.opts["tolerance_s"]
        if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not 0 < tolerance <= 86400:
            raise ValueError(f"tolerance_s: must be more than 0 and at most 86400 seconds, got {tolerance!r}")
        self.tolerance = float(tolerance)

    def type_field(self, payload: Any) -> str:
        return text(payload.get("type")) if isinstance(payload, dict) else ""


class Stripe(Timestamped):
    """Stripe: Stripe-Signature "t=<unix>,v1=<hex>[,v1=<hex>...]" over "<t>.<body>".

    The whole `whsec_...` string is the HMAC key. Any v1 may match (Stripe sends
    several while a secret rolls); v0 and unknown keys are ignored. Event type
    and delivery id are the JSON `type` and `id`.
    """

    name = "stripe"

    def verify(self, headers: HeaderMap, body: bytes, secrets: Sequence[bytes], now: float) -> None:
        items = signed_header(headers, "Stripe-Signature").split(",")
        if len(items) > MAX_SIGNATURES:
            raise SignatureError("Stripe-Signature lists too many items", reason="malformed")
        pairs = [item.partition("=") for item in items]
        if any(not key or not sep or not value for key, sep, value in pairs):
            raise SignatureError("Stripe-Signature must be a list of key=value", reason="malformed")
        times = [value for key, _, value in pairs if key == "t"]
        signatures = [value for key, _, value in pairs if key == "v1"]
        if len(times) != 1 or not signatures:
            raise SignatureError("Stripe-Signature needs one t= and a v1=", reason="malformed")
        ts = timestamp(times[0], "Stripe-Signature t")
        msg = times[0].encode("ascii") + b"." + body
        require_match([hmac_hex(s, msg) for s in secrets], signatures)
        check_age(ts, now, self.tolerance)

    def event(self, headers: HeaderMap, payload: Any) -> str:
        return self.type_field(payload)

    def delivery(self, headers: HeaderMap, payload: Any) -> str | None:
        return (text(payload.get("id")) or None) if isinstance(payload, dict) else None

    def sign(self, body: bytes, secret: bytes, now: float, event: str = "", delivery: str = "") -> dict[str, str]:
        t = str(int(now))
        return {"Stripe-Signature": f"t={t},v1={hmac_hex(secret, t.encode() + b'.' + body)}"}


class Slack(Timestamped):
    """Slack: X-Slack-Signature "v0=" + hex HMAC-SHA256 of "v0:<X-Slack-Request-Timestamp>:<body>".

    JSON (Events API) and form bodies are accepted: slash commands (event type
    "slash_command", filter the command with `if: {command: /deploy}`) and
    interactivity (`payload=` JSON, event type from its `type`). A verified
    `url_verification` is answered with its challenge as text/plain.
    """

    name = "slack"

    def verify(self, headers: HeaderMap, body: bytes, secrets: Sequence[bytes], now: float) -> None:
        raw_ts = signed_header(headers, "X-Slack-Request-Timestamp")
        ts = timestamp(raw_ts, "X-Slack-Request-Timestamp")
        given = strip_prefix(signed_header(headers, "X-Slack-Signature"), "v0=", "X-Slack-Signature")
        msg = b"v0:" + raw_ts.encode("ascii") + b":" + body
        require_match([hmac_hex(s, msg) for s in secrets], given)
        check_age(ts, now, self.tolerance)

    def parse(self, headers: HeaderMap, body: bytes) -> Any:
        if not is_form(headers):
            return parse_json(body)
        fields = form_fields(body)
        if "payload" in fields:  # interactivity: the JSON is one form field
            return parse_json(fields["payload"])
        return fields  # a slash command (or ssl_check): the fields themselves

    def event(self, headers: HeaderMap, payload: Any) -> str:
        if not isinstance(payload, dict):
            return ""
        kind = text(payload.get("type"))
        if kind == "event_callback":
            return text(dig(payload, "event.type")) or kind
        if kind:
            return kind
        if "command" in payload:
            return "slash_command"
        if "ssl_check" in payload:
            return "ssl_check"
        return ""

    def delivery(self, headers: HeaderMap, payload: Any) -> str | None:
        if not isinstance(payload, dict):
            return None
        return text(payload.get("event_id")) or text(payload.get("trigger_id")) or None

    def reply(self, event: str, payload: Any) -> Reply | None:
        if event == "url_verification":
            challenge = payload.get("challenge") if isinstance(payload, dict) else None
            if not isinstance(challenge, str):
                raise BadRequest("url_verification without a challenge", reason="invalid_challenge")
            return Reply(challenge.encode("utf-8"), "text/plain")
        if event == "ssl_check":
            return Reply(b"", "text/plain")
        return None

    def sign(self, body: bytes, secret: bytes, now: float, event: str = "", delivery: str = "") -> dict[str, str]:
        t = str(int(now))
        signature = hmac_hex(secret, f"v0:{t}:".encode() + body)
        return {"X-Slack-Request-Timestamp": t, "X-Slack-Signature": "v0=" + signature}


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

    @staticmethod
    def key(secret: bytes) -> bytes | None:
        """The HMAC key of a `whsec_<base64>` (or bare base64) secret; None if it is not base64."""
        raw = secret.removeprefix(b"whsec_")
        try:
            key = base64.b64decode(raw + b"=" * (-len(raw) % 4), validate=True)
        except (binascii.Error, ValueError):
            return None
        return key or None

    @classmethod
    def secret_problem(cls, secret: bytes) -> str | None:
        if cls.key(secret) is None:
            return "is not a Standard Webhooks secret (whsec_ followed by base64)"
        return None

    def family(self, headers: HeaderMap) -> str:
        present = (f for f in self.families if any(headers.get(f + n) for n in ("id", "timestamp", "signature")))
        return next(present, self.families[0])

    def verify(self, headers: HeaderMap, body: bytes, secrets: Sequence[bytes], now: float) -> None:
        f = self.family(headers)
        msg_id = signed_header(headers, f + "id")
        raw_ts = signed_header(headers, f + "timestamp")
        ts = timestamp(raw_ts, f + "timestamp")
        entries = signed_header(headers, f + "signature").split(" ")
        if len(entries) > MAX_SIGNATURES:
            raise SignatureError(f"{f}signature lists too many signatures", reason="malformed")
        pairs = [entry.partition(",") for entry in entries]
        if any(not version or not sep or not sig for version, sep, sig in pairs):
            raise SignatureError(f"{f}signature must be space-separated 'v1,<base64>' entries", reason="malformed")
        signatures = [sig for version, _, sig in pairs if version == "v1"]
        if not signatures:
            raise SignatureError(f"{f}signature has no v1 signature", reason="malformed")
        keys = [k for k in map(self.key, secrets) if k is not None]
        if not keys:
            raise SignatureError("no secret of this endpoint is a whsec_ base64 key", reason="bad_secret")
        msg = f"{msg_id}.{raw_ts}.".encode("ascii") + body
        require_match([hmac_b64(k, msg) for k in keys], signatures)
        check_age(ts, now, self.tolerance)

    def event(self, headers: HeaderMap, payload: Any) -> str:
        return self.type_field(payload)

    def delivery(self, headers: HeaderMap, payload: Any) -> str | None:
        return header_text(headers, *(f + "id" for f in self.families)) or None

    def sign(self, body: bytes, secret: bytes, now: float, event: str = "", delivery: str = "") -> dict[str, str]:
        key = self.key(secret)
        if key is None:
            raise ValueError("the secret is not a Standard Webhooks secret (whsec_ followed by base64)")
        msg_id, t = delivery or "msg_" + uuid.uuid4().hex, str(int(now))
        signature = hmac_b64(key, f"{msg_id}.{t}.".encode() + body)
        return {"webhook-id": msg_id, "webhook-timestamp": t, "webhook-signature": "v1," + signature}


# --- no verification at all --------------------------------------------------------
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


PROVIDERS: dict[str, type[Provider]] = {
    p.name: p
    for p in (GitHub, GitLab, Gitea, Bitbucket, Stripe, Slack, StandardWebhooks, Shopify, GenericHmac, Unverified)
}
