"""Property tests of every provider.

1. No mutation of a signed header value, or of the body, of a valid delivery is
   ever accepted. Only what the signature covers is mutated: the signature,
   timestamp and id headers, and the body (not for GitLab, whose token does not
   cover the body). Unsigned headers (event type, delivery id) are left alone.
2. No input at all makes verify/parse/event/delivery/reply raise anything but
   SignatureError (verify) or BadRequest (parse, reply).
"""

from __future__ import annotations

import json
import re
import string
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from sidecar.errors import BadRequest, SignatureError
from sidecar.providers import PROVIDERS, Provider

from .provider_cases import BASIC_SECRET, DISCORD_PUBLIC, GITLAB_SIGNING, PADDLE_SECRET, TWILIO_URL, mailgun
from .test_providers import (
    ALL_FACTORIES,
    BODY_SIGNED,
    GENERIC_OPTIONS,
    NOW,
    SECRET,
    STANDARD_SECRET,
    STRIPE_SECRET,
    VERIFYING,
    Headers,
)

FAST = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])

chars = st.one_of(st.sampled_from(string.printable), st.characters())


@st.composite
def mutated_text(draw: st.DrawFn, value: str) -> str | None:
    """A different value for a header (None: the header is removed)."""
    op = draw(st.sampled_from(["replace", "insert", "delete", "truncate", "swapcase", "other", "remove", "nudge"]))
    runs = list(re.finditer(r"[0-9]{9,}", value)) or list(re.finditer(r"[0-9]+", value))
    if op == "remove":
        return None
    if op == "nudge" and runs:
        # A number (a timestamp) moved by a little: still inside the tolerance, so only the MAC can reject it.
        run = draw(st.sampled_from(runs))
        delta = draw(st.integers(-299, 299).filter(bool))
        out = value[:run.start()] + str(max(0, int(run.group()) + delta)) + value[run.end():]
    elif op == "other":
        out = draw(st.text(chars, max_size=80))
    elif op == "swapcase":
        out = value.swapcase()
    elif op == "truncate":
        out = value[:draw(st.integers(0, max(0, len(value) - 1)))]
    else:
        op = "insert" if op == "nudge" or not value else op
        i = draw(st.integers(0, len(value) - (0 if op == "insert" else 1)))
        c = draw(chars)
        if op == "replace":
            out = value[:i] + c + value[i + 1:]
        elif op == "insert":
            out = value[:i] + c + value[i:]
        else:
            out = value[:i] + value[i + 1:]
    assume(out != value)
    return out


@st.composite
def mutated_bytes(draw: st.DrawFn, value: bytes) -> bytes:
    op = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "other"]))
    if op == "other" or not value:
        out = draw(st.binary(max_size=200))
    elif op == "truncate":
        out = value[:draw(st.integers(0, len(value) - 1))]
    else:
        i = draw(st.integers(0, len(value) - 1))
        if op == "flip":
            bit = 1 << draw(st.integers(0, 7))
            out = value[:i] + bytes([value[i] ^ bit]) + value[i + 1:]
        elif op == "insert":
            out = value[:i] + bytes([draw(st.integers(0, 255))]) + value[i:]
        else:
            out = value[:i] + value[i + 1:]
    assume(out != value)
    return out


bodies = st.one_of(st.binary(max_size=200),
                   st.dictionaries(st.text(max_size=8), st.text(max_size=20), max_size=4).map(
                       lambda d: repr(d).encode()))


