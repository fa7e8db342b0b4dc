"""What is particular to each sender added after the first ten: vectors, handshakes, event types, ids.

The negative cases every provider shares (tampered body, wrong key, each header
missing, rotation, stale and future timestamps) run in test_providers.py over the
same factories (provider_cases.py).
"""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlencode

import pytest

from sidecar.errors import BadRequest
from sidecar.providers import PROVIDERS, Reply
from sidecar.providers.twilio import Twilio

from .provider_cases import (
    BASIC_SECRET,
    DISCORD_PRIVATE,
    DISCORD_PUBLIC,
    GITLAB_SIGNING,
    MAILGUN_TOKEN,
    NOW,
    OTHER,
    SECRET,
    Delivery,
    Headers,
    b64_mac,
    basic,
    bearer,
    discord,
    gitlab_signed,
    hex_mac,
    linear,
    mailgun,
    paddle,
    pagerduty,
    rejected,
    rfc3339,
    sentry,
    tolerance_of,
    twilio,
    twilio_form,
    twitch,
    zoom,
)
from .support import endpoint_config, endpoint_error

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = Path(__file__).resolve().parent / "scripts"


def answer(d: Delivery) -> tuple[str, str | None, Reply | None]:
    """(event type, delivery id, reply) of a verified delivery, as the server derives them."""
    p = d.make()
    p.verify(Headers(d.headers), d.body, [d.secret], NOW, d.target)
    payload = p.parse(Headers(d.headers), d.body)
    event = p.event(Headers(d.headers), payload)
    return event, p.delivery(Headers(d.headers), payload), p.reply(event, payload)


# --- gitlab signing token ------------------------------------------------------------------
def test_gitlab_signing_token_endpoint_accepts_only_signed_deliveries() -> None:
    d = gitlab_signed()
    assert answer(d)[:2] == ("Push Hook", d.headers["webhook-id"])
    token_only = {"X-Gitlab-Token": GITLAB_SIGNING.decode(), "X-Gitlab-Event": "Push Hook"}
    rejected(lambda: d.verify(headers=token_only), "missing")  # not even the signing token itself as a token


def test_gitlab_token_and_signing_token_side_by_side() -> None:
    """Moving an endpoint from the secret token to a signing token: both in the rotation list."""
    d = gitlab_signed()
    d.verify(secrets=[SECRET, GITLAB_SIGNING])
    token = {"X-Gitlab-Token": SECRET.decode(), "X-Gitlab-Event": "Push Hook"}
    d.verify(secrets=[SECRET, GITLAB_SIGNING], headers=token)
    # A signed delivery is checked by its signature even when a token rides along.
    forged = {**d.headers, "webhook-signature": "v1," + base64.b64encode(b"x" * 32).decode(),
              "X-Gitlab-Token": SECRET.decode()}
    rejected(lambda: d.verify(secrets=[SECRET, GITLAB_SIGNING], headers=forged), "mismatch")


def test_gitlab_sign_uses_the_scheme_of_its_secret() -> None:
    p = PROVIDERS["gitlab"]()
    signed = p.sign(b"{}", GITLAB_SIGNING, NOW, delivery="msg_1")
    assert "X-Gitlab-Token" not in signed and signed["webhook-id"] == signed["Idempotency-Key"] == "msg_1"
    p.verify(Headers(signed), b"{}", [GITLAB_SIGNING], NOW)
    assert PROVIDERS["gitlab"].secret_problem(b"whsec_not*base64") is not None
    assert PROVIDERS["gitlab"].secret_problem(b"plain token") is None


# --- twilio ------------------------------------------------------------------------------------
# twilio-python tests/unit/test_request_validator.py: token "12345", this URL and these params.
VECTOR_PARAMS = [("CallSid", "CA1234567890ABCDE"), ("Caller", "+14158675309"), ("Digits", "1234"),
                 ("From", "+14158675309"), ("To", "+18005551212")]
