"""The senders' own SDKs against ours, both ways: what the SDK signs we accept, what we sign the SDK accepts.

The SDKs are development-only (the `dev` extra); without one its test skips and says so.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode

import pytest

from sidecar.providers import PROVIDERS

from .provider_cases import DISCORD_PRIVATE, DISCORD_PUBLIC, SECRET, Headers

FORM = "application/x-www-form-urlencoded"


def test_twilio_request_validator_both_ways() -> None:
    twilio = pytest.importorskip("twilio.request_validator", reason="twilio SDK not installed (dev extra)")
    token = "0123456789abcdef0123456789abcdef"
    validator = twilio.RequestValidator(token)
    ours = PROVIDERS["twilio"](url="https://hooks.example.com/twilio")
    params = [("Body", "deploy web"), ("From", "+15550001111"), ("MessageSid", "SM1"), ("To", "+15550002222")]
    # Twilio's SDK signs (form, with a query string) -> we verify.
    sig = validator.compute_signature("https://hooks.example.com/twilio?env=prod", dict(params))
    ours.verify(Headers({"X-Twilio-Signature": sig, "Content-Type": FORM}), urlencode(params).encode(),
                [token.encode()], time.time(), "/twilio?env=prod")
    # ... and the JSON form: the SDK's URL with bodySHA256, signed without params.
    body = b'{"type":"com.twilio.messaging.message.delivered"}'
    url = f"https://hooks.example.com/twilio?bodySHA256={validator.compute_hash(body.decode())}"
    sig = validator.compute_signature(url, {})
    ours.verify(Headers({"X-Twilio-Signature": sig, "Content-Type": "application/json"}), body, [token.encode()],
                time.time(), "/twilio?" + url.partition("?")[2])
    # We sign -> the SDK validates, form and JSON.
    form = ours.request(urlencode(params).encode(), token.encode(), time.time(), target="/twilio?env=prod",
                        content_type=FORM)
    assert validator.validate("https://hooks.example.com/twilio?env=prod", dict(parse_qsl(form.body.decode())),
                              form.headers["X-Twilio-Signature"])
    js = ours.request(body, token.encode(), time.time(), target="/twilio")
    assert validator.validate("https://hooks.example.com" + js.target, body.decode(), js.headers["X-Twilio-Signature"])
    assert not validator.validate("https://hooks.example.com" + js.target, body.decode() + " ",
                                  js.headers["X-Twilio-Signature"])


def test_discord_interactions_and_pynacl_both_ways() -> None:
    signing = pytest.importorskip("nacl.signing", reason="PyNaCl not installed (dev extra)")
    interactions = pytest.importorskip("discord_interactions", reason="discord-interactions not installed (dev extra)")
    key = signing.SigningKey(bytes.fromhex(DISCORD_PRIVATE.decode()))
    assert key.verify_key.encode().hex().encode() == DISCORD_PUBLIC  # the same key pair in both libraries
    body, ts = b'{"type":2,"id":"1","data":{"name":"deploy"}}', str(int(time.time()))
    # PyNaCl signs -> we verify.
    sig = key.sign(ts.encode() + body).signature.hex()
    ours = PROVIDERS["discord"]()
    ours.verify(Headers({"X-Signature-Ed25519": sig, "X-Signature-Timestamp": ts}), body, [DISCORD_PUBLIC],
                time.time())
    # We sign -> discord-interactions' verify_key accepts it, and refuses a changed body.
    headers = ours.sign(body, DISCORD_PRIVATE, time.time())
    assert interactions.verify_key(body, headers["X-Signature-Ed25519"], headers["X-Signature-Timestamp"],
                                   DISCORD_PUBLIC.decode())
    assert not interactions.verify_key(body + b" ", headers["X-Signature-Ed25519"], headers["X-Signature-Timestamp"],
                                       DISCORD_PUBLIC.decode())


@dataclass
class PaddleRequest:
    """What paddle_billing's Verifier reads from a request: headers and the raw body."""

    headers: dict[str, str]
    body: bytes


def test_paddle_sdk_both_ways() -> None:
    notifications = pytest.importorskip("paddle_billing.Notifications",
                                        reason="paddle-python-sdk not installed (dev extra)")
    secret = "pdl_ntfset_01gkpjp8bkh3jmnkmhwrfp21eh_6TJpB2XSQYfPLyGvawIjBRXrsO25DBbX"
    body = b'{"event_id":"evt_01","event_type":"transaction.completed","data":{"id":"txn_1"}}'
    now = int(time.time())
    # The SDK's HMAC -> we verify.
    h1 = notifications.PaddleSignature.calculate_hmac(secret, f"{now}:{body.decode()}".encode()).hexdigest()
    ours = PROVIDERS["paddle"]()
    ours.verify(Headers({"Paddle-Signature": f"ts={now};h1={h1}"}), body, [secret.encode()], time.time())
    # We sign -> the SDK's Verifier (with its 5 s drift check) accepts it, and refuses a changed body.
    headers = ours.sign(body, secret.encode(), time.time())
    verifier = notifications.Verifier()
    assert verifier.verify(PaddleRequest(headers, body), notifications.Secret(secret))
    assert not verifier.verify(PaddleRequest(headers, body + b" "), notifications.Secret(secret))


def test_mailgun_sdk_verifies_what_we_sign_and_we_verify_its_inputs() -> None:
    security = pytest.importorskip("mailgun.security", reason="mailgun SDK not installed (dev extra)")
    guard: Any = security.SecurityGuard
    ours = PROVIDERS["mailgun"]()
    signed = ours.request(b'{"event-data":{"event":"delivered"}}', SECRET, time.time())
    sig = json.loads(signed.body)["signature"]
    assert guard.verify_webhook(SECRET.decode(), sig["token"], sig["timestamp"], sig["signature"])
    assert not guard.verify_webhook(SECRET.decode(), sig["token"] + "0", sig["timestamp"], sig["signature"])
    # The SDK only verifies; a signature it accepts is one we accept too.
    token, ts = hashlib.sha256(b"token").hexdigest()[:50], str(int(time.time()))
    mac = hmac.new(SECRET, (ts + token).encode(), hashlib.sha256).hexdigest()
    assert guard.verify_webhook(SECRET.decode(), token, ts, mac)
    form = urlencode({"timestamp": ts, "token": token, "signature": mac, "event": "opened"}).encode()
    ours.verify(Headers({"Content-Type": FORM}), form, [SECRET], time.time())
