"""Signed deliveries for the provider tests, built independently of sidecar.providers.

Each factory computes a valid request with hmac/hashlib/base64 (or Ed25519 from
`cryptography`) from the sender's documented scheme; the tests then check that the
provider accepts exactly these and nothing near them. Shared by test_providers*.py.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable
from urllib.parse import urlencode

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from sidecar.errors import SignatureError
from sidecar.providers import PROVIDERS, Provider

NOW = 1_700_000_000


@runtime_checkable
class Tolerant(Protocol):
    """A provider that bounds the age of a signed timestamp (a Timestamped one, or Discord's)."""

    tolerance: float


def tolerance_of(provider: Provider) -> float:
    assert isinstance(provider, Tolerant), f"{provider.name} signs no timestamp"
    return provider.tolerance

SECRET = b"It's a Secret to Everybody"
OTHER = b"an older secret still in rotation"
JSON_BODY = b'{"id":"evt_1","type":"push","object_kind":"push","ref":"refs/heads/main"}'
MSG_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"


class Headers:
    """A case-insensitive header map with .get, like http.client.HTTPMessage."""

    def __init__(self, items: dict[str, str] | None = None) -> None:
        self._items = {k.lower(): v for k, v in (items or {}).items()}

    def get(self, name: str, default: Any = None) -> Any:
        return self._items.get(name.lower(), default)


def hex_mac(secret: bytes, msg: bytes, digest: Any = hashlib.sha256) -> str:
    return hmac.new(secret, msg, digest).hexdigest()


def b64_mac(secret: bytes, msg: bytes, digest: Any = hashlib.sha256) -> str:
    return base64.b64encode(hmac.new(secret, msg, digest).digest()).decode()


@dataclass
class Delivery:
    """One signed request: which provider, its options, headers, body and secret."""

    provider: str
    headers: dict[str, str]
    body: bytes
    secret: bytes = SECRET
    options: dict[str, Any] = field(default_factory=dict)
    signed: tuple[str, ...] = ()  # the headers whose value the signature check depends on
    timestamped: bool = False
    target: str = ""  # the request-target (path and query) as the server sees it
    other: bytes = OTHER  # another valid secret of the same kind (rotation, wrong key)
    signing_secret: bytes | None = None  # what `sign` takes, when it is not `secret` (discord)

    def make(self) -> Provider:
        return PROVIDERS[self.provider](**self.options)

    def verify(self, secrets: list[bytes] | None = None, now: float = NOW, headers: dict[str, str] | None = None,
               body: bytes | None = None, target: str | None = None) -> None:
        self.make().verify(Headers(self.headers if headers is None else headers),
                           self.body if body is None else body,
                           [self.secret] if secrets is None else secrets, now,
                           self.target if target is None else target)

    def with_header(self, name: str, value: str | None) -> dict[str, str]:
        out = {k: v for k, v in self.headers.items() if k.lower() != name.lower()}
        if value is not None:
            out[name] = value
        return out


def json_with(body: bytes, **fields: Any) -> bytes:
    """`body` as a JSON object with `fields` set (a body that is no object is kept as a string field)."""
    try:
        payload = json.loads(body)
    except ValueError:
        payload = None
    if not isinstance(payload, dict):
        payload = {"raw": body.decode("latin-1")}
    payload.update(fields)
    return json.dumps(payload, separators=(",", ":")).encode()


# --- GitLab signing token -------------------------------------------------------------
GITLAB_SIGNING = b"whsec_" + base64.b64encode(b"gitlab signing token: 32 bytes!!")


def gitlab_signed(body: bytes = JSON_BODY, secret: bytes = GITLAB_SIGNING, t: int = NOW, msg_id: str = MSG_ID
                  ) -> Delivery:
    # GitLab MR !230944: Standard Webhooks headers, webhook-id = Idempotency-Key, HMAC-SHA256 of
    # "<id>.<timestamp>.<body>" keyed by the base64 after whsec_ (a 32-byte key).
    key = base64.b64decode(secret.removeprefix(b"whsec_"))
    sig = "v1," + b64_mac(key, f"{msg_id}.{t}.".encode() + body)
    return Delivery("gitlab", {"webhook-id": msg_id, "webhook-timestamp": str(t), "webhook-signature": sig,
                               "Idempotency-Key": msg_id, "X-Gitlab-Event": "Push Hook"},
                    body, secret, signed=("webhook-id", "webhook-timestamp", "webhook-signature"), timestamped=True,
                    other=b"whsec_" + base64.b64encode(OTHER))


# --- twilio -------------------------------------------------------------------------------
TWILIO_URL = "https://example.com/twilio"


def twilio(body: bytes = JSON_BODY, secret: bytes = SECRET, query: str = "x=1") -> Delivery:
    # https://www.twilio.com/docs/usage/security#validating-requests : a JSON body is covered by
    # bodySHA256 (hex SHA-256) in the URL, and the signature is base64 HMAC-SHA1 of the URL alone.
    target = f"/twilio?{query}&bodySHA256={hashlib.sha256(body).hexdigest()}"
    sig = b64_mac(secret, (TWILIO_URL + "?" + target.partition("?")[2]).encode(), hashlib.sha1)
    return Delivery("twilio", {"X-Twilio-Signature": sig, "Content-Type": "application/json",
                               "I-Twilio-Idempotency-Token": "9d0e8c46-idem"},
                    body, secret, options={"url": TWILIO_URL}, signed=("X-Twilio-Signature",), target=target)


def twilio_form(params: list[tuple[str, str]], secret: bytes = SECRET, url: str = TWILIO_URL, target: str = "/twilio"
                ) -> Delivery:
    signed = url + ("?" + target.partition("?")[2] if "?" in target else "")
    joined = "".join(k + v for k, v in sorted(set(params)))
    return Delivery("twilio", {"X-Twilio-Signature": b64_mac(secret, (signed + joined).encode(), hashlib.sha1),
                               "Content-Type": "application/x-www-form-urlencoded"},
                    urlencode(params).encode(), secret, options={"url": url}, signed=("X-Twilio-Signature",),
                    target=target)


# --- discord ------------------------------------------------------------------------------
DISCORD_PRIVATE = hashlib.sha256(b"webhook-sidecar discord test key").hexdigest().encode()
DISCORD_OTHER_PRIVATE = hashlib.sha256(b"another discord application").hexdigest().encode()


def ed25519_public(private_hex: bytes) -> bytes:
    key = ed25519.Ed25519PrivateKey.from_private_bytes(bytes.fromhex(private_hex.decode()))
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex().encode()


DISCORD_PUBLIC = ed25519_public(DISCORD_PRIVATE)
DISCORD_OTHER_PUBLIC = ed25519_public(DISCORD_OTHER_PRIVATE)


def discord(body: bytes = b'{"type":2,"id":"1100000000000000001","data":{"name":"deploy"}}',
            secret: bytes = DISCORD_PUBLIC, t: int = NOW, private: bytes = DISCORD_PRIVATE) -> Delivery:
    # https://discord.com/developers/docs/interactions/overview#setting-up-an-endpoint-validating-security-request-headers
    # Ed25519 signature (hex) of X-Signature-Timestamp + raw body, checked with the application's public key.
    key = ed25519.Ed25519PrivateKey.from_private_bytes(bytes.fromhex(private.decode()))
    sig = key.sign(str(t).encode() + body).hex()
    return Delivery("discord", {"X-Signature-Ed25519": sig, "X-Signature-Timestamp": str(t)}, body, secret,
                    signed=("X-Signature-Timestamp", "X-Signature-Ed25519"), timestamped=True,
                    other=DISCORD_OTHER_PUBLIC, signing_secret=private)


# --- linear, paddle, zoom, pagerduty, twitch, sentry ---------------------------------------
def linear(body: bytes = JSON_BODY, secret: bytes = SECRET, t: int = NOW) -> Delivery:
    # https://linear.app/developers/webhooks : Linear-Signature = hex HMAC-SHA256 of the raw body;
    # webhookTimestamp (Unix ms) in the body; @linear/sdk refuses one more than a minute off.
    body = json_with(body, webhookTimestamp=t * 1000)
    return Delivery("linear", {"Linear-Signature": hex_mac(secret, body), "Linear-Event": "Issue",
                               "Linear-Delivery": "234d1a4e-b617-4388-90fe-adc3633d6b72"},
                    body, secret, signed=("Linear-Signature",), timestamped=True)


PADDLE_SECRET = b"pdl_ntfset_01gkpjp8bkh3jmnkmhwrfp21eh_6TJpB2XSQYfPLyGvawIjBRXrsO25DBbX"


def paddle(body: bytes = JSON_BODY, secret: bytes = PADDLE_SECRET, t: int = NOW, extra: str = "") -> Delivery:
    # https://developer.paddle.com/webhooks/signature-verification : HMAC-SHA256 hex of "<ts>:<body>".
    sig = hex_mac(secret, f"{t}:".encode() + body)
    return Delivery("paddle", {"Paddle-Signature": f"ts={t};h1={sig}{extra}"}, body, secret,
                    signed=("Paddle-Signature",), timestamped=True)


def zoom(body: bytes = b'{"event":"meeting.started","event_ts":1700000000123,"payload":{"object":{"id":"1"}}}',
         secret: bytes = SECRET, t: int = NOW) -> Delivery:
    # https://developers.zoom.us/docs/api/webhooks/#verify-webhook-events :
    # x-zm-signature = "v0=" + hex HMAC-SHA256 of "v0:<x-zm-request-timestamp>:<body>".
    sig = "v0=" + hex_mac(secret, f"v0:{t}:".encode() + body)
    return Delivery("zoom", {"x-zm-request-timestamp": str(t), "x-zm-signature": sig}, body, secret,
                    signed=("x-zm-request-timestamp", "x-zm-signature"), timestamped=True)


def pagerduty(body: bytes = b'{"event":{"id":"01DEN","event_type":"incident.triggered"}}',
              secret: bytes = SECRET, others: tuple[bytes, ...] = ()) -> Delivery:
    # https://developer.pagerduty.com/docs/webhooks/webhook-signatures/ : "v1=" + hex HMAC-SHA256 of the
    # body, one entry per signing secret, comma-separated.
    sigs = ",".join("v1=" + hex_mac(s, body) for s in (*others, secret))
    return Delivery("pagerduty", {"X-PagerDuty-Signature": sigs, "X-Webhook-Id": "dba2ba9b-5d1c-4c63-b3c3-1d0b7f5d"},
                    body, secret, signed=("X-PagerDuty-Signature",))


def rfc3339(t: float) -> str:
    whole = int(t)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{round((t - whole) * 1e9):09d}Z"


def twitch(body: bytes = b'{"subscription":{"type":"channel.follow"},"event":{"user_id":"1"}}',
           secret: bytes = SECRET, t: float = NOW, msg_id: str = MSG_ID, stamp: str | None = None) -> Delivery:
    # https://dev.twitch.tv/docs/eventsub/handling-webhook-events/#verifying-the-event-message :
    # "sha256=" + hex HMAC-SHA256 of message id + timestamp (as sent, RFC 3339 ns) + body.
    ts = stamp if stamp is not None else rfc3339(t)
    sig = "sha256=" + hex_mac(secret, (msg_id + ts).encode() + body)
    p = "Twitch-Eventsub-"
    return Delivery("twitch", {p + "Message-Id": msg_id, p + "Message-Timestamp": ts, p + "Message-Signature": sig,
                               p + "Message-Type": "notification", p + "Subscription-Type": "channel.follow"},
                    body, secret, signed=(p + "Message-Id", p + "Message-Timestamp", p + "Message-Signature"),
                    timestamped=True)


def sentry(body: bytes = JSON_BODY, secret: bytes = SECRET) -> Delivery:
    # https://docs.sentry.io/organization/integrations/integration-platform/webhooks/#sentry-hook-signature
    return Delivery("sentry", {"Sentry-Hook-Signature": hex_mac(secret, body), "Sentry-Hook-Resource": "issue",
                               "Request-ID": "5a7b1e7c-2d3a-4b0e-9c1f-8e6d5c4b3a29"},
                    body, secret, signed=("Sentry-Hook-Signature",))


# --- mailgun: the signature is in the body ---------------------------------------------------
MAILGUN_TOKEN = "a8ce0edb2dd8301dee6c2405235584e45aa91d1e9f979f3de0"


def mailgun(body: bytes = b'{"event-data":{"event":"delivered","id":"CPgfbmQMTCKtHW6uIWtuVe"}}',
            secret: bytes = SECRET, t: int = NOW, token: str = MAILGUN_TOKEN) -> Delivery:
    # https://documentation.mailgun.com/docs/mailgun/user-manual/webhooks/securing-webhooks/ :
    # hex HMAC-SHA256 of timestamp + token, keyed by the webhook signing key, inside the body.
    signature = {"timestamp": str(t), "token": token, "signature": hex_mac(secret, f"{t}{token}".encode())}
    return Delivery("mailgun", {"Content-Type": "application/json"}, json_with(body, signature=signature), secret,
                    timestamped=True)


# --- transport credentials ----------------------------------------------------------------------
BASIC_SECRET = b"alertmanager:s3cr3t pass"


def basic(body: bytes = JSON_BODY, secret: bytes = BASIC_SECRET) -> Delivery:
    # RFC 7617: "Basic " + base64(user-id ":" password).
    return Delivery("basic", {"Authorization": "Basic " + base64.b64encode(secret).decode()}, body, secret,
                    signed=("Authorization",), other=b"old:password")


def bearer(body: bytes = JSON_BODY, secret: bytes = SECRET.replace(b"'", b"").replace(b" ", b"-")) -> Delivery:
    # RFC 6750: "Bearer " + token.
    return Delivery("bearer", {"Authorization": "Bearer " + secret.decode()}, body, secret, signed=("Authorization",),
                    other=b"an-older-token")


NEW_FACTORIES: dict[str, Callable[..., Delivery]] = {
    "gitlab-signed": gitlab_signed, "twilio": twilio, "discord": discord, "linear": linear, "paddle": paddle,
    "mailgun": mailgun, "zoom": zoom, "pagerduty": pagerduty, "twitch": twitch, "sentry": sentry, "basic": basic,
    "bearer": bearer,
}


def rejected(fn: Callable[..., Any], reason: str | None = None) -> SignatureError:
    """The SignatureError fn() raises (a lambda may bind loop variables as defaults: hence `...`)."""
    with pytest.raises(SignatureError) as info:
        fn()
    if reason is not None:
        assert info.value.reason == reason, str(info.value)
    return info.value