VECTOR_URL = "https://mycompany.com/myapp.php"


def twilio_vector(signature: str, url: str = VECTOR_URL, body: bytes = urlencode(VECTOR_PARAMS).encode(),
                  target: str = "/myapp.php?foo=1&bar=2", form: bool = True) -> Delivery:
    ctype = "application/x-www-form-urlencoded" if form else "application/json"
    return Delivery("twilio", {"X-Twilio-Signature": signature, "Content-Type": ctype}, body, b"12345",
                    options={"url": url}, signed=("X-Twilio-Signature",), target=target)


def test_twilio_sdk_published_vectors() -> None:
    twilio_vector("RSOYDt4T1cUTdK1PDd93/VVr8B8=").verify()
    body = b'{"property": "value", "boolean": true}'
    digest = "0a1ff7634d9ab3b95db5c9a2dfe9416e41502b283a80c7cf19632632f96e6620"
    assert hashlib.sha256(body).hexdigest() == digest
    twilio_vector("a9nBmqA0ju/hNViExpshrM61xv4=", body=body, target=f"/myapp.php?foo=1&bar=2&bodySHA256={digest}",
                  form=False).verify()


def test_twilio_both_port_forms_like_the_sdk() -> None:
    params = [("Body", "deploy"), ("From", "+15550001")]
    with_port = twilio_form(params, url="https://example.com:443/sms", target="/sms")
    replace(with_port, options={"url": "https://example.com/sms"}).verify()  # signed with :443, configured without
    without = twilio_form(params, url="https://example.com/sms", target="/sms")
    replace(without, options={"url": "https://example.com:443/sms"}).verify()
    other_port = twilio_form(params, url="https://example.com:8443/sms", target="/sms")
    rejected(lambda: replace(other_port, options={"url": "https://example.com/sms"}).verify(), "mismatch")


def test_twilio_query_as_received_is_signed() -> None:
    d = twilio_form([("Body", "x")], target="/twilio?route=a&route=b")
    d.verify()
    rejected(lambda: d.verify(target="/twilio?route=a"), "mismatch")
    rejected(lambda: d.verify(target="/twilio"), "mismatch")
    rejected(lambda: d.verify(target="/twilio?route=b&route=a"), "mismatch")  # the order as received


def test_twilio_form_params_are_sorted_and_every_one_is_signed() -> None:
    params = [("To", "+1"), ("Body", "b"), ("Body", "a"), ("Empty", "")]
    d = twilio_form(params)
    d.verify()
    rejected(lambda: d.verify(body=urlencode([*params, ("Extra", "1")]).encode()), "mismatch")
    rejected(lambda: d.verify(body=urlencode(params[:-1]).encode()), "mismatch")


def test_twilio_json_bodies_need_their_hash_in_the_url() -> None:
    d = twilio()
    rejected(lambda: d.verify(target="/twilio?x=1"), "missing")
    rejected(lambda: d.verify(body=d.body + b" "), "mismatch")
    other_hash = f"/twilio?x=1&bodySHA256={hashlib.sha256(b'{}').hexdigest()}"
    rejected(lambda: d.verify(target=other_hash), "mismatch")


def test_twilio_shared_key_sha256_and_unknown_algorithms() -> None:
    signed = VECTOR_URL + "".join(k + v for k, v in sorted(VECTOR_PARAMS))
    d = twilio_vector(b64_mac(b"12345", signed.encode()), target="/myapp.php")
    rejected(lambda: d.verify(), "mismatch")  # HMAC-SHA256 is only tried when the settings header says so
    headers = {**d.headers, "X-Twilio-Webhooks-Signature-Settings": "key=webhooks_sharedkey_1,algorithm=HMAC_SHA256"}
    d.verify(headers=headers)
    headers["X-Twilio-Webhooks-Signature-Settings"] = "algorithm=HMAC_MD5"
    rejected(lambda: d.verify(headers=headers), "malformed")