@pytest.mark.parametrize("name", [n for n in VERIFYING if n != "mailgun"])  # mailgun: the next test
@FAST
@given(data=st.data(), body=bodies)
def test_no_mutation_of_a_valid_delivery_is_accepted(name: str, data: st.DataObject, body: bytes) -> None:
    delivery = ALL_FACTORIES[name](body)
    delivery.verify()  # the original is valid
    body = delivery.body  # some factories wrap the body (linear signs a timestamp inside it)
    targets = list(delivery.signed) + (["(body)"] if name in BODY_SIGNED else [])
    targets += ["(query)"] if name == "twilio" else []
    target = data.draw(st.sampled_from(targets))
    headers, mutated_body, request_target = dict(delivery.headers), body, delivery.target
    if target == "(body)":
        mutated_body = data.draw(mutated_bytes(body))
    elif target == "(query)":  # twilio signs the query string as received
        path, _, query = request_target.partition("?")
        mutated_query = data.draw(mutated_text(query).filter(lambda q: q is not None))
        assert mutated_query is not None
        request_target = path + "?" + mutated_query
    elif target == "Authorization":
        # The scheme name is case-insensitive (RFC 7235): the credentials after it are what is signed.
        scheme, _, credentials = headers[target].partition(" ")
        new = data.draw(mutated_text(credentials))
        headers = delivery.with_header(target, None if new is None else f"{scheme} {new}")
    else:
        new = data.draw(mutated_text(headers[target]))
        headers = delivery.with_header(target, new)
    with pytest.raises(SignatureError):
        delivery.verify(headers=headers, body=mutated_body, target=request_target)


@FAST
@given(data=st.data())
def test_no_mutation_of_mailguns_signed_values_is_accepted(data: st.DataObject) -> None:
    """Mailgun signs timestamp + token inside the body: every change to them (or the signature) is refused."""
    delivery = mailgun()
    payload = json.loads(delivery.body)
    name = data.draw(st.sampled_from(["timestamp", "token", "signature"]))
    new = data.draw(mutated_text(payload["signature"][name]))
    signature = {k: v for k, v in payload["signature"].items() if k != name}
    if new is not None:
        signature[name] = new
    with pytest.raises(SignatureError):
        delivery.verify(body=json.dumps({**payload, "signature": signature}).encode())


# --- arbitrary input -----------------------------------------------------------------------
KNOWN_HEADERS = sorted({
    "X-Hub-Signature-256", "X-Hub-Signature", "X-GitHub-Event", "X-GitHub-Delivery", "X-Gitlab-Token",
    "X-Gitlab-Event", "X-Gitlab-Event-UUID", "Idempotency-Key", "X-Gitea-Signature", "X-Forgejo-Signature",
    "X-Gitea-Event", "X-Forgejo-Event", "X-Gitea-Delivery", "X-Event-Key", "X-Request-UUID", "Stripe-Signature",
    "X-Slack-Signature", "X-Slack-Request-Timestamp", "webhook-id", "webhook-timestamp", "webhook-signature",
    "svix-id", "svix-timestamp", "svix-signature", "X-Shopify-Hmac-Sha256", "X-Shopify-Topic",
    "X-Shopify-Webhook-Id", "X-Signature", "X-Event", "X-Delivery", "Content-Type", "X-Webhook-Event",
    "X-Twilio-Signature", "X-Twilio-Webhooks-Signature-Settings", "I-Twilio-Idempotency-Token",
    "X-Signature-Ed25519", "X-Signature-Timestamp", "Linear-Signature", "Linear-Event", "Linear-Delivery",
    "Paddle-Signature", "x-zm-signature", "x-zm-request-timestamp", "X-PagerDuty-Signature", "X-Webhook-Id",
    "Twitch-Eventsub-Message-Id", "Twitch-Eventsub-Message-Timestamp", "Twitch-Eventsub-Message-Signature",
    "Twitch-Eventsub-Message-Type", "Twitch-Eventsub-Subscription-Type", "Sentry-Hook-Signature",
    "Sentry-Hook-Resource", "Request-ID", "Authorization",
})

