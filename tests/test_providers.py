"""Unit tests of every provider, calling the classes directly.

Valid deliveries are built here with hmac/hashlib/base64, independently of
sidecar.providers, from each sender's documented scheme (and its published
test vector where there is one); `sign()` is only checked against them.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import io
import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlencode

import pytest

from sidecar.errors import BadRequest
from sidecar.providers import PROVIDERS, GenericHmac, Reply, Slack, StandardWebhooks, Stripe

from . import provider_cases as cases
from .provider_cases import (
    JSON_BODY,
    NOW,
    SECRET,
    Delivery,
    Headers,
    b64_mac,
    hex_mac,
    rejected,
    tolerance_of,
)
from .support import endpoint_config, endpoint_error


def github(body: bytes = JSON_BODY, secret: bytes = SECRET) -> Delivery:
    # https://docs.github.com/en/webhooks/using-webhooks/validating-webhook-deliveries
    return Delivery("github", {"X-Hub-Signature-256": "sha256=" + hex_mac(secret, body), "X-GitHub-Event": "push",
                               "X-GitHub-Delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958"},
                    body, secret, signed=("X-Hub-Signature-256",))


def gitlab(body: bytes = JSON_BODY, secret: bytes = SECRET) -> Delivery:
    # https://docs.gitlab.com/user/project/integrations/webhooks/ : X-Gitlab-Token is the secret token itself.
    return Delivery("gitlab", {"X-Gitlab-Token": secret.decode(), "X-Gitlab-Event": "Push Hook",
                               "X-Gitlab-Event-UUID": "13792a34-cac6-4fda-95a8-c58e00a3954e"},
                    body, secret, signed=("X-Gitlab-Token",))


def gitea(body: bytes = JSON_BODY, secret: bytes = SECRET) -> Delivery:
    # Gitea's deliver.go: X-Gitea-Signature = hex(HMAC-SHA256(secret, payload)), no prefix.
    # https://github.com/go-gitea/gitea/blob/main/services/webhook/deliver.go
    return Delivery("gitea", {"X-Gitea-Signature": hex_mac(secret, body), "X-Gitea-Event": "push",
                              "X-Gitea-Delivery": "f6266f16-1bf3-46a5-9ea4-602e06ead473",
                              "Content-Type": "application/json"},
                    body, secret, signed=("X-Gitea-Signature",))


def bitbucket(body: bytes = JSON_BODY, secret: bytes = SECRET) -> Delivery:
    # https://support.atlassian.com/bitbucket-cloud/docs/manage-webhooks/ ("Secure webhooks")
    return Delivery("bitbucket", {"X-Hub-Signature": "sha256=" + hex_mac(secret, body), "X-Event-Key": "repo:push",
                                  "X-Request-UUID": "4b5e5e4c-7f0e-4d0f-9d8e-3c2f1a0b9c8d"},
                    body, secret, signed=("X-Hub-Signature",))


STRIPE_SECRET = b"whsec_test_secret"


def stripe(body: bytes = JSON_BODY, secret: bytes = STRIPE_SECRET, t: int = NOW, extra: str = "") -> Delivery:
    # https://docs.stripe.com/webhooks#verify-manually : HMAC-SHA256 hex of "<t>.<body>" keyed by the
    # whole whsec_ string; stripe-python's tests/test_webhook.py builds its headers the same way.
    sig = hex_mac(secret, f"{t}.".encode() + body)
    return Delivery("stripe", {"Stripe-Signature": f"t={t},v1={sig}{extra}"}, body, secret,
                    signed=("Stripe-Signature",), timestamped=True)


def slack(body: bytes = JSON_BODY, secret: bytes = SECRET, t: int = NOW) -> Delivery:
    # https://api.slack.com/authentication/verifying-requests-from-slack
    sig = "v0=" + hex_mac(secret, f"v0:{t}:".encode() + body)
    return Delivery("slack", {"X-Slack-Request-Timestamp": str(t), "X-Slack-Signature": sig}, body, secret,
                    signed=("X-Slack-Request-Timestamp", "X-Slack-Signature"), timestamped=True)


STANDARD_SECRET = b"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def standard(body: bytes = JSON_BODY, secret: bytes = STANDARD_SECRET, t: int = NOW,
             msg_id: str = "msg_p5jXN8AQM9LWM0D4loKWxJek", prefix: str = "webhook-") -> Delivery:
    # https://github.com/standard-webhooks/standard-webhooks/blob/main/spec/standard-webhooks.md
    key = base64.b64decode(secret.removeprefix(b"whsec_"))
    sig = "v1," + b64_mac(key, f"{msg_id}.{t}.".encode() + body)
    return Delivery("standard", {f"{prefix}id": msg_id, f"{prefix}timestamp": str(t), f"{prefix}signature": sig},
                    body, secret, signed=(f"{prefix}id", f"{prefix}timestamp", f"{prefix}signature"),
                    timestamped=True, other=b"whsec_" + base64.b64encode(cases.OTHER))


def shopify(body: bytes = JSON_BODY, secret: bytes = SECRET) -> Delivery:
    # https://shopify.dev/docs/apps/build/webhooks/subscribe/https (base64 HMAC-SHA256 of the raw body)
    return Delivery("shopify", {"X-Shopify-Hmac-Sha256": b64_mac(secret, body), "X-Shopify-Topic": "orders/create",
                                "X-Shopify-Webhook-Id": "b54557e4-bdd9-4b37-8a5f-bf7d70bcd043"},
                    body, secret, signed=("X-Shopify-Hmac-Sha256",))


GENERIC_OPTIONS = {"header": "X-Signature", "prefix": "sha256=", "event_header": "X-Event",
                   "delivery_header": "X-Delivery"}


def generic(body: bytes = JSON_BODY, secret: bytes = SECRET) -> Delivery:
    return Delivery("hmac-sha256", {"X-Signature": "sha256=" + hex_mac(secret, body), "X-Event": "build.done",
                                    "X-Delivery": "d-1"},
                    body, secret, options=dict(GENERIC_OPTIONS), signed=("X-Signature",))


FACTORIES: dict[str, Callable[..., Delivery]] = {
    "github": github, "gitlab": gitlab, "gitea": gitea, "bitbucket": bitbucket, "stripe": stripe,
    "slack": slack, "standard": standard, "shopify": shopify, "hmac-sha256": generic,
}
# Every scheme: the ten first providers and the senders added since (provider_cases.py).
ALL_FACTORIES = {**FACTORIES, **cases.NEW_FACTORIES}
VERIFYING = sorted(ALL_FACTORIES)
# What the signature covers: not the body for a GitLab token or a transport credential; mailgun
# signs only values inside the body, and has no signature header.
BODY_SIGNED = [p for p in VERIFYING if p not in ("gitlab", "basic", "bearer", "mailgun")]
HEADER_SIGNED = [p for p in VERIFYING if p != "mailgun"]
TIMESTAMPED = sorted(p for p in VERIFYING if ALL_FACTORIES[p]().timestamped)
# Where a timestamped scheme carries its Unix seconds: (header, prefix before the digits, separator after).
UNIX_TS_HEADER = {"slack": ("X-Slack-Request-Timestamp", "", ""), "standard": ("webhook-timestamp", "", ""),
                  "gitlab-signed": ("webhook-timestamp", "", ""), "zoom": ("x-zm-request-timestamp", "", ""),
                  "discord": ("X-Signature-Timestamp", "", ""), "stripe": ("Stripe-Signature", "t=", ","),
                  "paddle": ("Paddle-Signature", "ts=", ";")}


def signature_header(d: Delivery) -> str:
    return d.signed[-1]


# --- every provider: the same negative cases ------------------------------------------
@pytest.mark.parametrize("name", VERIFYING)
def test_valid_delivery_verifies(name: str) -> None:
    ALL_FACTORIES[name]().verify()


@pytest.mark.parametrize("name", BODY_SIGNED)
def test_tampered_body_is_rejected(name: str) -> None:
    d = ALL_FACTORIES[name]()
    rejected(lambda: d.verify(body=d.body.replace(b"main", b"mainx").replace(b"1", b"2")))
    rejected(lambda: d.verify(body=d.body + b" "))
    rejected(lambda: d.verify(body=b""))


@pytest.mark.parametrize("name", VERIFYING)
def test_wrong_secret_is_rejected(name: str) -> None:
    d = ALL_FACTORIES[name]()
    rejected(lambda: d.verify(secrets=[d.other]), "mismatch")
    rejected(lambda: d.verify(secrets=[]), None)


@pytest.mark.parametrize("name", HEADER_SIGNED)
def test_every_signed_header_is_required(name: str) -> None:
    d = ALL_FACTORIES[name]()
    for h in d.signed:
        rejected(lambda h=h: d.verify(headers=d.with_header(h, None)), "missing")
        rejected(lambda h=h: d.verify(headers=d.with_header(h, "")), "missing")
    rejected(lambda: d.verify(headers={}), "missing")


@pytest.mark.parametrize("name", HEADER_SIGNED)
def test_malformed_signature_header_is_a_signature_error(name: str) -> None:
    d = ALL_FACTORIES[name]()
    h = signature_header(d)
    good = d.headers[h]
    for bad in ["garbage", "=", ",", " ", "sha256=", "v0=", "v1,", "t=,v1=", "\x00", "\t" + good, good + "\n",
                good + "é", "é" * 64, good.replace(good[-2], "\u0663"), good * 40, "x" * 5000]:
        rejected(lambda bad=bad: d.verify(headers=d.with_header(h, bad)))


@pytest.mark.parametrize("name", HEADER_SIGNED)
def test_signature_of_the_wrong_length_is_rejected(name: str) -> None:
    d = ALL_FACTORIES[name]()
    h = signature_header(d)
    good = d.headers[h]
    for bad in [good[:-1], good + "0", good + "=", good[:-10]]:
        rejected(lambda bad=bad: d.verify(headers=d.with_header(h, bad)))


@pytest.mark.parametrize("name", VERIFYING)
def test_every_secret_of_a_rotation_is_tried(name: str) -> None:
    d = ALL_FACTORIES[name]()
    d.verify(secrets=[d.other, d.secret])
    d.verify(secrets=[d.secret, d.other])
    rejected(lambda: d.verify(secrets=[d.other, d.other]), "mismatch")


HEX_PREFIX = {"bitbucket": "sha256=", "github": "sha256=", "gitea": "", "hmac-sha256": "sha256=", "slack": "v0=",
              "stripe": f"t={NOW},v1=", "sentry": "", "linear": "", "pagerduty": "v1=", "paddle": f"ts={NOW};h1=",
              "zoom": "v0=", "twitch": "sha256=", "discord": ""}


@pytest.mark.parametrize("name", sorted(HEX_PREFIX))
def test_hex_is_compared_in_the_lowercase_the_sender_emits(name: str) -> None:
    d = ALL_FACTORIES[name]()
    h = signature_header(d)
    prefix = HEX_PREFIX[name]
    upper = prefix + d.headers[h].removeprefix(prefix).upper()
    assert upper != d.headers[h]
    rejected(lambda: d.verify(headers=d.with_header(h, upper)))


@pytest.mark.parametrize("name", HEADER_SIGNED)
def test_error_messages_never_hold_a_signature(name: str) -> None:
    d = ALL_FACTORIES[name]()
    h = signature_header(d)
    error = rejected(lambda: d.verify(secrets=[d.other]))
    message = str(error)
    assert d.headers[h] not in message and d.secret.decode() not in message
    for part in d.headers[h].replace(",", " ").replace("=", " ").replace(";", " ").split():
        if len(part) > 8:
            assert part not in message


# twilio and mailgun sign more than headers: their request() is tested with them.
@pytest.mark.parametrize("name", [p for p in HEADER_SIGNED if p != "twilio"])
def test_sign_produces_what_the_sender_sends(name: str) -> None:
    d = ALL_FACTORIES[name]()
    provider = d.make()
    secret = d.signing_secret or d.secret
    headers = provider.sign(d.body, secret, NOW, event="push", delivery=cases.MSG_ID)
    provider.verify(Headers(headers), d.body, [d.secret], NOW)
    for h in d.signed:
        assert headers[h] == d.headers[h], h  # byte-identical to the independent computation


# --- timestamped schemes ------------------------------------------------------------
@pytest.mark.parametrize("name", TIMESTAMPED)
def test_stale_and_future_timestamps_are_rejected(name: str) -> None:
    make = ALL_FACTORIES[name]
    tolerance = int(tolerance_of(make().make()))
    make(t=NOW - tolerance).verify()  # exactly at the tolerance: still accepted
    make(t=NOW + tolerance).verify()
    rejected(lambda: make(t=NOW - tolerance - 1).verify(), "stale")
    rejected(lambda: make(t=NOW + tolerance + 1).verify(), "future")
    rejected(lambda: make(t=0).verify(), "stale")
    rejected(lambda: make(t=NOW * 10).verify(), "future")


SDK_TOLERANCE = {"slack": 300, "standard": 300, "stripe": 300, "gitlab-signed": 300, "zoom": 300, "discord": 300,
                 "linear": 60, "paddle": 5, "mailgun": 900, "twitch": 600}


@pytest.mark.parametrize("name", TIMESTAMPED)
def test_tolerance_is_an_endpoint_option(name: str) -> None:
    d = ALL_FACTORIES[name](t=NOW - 4)
    assert tolerance_of(d.make()) == SDK_TOLERANCE[name]  # the sender's own SDK default
    d.verify()
    short = replace(d, options={**d.options, "tolerance_s": 3})
    rejected(lambda: short.verify(), "stale")
    long = replace(ALL_FACTORIES[name](t=NOW - 1000), options={"tolerance_s": 3600.0})
    long.verify()
    for bad in (0, -1, 10**9, "300", True):
        with pytest.raises(ValueError, match="tolerance_s"):
            PROVIDERS[d.provider](tolerance_s=bad)


def _with_ts(d: Delivery, name: str, raw: str) -> dict[str, str]:
    header, prefix, sep = UNIX_TS_HEADER[name]
    if not prefix:
        return d.with_header(header, raw)
    rest = d.headers[header].split(sep, 1)[1]
    return d.with_header(header, f"{prefix}{raw}{sep}{rest}")


@pytest.mark.parametrize("name", sorted(UNIX_TS_HEADER))
def test_malformed_timestamps_are_signature_errors(name: str) -> None:
    for raw in ["", "abc", "1.7e9", " 1700000000", "1700000000 ", "+1700000000", "-1", "1_700_000_000",
                "\u0661\u0667\u0660\u0660", "9" * 400, "0x65", "1700000000.5"]:
        d = ALL_FACTORIES[name]()
        rejected(lambda d=d, raw=raw: d.verify(headers=_with_ts(d, name, raw)))


@pytest.mark.parametrize("name", sorted(UNIX_TS_HEADER))
def test_the_timestamp_is_signed_as_sent(name: str) -> None:
    """A re-formatted timestamp of the same value ("01700000000") breaks the signature."""
    d = ALL_FACTORIES[name]()
    rejected(lambda: d.verify(headers=_with_ts(d, name, f"0{NOW}")), "mismatch")


# --- github -------------------------------------------------------------------------
def test_github_documented_example() -> None:
    # https://docs.github.com/en/webhooks/using-webhooks/validating-webhook-deliveries#testing-the-webhook-payload-validation
    headers = Headers({"X-Hub-Signature-256":
                       "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"})
    PROVIDERS["github"]().verify(headers, b"Hello, World!", [b"It's a Secret to Everybody"], NOW)
    assert PROVIDERS["github"]().sign(b"Hello, World!", b"It's a Secret to Everybody", NOW)[
        "X-Hub-Signature-256"] == "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"


def test_github_sha1_only_when_allowed() -> None:
    body = b"Hello, World!"
    sha1 = {"X-Hub-Signature": "sha1=" + hex_mac(SECRET, body, hashlib.sha1)}
    rejected(lambda: PROVIDERS["github"]().verify(Headers(sha1), body, [SECRET], NOW), "missing")
    PROVIDERS["github"](allow_sha1=True).verify(Headers(sha1), body, [SECRET], NOW)
    rejected(lambda: PROVIDERS["github"](allow_sha1=True).verify(
        Headers({"X-Hub-Signature": "sha256=" + hex_mac(SECRET, body)}), body, [SECRET], NOW), "malformed")
    # With both headers, SHA-256 is the one checked: a bad one is not rescued by SHA-1.
    both = {**sha1, "X-Hub-Signature-256": "sha256=" + "0" * 64}
    rejected(lambda: PROVIDERS["github"](allow_sha1=True).verify(Headers(both), body, [SECRET], NOW), "mismatch")


def test_github_form_payload_is_signed_over_the_raw_form_body() -> None:
    payload = json.dumps({"zen": "Keep it logically awesome.", "hook_id": 1})
    body = urlencode({"payload": payload}).encode()
    headers = Headers({"Content-Type": "application/x-www-form-urlencoded",
                       "X-Hub-Signature-256": "sha256=" + hex_mac(SECRET, body), "X-GitHub-Event": "ping"})
    p = PROVIDERS["github"]()
    p.verify(headers, body, [SECRET], NOW)
    assert p.parse(headers, body)["hook_id"] == 1
    with pytest.raises(BadRequest):
        p.parse(headers, b"other=1")


def test_github_event_delivery_and_ping() -> None:
    d = github()
    p = d.make()
    payload = p.parse(Headers(d.headers), d.body)
    assert p.event(Headers(d.headers), payload) == "push"
    assert p.delivery(Headers(d.headers), payload) == "72d3162e-cc78-11e3-81ab-4c9367dc0958"
    assert p.event(Headers({}), payload) == ""
    assert p.delivery(Headers({}), payload) is None
    assert p.reply("ping", {"zen": "x"}) == Reply(b'{"status":"pong"}')
    assert p.reply("push", payload) is None


# --- gitlab -------------------------------------------------------------------------
def test_gitlab_token_event_object_kind_and_delivery() -> None:
    d = gitlab()
    p = d.make()
    h = Headers(d.headers)
    payload = p.parse(h, d.body)
    assert p.event(h, payload) == "Push Hook"
    assert payload["object_kind"] == "push"  # routed with `if: {object_kind: push}`
    assert p.delivery(h, payload) == "13792a34-cac6-4fda-95a8-c58e00a3954e"
    both = Headers({**d.headers, "Idempotency-Key": "908a6d9e-45fd-46c8-97e6-c4f350f219dd"})
    assert p.delivery(both, payload) == "908a6d9e-45fd-46c8-97e6-c4f350f219dd"  # stable across retries
    assert p.delivery(Headers({}), payload) is None
    assert p.reply("Push Hook", payload) is None


def test_gitlab_token_is_compared_exactly() -> None:
    d = gitlab()
    for bad in [SECRET.decode() + " ", SECRET.decode()[:-1], SECRET.decode().upper(), "é" * 5, "\u20ac"]:
        rejected(lambda bad=bad: d.verify(headers=d.with_header("X-Gitlab-Token", bad)), "mismatch")


def test_gitlab_non_ascii_token_round_trips_through_http_client() -> None:
    secret = "sécret-ключ".encode()
    raw = b"X-Gitlab-Token: " + secret + b"\r\nX-Gitlab-Event: Push Hook\r\n\r\n"
    headers = http.client.parse_headers(io.BytesIO(raw))
    PROVIDERS["gitlab"]().verify(headers, b"{}", [secret], NOW)
    rejected(lambda: PROVIDERS["gitlab"]().verify(headers, b"{}", [b"s\xc3\xa9cret"], NOW), "mismatch")


# --- gitea / forgejo ------------------------------------------------------------------
def test_gitea_form_post_is_signed_over_the_payload_field() -> None:
    # deliver.go: for application/x-www-form-urlencoded the body is url.Values{"payload": ...}.Encode()
    # while the MAC is computed over t.PayloadContent, the JSON itself.
    payload = json.dumps({"ref": "refs/heads/develop", "secret": "", "zen": "a b&c=d é"})
    body = urlencode({"payload": payload}).encode()
    headers = {"Content-Type": "application/x-www-form-urlencoded",
               "X-Gitea-Signature": hex_mac(SECRET, payload.encode()), "X-Gitea-Event": "push"}
    p = PROVIDERS["gitea"]()
    p.verify(Headers(headers), body, [SECRET], NOW)
    assert p.parse(Headers(headers), body)["ref"] == "refs/heads/develop"
    # The raw form body's MAC is not Gitea's scheme.
    raw = {**headers, "X-Gitea-Signature": hex_mac(SECRET, body)}
    rejected(lambda: p.verify(Headers(raw), body, [SECRET], NOW), "mismatch")
    # Nothing unsigned may ride along with the signed field.
    for extra in [body + b"&evil=1", b"evil=1&" + body, body + b"&payload=%7B%7D", b"payloadx=1", b"\xff",
                  b"", b"payload"]:
        rejected(lambda extra=extra: p.verify(Headers(headers), extra, [SECRET], NOW))


def test_gitea_empty_signature_without_a_secret_is_401() -> None:
    # Gitea sends the signature headers empty when the hook has no secret.
    d = gitea()
    empty = {**d.headers, "X-Gitea-Signature": "", "X-Gogs-Signature": "", "X-Hub-Signature-256": "sha256="}
    rejected(lambda: d.verify(headers=empty), "missing")


def test_forgejo_headers() -> None:
    body = JSON_BODY
    headers = {"X-Forgejo-Signature": hex_mac(SECRET, body), "X-Forgejo-Event": "pull_request",
               "X-Forgejo-Delivery": "0f3c2b1a-1111-2222-3333-444455556666"}
    p = PROVIDERS["gitea"]()
    p.verify(Headers(headers), body, [SECRET], NOW)
    assert p.event(Headers(headers), {}) == "pull_request"
    assert p.delivery(Headers(headers), {}) == "0f3c2b1a-1111-2222-3333-444455556666"
    # The first signature header present is the one checked: a wrong one is not rescued by an alias.
    both = {**headers, "X-Gitea-Signature": "0" * 64}
    rejected(lambda: p.verify(Headers(both), body, [SECRET], NOW), "mismatch")


def test_gitea_event_and_delivery() -> None:
    d = gitea()
    p = d.make()
    assert p.event(Headers(d.headers), {}) == "push"
    assert p.delivery(Headers(d.headers), {}) == "f6266f16-1bf3-46a5-9ea4-602e06ead473"
    assert p.delivery(Headers({}), {}) is None


# --- bitbucket ------------------------------------------------------------------------
def test_bitbucket_event_delivery_and_prefix() -> None:
    d = bitbucket()
    p = d.make()
    assert p.event(Headers(d.headers), {}) == "repo:push"
    assert p.delivery(Headers(d.headers), {}) == "4b5e5e4c-7f0e-4d0f-9d8e-3c2f1a0b9c8d"
    bare = d.headers["X-Hub-Signature"].removeprefix("sha256=")
    rejected(lambda: d.verify(headers=d.with_header("X-Hub-Signature", bare)), "malformed")
    rejected(lambda: d.verify(headers=d.with_header("X-Hub-Signature", "sha1=" + bare)), "malformed")


# --- stripe ---------------------------------------------------------------------------
def test_stripe_any_v1_matches_and_v0_and_unknown_keys_are_ignored() -> None:
    d = stripe(extra=",v0=6ffbb59b2300aae63f272406069a9788598b792a944a07aba816edb039989a39,foo=bar")
    d.verify()
    good = d.headers["Stripe-Signature"].split(",")[1]
    d.verify(headers=d.with_header("Stripe-Signature", f"t={NOW},v1={'0' * 64},{good}"))
    d.verify(headers=d.with_header("Stripe-Signature", f"{good},t={NOW}"))
    # v0 alone (or a v0 holding the real v1 signature) is not enough.
    rejected(lambda: d.verify(headers=d.with_header("Stripe-Signature", f"t={NOW},v0={good[3:]}")), "malformed")


def test_stripe_malformed_headers() -> None:
    d = stripe()
    good = d.headers["Stripe-Signature"]
    sig = good.split(",v1=")[1]
    for bad in [f"v1={sig}", f"t={NOW}", f"t={NOW},t={NOW},v1={sig}", f"t={NOW},v1={sig},", f"t={NOW},,v1={sig}",
                f"t={NOW},v1", f"t={NOW};v1={sig}", f"t={NOW},v1=", ",".join([f"v1={sig}"] * 40 + [f"t={NOW}"])]:
        rejected(lambda bad=bad: d.verify(headers=d.with_header("Stripe-Signature", bad)), "malformed")


def test_stripe_key_is_the_whole_whsec_string() -> None:
    d = stripe()
    decoded_key = base64.b64decode(STRIPE_SECRET.removeprefix(b"whsec_") + b"==")
    rejected(lambda: stripe(secret=decoded_key).verify(secrets=[STRIPE_SECRET]), "mismatch")
    d.verify(secrets=[STRIPE_SECRET])


def test_stripe_event_and_delivery_come_from_the_json() -> None:
    p = Stripe()
    body = b'{"id":"evt_1NG8Du2eZvKYlo2CUI79vXWy","object":"event","type":"payment_intent.succeeded"}'
    payload = p.parse(Headers({}), body)
    assert p.event(Headers({}), payload) == "payment_intent.succeeded"
    assert p.delivery(Headers({}), payload) == "evt_1NG8Du2eZvKYlo2CUI79vXWy"
    assert p.event(Headers({}), {"type": 3}) == ""
    assert p.delivery(Headers({}), ["evt"]) is None


# --- slack ----------------------------------------------------------------------------
SLACK_DOC_BODY = (
    b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V"
    b"&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text="
    b"&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN"
    b"&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c"
)


def test_slack_documented_example() -> None:
    # https://api.slack.com/authentication/verifying-requests-from-slack (the worked example)
    headers = Headers({"X-Slack-Request-Timestamp": "1531420618",
                       "X-Slack-Signature": "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503",
                       "Content-Type": "application/x-www-form-urlencoded"})
    secret = b"8f742231b10e8888abcd99yyyzzz85a5"
    p = Slack()
    p.verify(headers, SLACK_DOC_BODY, [secret], 1531420618 + 60)
    assert p.sign(SLACK_DOC_BODY, secret, 1531420618)["X-Slack-Signature"] == headers.get("X-Slack-Signature")
    rejected(lambda: p.verify(headers, SLACK_DOC_BODY, [secret], 1531420618 + 301), "stale")
    payload = p.parse(headers, SLACK_DOC_BODY)
    assert payload["command"] == "/webhook-collect"
    assert p.event(headers, payload) == "slash_command"
    assert p.delivery(headers, payload) == "398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c"
    assert p.reply("slash_command", payload) is None


def test_slack_url_verification_is_answered_with_its_challenge() -> None:
    # https://api.slack.com/events/url_verification
    body = (b'{"token":"Jhj5dZrVaK7ZwHHjRyZWjbDl","challenge":"3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P",'
            b'"type":"url_verification"}')
    d = slack(body)
    d.verify()
    p = d.make()
    payload = p.parse(Headers(d.headers), body)
    event = p.event(Headers(d.headers), payload)
    assert event == "url_verification"
    assert p.reply(event, payload) == Reply(b"3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P", "text/plain")
    with pytest.raises(BadRequest):
        p.reply("url_verification", {"type": "url_verification"})


def test_slack_event_types() -> None:
    p = Slack()
    h = Headers({})
    callback = {"type": "event_callback", "event_id": "Ev08MFMKH6", "event": {"type": "app_mention", "text": "hi"}}
    assert p.event(h, callback) == "app_mention"
    assert p.delivery(h, callback) == "Ev08MFMKH6"
    assert p.event(h, {"type": "event_callback", "event": "x"}) == "event_callback"
    assert p.event(h, {"type": "app_rate_limited"}) == "app_rate_limited"
    assert p.event(h, {"ssl_check": "1", "token": "x"}) == "ssl_check"
    assert p.reply("ssl_check", {"ssl_check": "1"}) == Reply(b"", "text/plain")
    assert p.event(h, {}) == "" and p.event(h, []) == "" and p.delivery(h, "x") is None


def test_slack_interactivity_payload_field() -> None:
    interaction = {"type": "block_actions", "trigger_id": "13345224609.738474920.8088930838d88f008e0",
                   "actions": [{"action_id": "approve"}]}
    body = urlencode({"payload": json.dumps(interaction)}).encode()
    d = slack(body)
    d.verify()
    headers = Headers({**d.headers, "Content-Type": "application/x-www-form-urlencoded"})
    p = d.make()
    payload = p.parse(headers, body)
    assert p.event(headers, payload) == "block_actions"
    assert p.delivery(headers, payload) == "13345224609.738474920.8088930838d88f008e0"
    with pytest.raises(BadRequest):
        p.parse(headers, urlencode({"payload": "{not json"}).encode())
    with pytest.raises(BadRequest):
        p.parse(headers, b"a=%ff")


def test_slack_prefix_is_required() -> None:
    d = slack()
    bare = d.headers["X-Slack-Signature"].removeprefix("v0=")
    rejected(lambda: d.verify(headers=d.with_header("X-Slack-Signature", bare)), "malformed")
    rejected(lambda: d.verify(headers=d.with_header("X-Slack-Signature", "v1=" + bare)), "malformed")


# --- standard webhooks / svix ---------------------------------------------------------
SPEC_BODY = b'{"test": 2432232314}'
SPEC_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
SPEC_TS = 1614265330
SPEC_SIG = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_standard_webhooks_reference_vector() -> None:
    # https://github.com/standard-webhooks/standard-webhooks/blob/main/libraries/go/webhook_test.go (TestWebhookSign)
    headers = Headers({"webhook-id": SPEC_ID, "webhook-timestamp": str(SPEC_TS), "webhook-signature": SPEC_SIG})
    p = StandardWebhooks()
    p.verify(headers, SPEC_BODY, [STANDARD_SECRET], SPEC_TS + 1)
    assert p.sign(SPEC_BODY, STANDARD_SECRET, SPEC_TS, delivery=SPEC_ID)["webhook-signature"] == SPEC_SIG
    # TestWebhookPrefix: the secret without whsec_ is the same key.
    p.verify(headers, SPEC_BODY, [STANDARD_SECRET.removeprefix(b"whsec_")], SPEC_TS)
    rejected(lambda: p.verify(headers, SPEC_BODY, [STANDARD_SECRET], SPEC_TS + 301), "stale")
    rejected(lambda: p.verify(headers, SPEC_BODY, [STANDARD_SECRET], SPEC_TS - 301), "future")


def test_standard_webhooks_several_signatures() -> None:
    # TestWebhook "valid multi sig is valid": other v1 and v2 entries around the real one.
    sigs = ["v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc=", "v2,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc=",
            SPEC_SIG, "v1a,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc="]
    headers = {"webhook-id": SPEC_ID, "webhook-timestamp": str(SPEC_TS), "webhook-signature": " ".join(sigs)}
    p = StandardWebhooks()
    p.verify(Headers(headers), SPEC_BODY, [STANDARD_SECRET], SPEC_TS)
    only_others = {**headers, "webhook-signature": " ".join(s for s in sigs if s != SPEC_SIG)}
    rejected(lambda: p.verify(Headers(only_others), SPEC_BODY, [STANDARD_SECRET], SPEC_TS), "mismatch")
    v2_only = {**headers, "webhook-signature": "v2," + SPEC_SIG[3:]}
    rejected(lambda: p.verify(Headers(v2_only), SPEC_BODY, [STANDARD_SECRET], SPEC_TS), "malformed")
    for bad in [SPEC_SIG + " ", " " + SPEC_SIG, SPEC_SIG.replace(",", " "), "v1" + SPEC_SIG, "v1 " + SPEC_SIG[3:],
                " ".join([SPEC_SIG] * 40)]:
        rejected(lambda bad=bad: p.verify(Headers({**headers, "webhook-signature": bad}), SPEC_BODY,
                                          [STANDARD_SECRET], SPEC_TS))


def test_standard_webhooks_id_is_signed() -> None:
    d = standard()
    rejected(lambda: d.verify(headers=d.with_header("webhook-id", "msg_other")), "mismatch")
    for bad in ["msg_\u00e9", "msg_\u2603", "msg\x00", "msg\n1"]:  # the id is part of the signed bytes
        rejected(lambda bad=bad: d.verify(headers=d.with_header("webhook-id", bad)), "malformed")


def test_svix_header_names() -> None:
    d = standard(prefix="svix-")
    d.verify()
    p = d.make()
    assert p.delivery(Headers(d.headers), {}) == "msg_p5jXN8AQM9LWM0D4loKWxJek"
    # One family at a time: a webhook- header makes the svix- ones irrelevant.
    mixed = {**d.headers, "webhook-id": "msg_p5jXN8AQM9LWM0D4loKWxJek"}
    rejected(lambda: d.verify(headers=mixed), "missing")


def test_standard_webhooks_secret_must_be_base64() -> None:
    d = standard()
    rejected(lambda: d.verify(secrets=[b"whsec_not*base64!"]), "bad_secret")
    d.verify(secrets=[b"whsec_not*base64!", STANDARD_SECRET])
    assert StandardWebhooks.secret_problem(b"whsec_not*base64!")
    assert StandardWebhooks.secret_problem(b"whsec_") and StandardWebhooks.secret_problem(b"")
    assert StandardWebhooks.secret_problem(STANDARD_SECRET) is None
    assert StandardWebhooks.secret_problem(b"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaS") is None  # padding optional
    with pytest.raises(ValueError, match="whsec_"):
        StandardWebhooks().sign(b"{}", b"whsec_not*base64!", NOW)


def test_standard_webhooks_event_and_delivery() -> None:
    d = standard(b'{"type":"invoice.paid","timestamp":"2022-11-03T20:26:10.344522Z","data":{}}')
    p = d.make()
    payload = p.parse(Headers(d.headers), d.body)
    assert p.event(Headers(d.headers), payload) == "invoice.paid"
    assert p.delivery(Headers(d.headers), payload) == "msg_p5jXN8AQM9LWM0D4loKWxJek"
    assert p.event(Headers({}), [1]) == "" and p.delivery(Headers({}), {}) is None


# --- shopify ----------------------------------------------------------------------------
def test_shopify_base64_topic_and_webhook_id() -> None:
    d = shopify()
    p = d.make()
    assert p.event(Headers(d.headers), {}) == "orders/create"
    assert p.delivery(Headers(d.headers), {}) == "b54557e4-bdd9-4b37-8a5f-bf7d70bcd043"
    good = d.headers["X-Shopify-Hmac-Sha256"]
    raw = base64.b64decode(good)
    for bad in [good.rstrip("="), base64.urlsafe_b64encode(raw[::-1]).decode(), raw.hex(), "sha256=" + good]:
        rejected(lambda bad=bad: d.verify(headers=d.with_header("X-Shopify-Hmac-Sha256", bad)), "mismatch")


# --- generic hmac-sha256 ------------------------------------------------------------------
def test_generic_options_are_checked() -> None:
    with pytest.raises(ValueError, match="header"):
        GenericHmac()
    with pytest.raises(ValueError, match="encoding"):
        GenericHmac(header="X-Sig", encoding="base32")
    with pytest.raises(ValueError, match="not both"):
        GenericHmac(header="X-Sig", event_header="X-Event", event_field="type")
    with pytest.raises(ValueError, match="header name"):
        GenericHmac(header="X Sig")
    with pytest.raises(ValueError, match="dotted"):
        GenericHmac(header="X-Sig", event_field="a..b")
    assert GenericHmac(header="X-Sig").encoding == "hex"


def test_generic_base64_event_field_and_no_prefix() -> None:
    body = b'{"event":{"type":"deploy.finished"},"id":"d-9"}'
    p = GenericHmac(header="X-Signature", encoding="base64", event_field="event.type")
    headers = {"X-Signature": b64_mac(SECRET, body)}
    p.verify(Headers(headers), body, [SECRET], NOW)
    assert p.event(Headers(headers), p.parse(Headers(headers), body)) == "deploy.finished"
    assert p.event(Headers(headers), {"event": "x"}) == ""
    assert p.delivery(Headers(headers), {}) is None
    rejected(lambda: p.verify(Headers({"X-Signature": hex_mac(SECRET, body)}), body, [SECRET], NOW), "mismatch")
    assert p.sign(body, SECRET, NOW) == headers


def test_generic_event_and_delivery_headers() -> None:
    d = generic()
    p = d.make()
    assert p.event(Headers(d.headers), {}) == "build.done"
    assert p.delivery(Headers(d.headers), {}) == "d-1"
    assert p.sign(b"{}", SECRET, NOW, event="x", delivery="y") == {
        "X-Signature": "sha256=" + hex_mac(SECRET, b"{}"), "X-Event": "x", "X-Delivery": "y"}


# --- none -------------------------------------------------------------------------------
def test_none_verifies_nothing_and_reads_optional_headers() -> None:
    p = PROVIDERS["none"]()
    assert p.needs_secret is False
    p.verify(Headers({}), b"anything", [], NOW)
    h = Headers({"X-Webhook-Event": "deploy", "X-Webhook-Delivery": "abc"})
    assert p.event(h, {}) == "deploy" and p.delivery(h, {}) == "abc"
    assert p.event(Headers({}), {"type": "t"}) == "t"
    assert p.sign(b"", b"", NOW, event="e", delivery="d") == {"X-Webhook-Delivery": "d", "X-Webhook-Event": "e"}


# --- registry and config ------------------------------------------------------------------
def test_every_provider_is_registered() -> None:
    assert set(PROVIDERS) == {"github", "gitlab", "gitea", "bitbucket", "stripe", "slack", "standard", "shopify",
                              "hmac-sha256", "none", "twilio", "discord", "linear", "paddle", "mailgun", "zoom",
                              "pagerduty", "twitch", "sentry", "basic", "bearer", "cloudevents"}
    for name, cls in PROVIDERS.items():
        assert cls.name == name and cls.__doc__
        for option in cls.options.values():
            assert option.type in (str, int, float, bool, list)


def test_provider_options_through_config(tmp_path: Path) -> None:
    cfg = endpoint_config(tmp_path, "    provider: stripe\n    tolerance_s: 60\n", {"S": "whsec_x"})
    assert tolerance_of(cfg.endpoints["/hook"].provider) == 60.0
    cfg = endpoint_config(tmp_path, "    provider: hmac-sha256\n    header: X-Sig\n    encoding: base64\n", {"S": "k"})
    hmac_provider = cfg.endpoints["/hook"].provider
    assert isinstance(hmac_provider, GenericHmac) and hmac_provider.encoding == "base64"
    assert "needs 'header'" in endpoint_error(tmp_path, "    provider: hmac-sha256\n", {"S": "k"})
    assert "tolerance_s" in endpoint_error(tmp_path, "    provider: slack\n    tolerance_s: 0\n", {"S": "k"})
    assert "unknown key" in endpoint_error(tmp_path, "    provider: github\n    tolerance_s: 5\n", {"S": "k"})