def test_twilio_url_option_is_checked() -> None:
    for bad in ("", "ftp://x/y", "https:///path", "https://x/y?a=1", "https://x/y#f", "https://x:port/y"):
        with pytest.raises(ValueError, match="url"):
            PROVIDERS["twilio"](url=bad)


def test_twilio_event_delivery_and_request() -> None:
    d = twilio_form([("MessageStatus", "delivered"), ("MessageSid", "SM1")])
    d.headers["I-Twilio-Idempotency-Token"] = "idem-1"
    assert answer(d)[:2] == ("delivered", "idem-1")
    p = PROVIDERS["twilio"](url="https://hooks.example.com/twilio")
    form = p.request(b"SmsStatus=received&Body=hi", SECRET, NOW, delivery="idem-2", target="/twilio?a=1",
                     content_type="application/x-www-form-urlencoded")
    assert form.target == "/twilio?a=1"
    p.verify(Headers({**form.headers, "Content-Type": "application/x-www-form-urlencoded"}), form.body, [SECRET], NOW,
             form.target)
    js = p.request(b'{"type":"com.twilio.x"}', SECRET, NOW, target="/twilio")
    assert js.target == "/twilio?bodySHA256=" + hashlib.sha256(js.body).hexdigest() and js.notes
    p.verify(Headers(js.headers), js.body, [SECRET], NOW, js.target)


# --- discord ----------------------------------------------------------------------------------
def test_discord_ping_is_answered_without_a_hook() -> None:
    event, delivery, reply = answer(discord(b'{"type":1,"id":"1","application_id":"2","token":"t","version":1}'))
    assert (event, delivery) == ("PING", "1") and reply == Reply(b'{"type":1}')


def test_discord_event_types() -> None:
    assert answer(discord())[:2] == ("APPLICATION_COMMAND", "1100000000000000001")
    webhook_event = b'{"version":1,"application_id":"2","type":1,"event":{"type":"APPLICATION_AUTHORIZED"}}'
    assert answer(discord(webhook_event))[:3] == ("APPLICATION_AUTHORIZED", None, None)
    assert answer(discord(b'{"version":1,"application_id":"2","type":0}'))[0] == "WEBHOOK_PING"


def test_discord_signature_must_be_lowercase_hex_of_64_bytes() -> None:
    d = discord()
    sig = d.headers["X-Signature-Ed25519"]
    for bad in (sig.upper(), sig[:-2], sig + "00", "zz" * 64):
        rejected(lambda bad=bad: d.verify(headers=d.with_header("X-Signature-Ed25519", bad)), "malformed")
    rejected(lambda: d.verify(headers=d.with_header("X-Signature-Ed25519", "00" * 64)), "mismatch")