hexes = st.text("0123456789abcdefABCDEF", max_size=70)
b64s = st.text(string.ascii_letters + string.digits + "+/=", max_size=50)
digits = st.one_of(st.integers(-10**30, 10**30).map(str), st.text("0123456789 +-_.e", max_size=30))
header_values = st.one_of(
    st.text(max_size=60),
    st.text(chars, max_size=60),
    hexes,
    hexes.map(lambda h: "sha256=" + h),
    hexes.map(lambda h: "sha1=" + h),
    hexes.map(lambda h: "v0=" + h),
    st.tuples(digits, hexes).map(lambda p: f"t={p[0]},v1={p[1]}"),
    st.lists(st.tuples(st.sampled_from(["t", "v1", "v0", "x", ""]), st.text(max_size=12)), max_size=5).map(
        lambda items: ",".join(f"{k}={v}" for k, v in items)),
    st.lists(st.tuples(st.sampled_from(["v1", "v2", "v1a", ""]), b64s), max_size=4).map(
        lambda items: " ".join(f"{k},{v}" for k, v in items)),
    digits,
    st.sampled_from(["2023-11-14T22:13:20.123456789Z", "2023-11-14T22:13:20+01:00", "9999-99-99T99:99:99Z",
                     "Basic YTpi", "Bearer t", "basic", "Basic ====", "ts=1;h1=00", "v1=00,v1=", "sha256=00",
                     "algorithm=HMAC_SHA256", "algorithm=nope"]),
    st.sampled_from(["application/json", "application/x-www-form-urlencoded",
                     "application/x-www-form-urlencoded; charset=utf-8", "text/plain"]),
)
header_maps = st.dictionaries(st.one_of(st.sampled_from(KNOWN_HEADERS), st.text(max_size=10)), header_values,
                              max_size=8)
any_bodies = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=100).map(str.encode),
    st.sampled_from([b"payload=%7B%7D", b"payload=%7B%22type%22%3A1%7D", b"payload=%ff", b"payload",
                     b"payload=1&payload=2", b"command=%2Fdeploy&text=x", b'{"type":"url_verification"}',
                     b'{"type":"event_callback","event":{"type":7}}', b"[" * 200 + b"]" * 200, b"ssl_check=1",
                     b'{"signature":{"timestamp":"1","token":"t","signature":"00"}}', b'{"signature":[1]}',
                     b'{"signature":{"timestamp":1e400,"token":{},"signature":null}}', b"timestamp=1&token=t",
                     b'{"webhookTimestamp":1700000000000}', b'{"webhookTimestamp":true}', b'{"type":1}',
                     b'{"event":"endpoint.url_validation","payload":{"plainToken":7}}', b'{"challenge":1}']),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["type", "id", "event", "event_id", "trigger_id", "challenge", "command", "ssl_check",
                         "object_kind", "x", "event_type", "event-data", "signature", "token", "payload",
                         "plainToken", "MessageStatus", "subscription", "webhookTimestamp"]), inner, max_size=4),
    max_leaves=10,
)
secret_lists = st.sampled_from([[SECRET], [STANDARD_SECRET], [STRIPE_SECRET], [], [b"whsec_not*base64"],
                                [b"", SECRET], [DISCORD_PUBLIC], [b"00" * 32, b"zz"], [GITLAB_SIGNING, SECRET],
                                [BASIC_SECRET], [PADDLE_SECRET]])
targets = st.one_of(st.just(""), st.just("/hook?bodySHA256=00"), st.text(max_size=40).map(lambda t: "/hook?" + t))


INSTANCES = {
    **{name: cls() for name, cls in PROVIDERS.items() if name not in ("hmac-sha256", "twilio")},
    "twilio": PROVIDERS["twilio"](url=TWILIO_URL),
    "hmac-sha256-hex": PROVIDERS["hmac-sha256"](**GENERIC_OPTIONS),
    "hmac-sha256-base64": PROVIDERS["hmac-sha256"](header="X-Signature", encoding="base64", event_field="event.type"),
}


@pytest.mark.parametrize("provider", list(INSTANCES.values()), ids=list(INSTANCES))
@FAST
@given(headers=header_maps, body=any_bodies, secrets=secret_lists, payload=json_values,
       now=st.one_of(st.just(float(NOW)), st.floats(-1e12, 1e12)), target=targets)
def test_no_input_raises_anything_but_its_own_errors(provider: Provider, headers: dict[str, str], body: bytes,
                                                     secrets: list[bytes], payload: Any, now: float,
                                                     target: str) -> None:
    h = Headers(headers)
    try:
        provider.verify(h, body, secrets, now, target)
    except SignatureError:
        pass
    try:
        parsed = provider.parse(h, body)
    except BadRequest:
        parsed = payload
    for p in (parsed, payload):
        event = provider.event(h, p)
        assert isinstance(event, str)
        delivery = provider.delivery(h, p)
        assert delivery is None or isinstance(delivery, str)
        try:
            reply = provider.reply(event, p)
        except BadRequest:
            continue
        assert reply is None or isinstance(reply.body, bytes)