def test_discord_keys() -> None:
    cls = PROVIDERS["discord"]
    assert cls.secret_problem(DISCORD_PUBLIC) is None
    assert cls.secret_problem(b"Bot abc") is not None and cls.secret_problem(b"ab" * 31) is not None
    # RFC 8032 section 7.1, TEST 1: this secret key has this public key.
    from sidecar.providers.discord import public_key
    assert public_key(b"9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60") == (
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
    signed = cls().request(b"{}", DISCORD_PRIVATE, NOW)
    assert signed.notes == [f"public key (the endpoint's secret): {DISCORD_PUBLIC.decode()}"]
    with pytest.raises(ValueError, match="private key"):
        cls().sign(b"{}", b"not a key", NOW)


def test_discord_loads_ed25519_only_when_used() -> None:
    code = ("import sys, sidecar.server, sidecar.config, sidecar.providers as p\n"
            "before = 'cryptography' in sys.modules\n"
            "p.PROVIDERS['github']()\n"
            "print(before, 'cryptography' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.stdout.split() == ["False", "False"], out.stderr


# --- linear ----------------------------------------------------------------------------------
def test_linear_timestamp_in_the_body() -> None:
    d = linear()
    assert answer(d)[:2] == ("Issue", "234d1a4e-b617-4388-90fe-adc3633d6b72")
    for body, reason in ((b'{"type":"Issue"}', "missing"), (b'{"webhookTimestamp":"1700000000000"}', "malformed"),
                         (b'{"webhookTimestamp":1.7e12}', "malformed"), (b"[1]", "missing"),
                         (b"not json", "malformed")):
        signed = Delivery("linear", {"Linear-Signature": hex_mac(SECRET, body)}, body)
        rejected(lambda signed=signed: signed.verify(), reason)


def test_linear_event_from_the_body_and_request_sets_the_timestamp() -> None:
    d = linear()
    headers = d.with_header("Linear-Event", None)
    assert PROVIDERS["linear"]().event(Headers(headers), {"type": "Comment"}) == "Comment"
    signed = PROVIDERS["linear"]().request(b'{"type":"Issue","action":"create"}', SECRET, NOW + 0.5)
    assert json.loads(signed.body)["webhookTimestamp"] == (NOW * 1000 + 500)
    PROVIDERS["linear"]().verify(Headers(signed.headers), signed.body, [SECRET], NOW)


# --- paddle ------------------------------------------------------------------------------------
def test_paddle_several_h1_and_unknown_keys() -> None:
    d = paddle(extra=";h1=" + "0" * 64 + ";v2=ignored")
    d.verify()
    event, delivery, _ = answer(paddle(b'{"event_id":"evt_01","event_type":"transaction.completed"}'))
    assert (event, delivery) == ("transaction.completed", "evt_01")
    for bad in (f"h1={'0' * 64}", f"ts={NOW}", f"ts={NOW};ts={NOW};h1=00", f"ts={NOW},h1=00"):
        rejected(lambda bad=bad: d.verify(headers={"Paddle-Signature": bad}), "malformed")


# --- mailgun ----------------------------------------------------------------------------------
def test_mailgun_json_and_form_bodies() -> None:
    event, delivery, _ = answer(mailgun())
    assert (event, delivery) == ("delivered", MAILGUN_TOKEN)
    t, token = str(NOW), "f" * 50
    form = urlencode({"event": "opened", "recipient": "a@example.com", "timestamp": t, "token": token,
                      "signature": hex_mac(SECRET, (t + token).encode())}).encode()
    d = Delivery("mailgun", {"Content-Type": "application/x-www-form-urlencoded"}, form)
    assert answer(d)[:2] == ("opened", token)


def test_mailgun_signature_fields() -> None:
    d = mailgun()
    payload = json.loads(d.body)
    for name in ("timestamp", "token", "signature"):
        missing = {**payload, "signature": {k: v for k, v in payload["signature"].items() if k != name}}
        rejected(lambda missing=missing: d.verify(body=json.dumps(missing).encode()), "missing")
    rejected(lambda: d.verify(body=b'{"event-data":{}}'), "missing")
    rejected(lambda: d.verify(body=b"not json"), "malformed")
    rejected(lambda: d.verify(body=json.dumps({**payload, "signature": "x"}).encode()), "malformed")
    as_int = {**payload, "signature": {**payload["signature"], "timestamp": NOW}}
    d.verify(body=json.dumps(as_int).encode())  # a number is signed as its decimal digits
    token = {**payload, "signature": {**payload["signature"], "token": "0" + MAILGUN_TOKEN[1:]}}
    rejected(lambda: d.verify(body=json.dumps(token).encode()), "mismatch")


def test_mailgun_signature_does_not_cover_the_event_data() -> None:
    """Documented, not wished for: Mailgun signs timestamp + token only."""
    d = mailgun()
    payload = json.loads(d.body)
    payload["event-data"]["event"] = "failed"
    d.verify(body=json.dumps(payload).encode())


def test_mailgun_request_writes_the_signature_into_the_body() -> None:
    p = PROVIDERS["mailgun"]()
    signed = p.request(b'{"event-data":{"event":"delivered"}}', SECRET, NOW, delivery="tok")
    assert signed.headers == {} and json.loads(signed.body)["signature"]["token"] == "tok"
    p.verify(Headers({"Content-Type": "application/json"}), signed.body, [SECRET], NOW)
    form = p.request(b"recipient=a%40b", SECRET, NOW, event="opened", content_type="application/x-www-form-urlencoded")
    p.verify(Headers({"Content-Type": "application/x-www-form-urlencoded"}), form.body, [SECRET], NOW)


# --- zoom -----------------------------------------------------------------------------------------
def test_zoom_url_validation_is_answered_with_the_encrypted_token() -> None:
    body = b'{"event":"endpoint.url_validation","payload":{"plainToken":"qgg8vlvZRS6UYooatFL8Aw"},"event_ts":1}'
    d = zoom(body)
    p = d.make()
    p.verify(Headers(d.headers), body, [OTHER, SECRET], NOW)  # the second secret of the rotation signed it
    reply = p.reply("endpoint.url_validation", p.parse(Headers(d.headers), body))
    assert reply is not None and reply.content_type == "application/json"
    assert json.loads(reply.body) == {"plainToken": "qgg8vlvZRS6UYooatFL8Aw",
                                      "encryptedToken": hex_mac(SECRET, b"qgg8vlvZRS6UYooatFL8Aw")}
    with pytest.raises(BadRequest):  # no verified request on this thread: no answer
        p.reply("endpoint.url_validation", {"payload": {"plainToken": "x"}})
    assert answer(zoom())[:3] == ("meeting.started", None, None)


# --- pagerduty, sentry ----------------------------------------------------------------------------
def test_pagerduty_several_signatures_and_versions() -> None:
    d = pagerduty(others=(OTHER, b"third"))
    d.verify()
    assert answer(d)[:2] == ("incident.triggered", "dba2ba9b-5d1c-4c63-b3c3-1d0b7f5d")
    rejected(lambda: d.verify(headers={"X-PagerDuty-Signature": "v2=" + hex_mac(SECRET, d.body)}), "malformed")
    d.verify(headers={"X-PagerDuty-Signature": "v2=abc,v1=" + hex_mac(SECRET, d.body)})


def test_sentry_event_and_delivery() -> None:
    assert answer(sentry())[:2] == ("issue", "5a7b1e7c-2d3a-4b0e-9c1f-8e6d5c4b3a29")


# --- twitch ----------------------------------------------------------------------------------------
def test_twitch_verification_challenge_is_answered_as_text() -> None:
    body = b'{"challenge":"pogchamp-kappa-360noscope-vohiyo","subscription":{"type":"channel.follow"}}'
    d = twitch(body)
    d.headers["Twitch-Eventsub-Message-Type"] = "webhook_callback_verification"
    event, _, reply = answer(d)
    assert event == "webhook_callback_verification"
    assert reply == Reply(b"pogchamp-kappa-360noscope-vohiyo", "text/plain")
    assert answer(twitch())[:3] == ("channel.follow", "msg_p5jXN8AQM9LWM0D4loKWxJek", None)


def test_twitch_timestamps_are_rfc3339_signed_as_sent() -> None:
    for stamp in ("2023-11-14T22:13:20Z", "2023-11-14T22:13:20.5Z", "2023-11-14T23:13:20.123456789+01:00"):
        twitch(stamp=stamp).verify()
    for stamp in ("1700000000", "2023-11-14 22:13:20Z", "2023-13-14T22:13:20Z", "2023-11-14T22:13:20",
                  "2023-11-14T22:13:20.1234567890Z", "2023-02-30T22:13:20Z"):
        rejected(lambda stamp=stamp: twitch(stamp=stamp).verify(), "malformed")
    d = twitch()
    rejected(lambda: d.verify(headers=d.with_header("Twitch-Eventsub-Message-Timestamp", rfc3339(NOW + 0.1))),
             "mismatch")


# --- basic and bearer ---------------------------------------------------------------------------
def test_basic_and_bearer_schemes() -> None:
    b = basic()
    b.verify(headers={"Authorization": "basic " + base64.b64encode(BASIC_SECRET).decode()})  # scheme: any case
    for bad in ("Bearer x", "Basic", "Basic !!!", "Digest abc", base64.b64encode(BASIC_SECRET).decode()):
        rejected(lambda bad=bad: b.verify(headers={"Authorization": bad}), "malformed")
    assert PROVIDERS["basic"].secret_problem(b"no colon") is not None
    t = bearer()
    rejected(lambda: t.verify(headers={"Authorization": "Basic " + t.secret.decode()}), "malformed")
    rejected(lambda: t.verify(headers={"Authorization": "Bearer " + t.secret.decode() + "x"}), "mismatch")


def test_credential_event_options() -> None:
    p = PROVIDERS["bearer"](event_field="webhookEvent", delivery_header="X-Atlassian-Webhook-Identifier")
    h = Headers({"X-Atlassian-Webhook-Identifier": "42"})
    assert p.event(h, {"webhookEvent": "jira:issue_created"}) == "jira:issue_created" and p.delivery(h, {}) == "42"
    assert PROVIDERS["basic"]().event(h, {"status": "firing"}) == "" and PROVIDERS["basic"]().delivery(h, {}) is None
    with pytest.raises(ValueError, match="not both"):
        PROVIDERS["basic"](event_field="a", event_header="X-A")


# --- shopify (issue #13): the headers Shopify's own validator requires ------------------------------
def test_shopify_sign_adds_the_headers_shopifys_validator_requires() -> None:
    headers = PROVIDERS["shopify"]().sign(b"{}", SECRET, NOW, event="orders/create", delivery="w1")
    for name in ("X-Shopify-Hmac-Sha256", "X-Shopify-Topic", "X-Shopify-Webhook-Id", "X-Shopify-Shop-Domain",
                 "X-Shopify-API-Version", "X-Shopify-Event-Id", "X-Shopify-Triggered-At"):
        assert headers[name], name
    assert headers["X-Shopify-Shop-Domain"].endswith(".myshopify.com")
    assert headers["X-Shopify-Triggered-At"] == "2023-11-14T22:13:20Z"


# --- config ----------------------------------------------------------------------------------------
def test_new_providers_through_config(tmp_path: Path) -> None:
    cfg = endpoint_config(tmp_path, "    provider: twilio\n    url: https://example.com/twilio\n", {"S": "tok"})
    twilio = cfg.endpoints["/hook"].provider
    assert isinstance(twilio, Twilio) and twilio.url == "https://example.com/twilio"
    assert "needs 'url'" in endpoint_error(tmp_path, "    provider: twilio\n", {"S": "tok"})
    assert "public key" in endpoint_error(tmp_path, "    provider: discord\n", {"S": "not hex"})
    paddle_provider = endpoint_config(tmp_path, "    provider: paddle\n", {"S": "pdl"}).endpoints["/hook"].provider
    assert tolerance_of(paddle_provider) == 5
    cfg = endpoint_config(tmp_path, "    provider: twitch\n    tolerance_s: 60\n", {"S": "k"})
    assert tolerance_of(cfg.endpoints["/hook"].provider) == 60
    assert "user:password" in endpoint_error(tmp_path, "    provider: basic\n", {"S": "nocolon"})
    cfg = endpoint_config(tmp_path, "    provider: bearer\n    event_field: status\n", {"S": "t"})
    assert cfg.endpoints["/hook"].provider.opts["event_field"] == "status"
