"""The forward client against a real HTTP target on 127.0.0.1 (tests/http_target.py): what it sends,
what each answer means, keep-alive reuse and its bounds, TLS; signatures checked with the official
`standardwebhooks` library, binary-mode CloudEvents parsed with the official `cloudevents` SDK."""

from __future__ import annotations

import base64
import email.utils
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cloudevents.core.bindings.http import HTTPMessage, from_binary_event
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from sidecar.forward import Facts, Forwarder, Outcome, Target, Verdict
from sidecar.forward_sign import MAX_RETRY_AFTER_S, retry_after

from .conftest import wait_for
from .http_target import Answer, HttpTarget, make_pki, serving
from .support import free_port

BODY = b'{"ref":"refs/heads/main","n":1}'
SECRET = "whsec_" + base64.b64encode(b"the application's own key").decode()
OLD_SECRET = "whsec_" + base64.b64encode(b"the key it still accepts").decode()
FACTS = Facts(delivery="d-1", event="push", attempt=1, request_id="req-1", endpoint="/webhook",
              provider="github", headers={"X-GitHub-Event": "push", "User-Agent": "GitHub-Hookshot/1",
                                          "Authorization": "token never-forwarded"})


@pytest.fixture
def target() -> Iterator[HttpTarget]:
    yield from serving()


@pytest.fixture
def client() -> Iterator[Forwarder]:
    forwarder = Forwarder()
    yield forwarder
    forwarder.close()


def post(client: Forwarder, target: HttpTarget, path: str = "/hooks", facts: Facts = FACTS, **options: Any) -> Outcome:
    return client.post(Target(url=target.url(path), **options), BODY, "application/json", facts)


def test_a_2xx_delivers_the_body_with_the_delivery_headers_static_and_passed_ones(
        client: Forwarder, target: HttpTarget) -> None:
    target.script("/hooks", Answer(202, b"queued"))
    outcome = post(client, target, headers={"X-Source": "sidecar"}, pass_headers=["x-github-event"])
    assert outcome.ok and outcome.status == 202 and outcome.tail == "queued" and outcome.error == ""
    [got] = target.requests("/hooks")
    headers = got.header_map()
    assert (got.method, got.body, headers["content-type"]) == ("POST", BODY, "application/json")
    assert {k: headers[k] for k in ("x-request-id", "x-webhook-delivery", "x-webhook-event", "x-webhook-attempt",
                                    "x-source", "x-github-event")} == {
        "x-request-id": "req-1", "x-webhook-delivery": "d-1", "x-webhook-event": "push", "x-webhook-attempt": "1",
        "x-source": "sidecar", "x-github-event": "push"}
    # pass_headers is an allow-list: nothing else of the original request travels.
    assert "authorization" not in headers and headers["user-agent"] == "webhook-sidecar"
    assert not any(k.startswith(("webhook-", "ce-")) for k in headers)
    assert outcome.log_fields() == {"target": "forward", "http_status": 202, "output_tail": "queued",
                                    "duration_ms": outcome.log_fields()["duration_ms"]}


def test_signed_forwards_verify_with_the_standardwebhooks_library(client: Forwarder, target: HttpTarget) -> None:
    outcome = post(client, target, sign=[SECRET, OLD_SECRET])
    assert outcome.ok
    [got] = target.requests()
    headers = got.header_map()
    assert headers["webhook-id"] == "d-1"
    for secret in (SECRET, OLD_SECRET):  # either key of the application's rotation verifies it
        assert Webhook(secret).verify(got.body, headers) == json.loads(BODY)
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(got.body + b" ", headers)
    other = "whsec_" + base64.b64encode(b"someone else").decode()
    with pytest.raises(WebhookVerificationError):
        Webhook(other).verify(got.body, headers)


@pytest.mark.parametrize(("status", "verdict"), [
    (200, Verdict.OK), (201, Verdict.OK), (408, Verdict.RETRY), (429, Verdict.RETRY), (500, Verdict.RETRY),
    (503, Verdict.RETRY), (400, Verdict.FAIL), (404, Verdict.FAIL), (410, Verdict.FAIL),
])
def test_each_status_has_its_verdict(client: Forwarder, target: HttpTarget, status: int, verdict: Verdict) -> None:
    target.script("/hooks", Answer(status, b"why: " + str(status).encode()))
    outcome = post(client, target)
    assert (outcome.verdict, outcome.status) == (verdict, status)
    assert outcome.error == ("" if verdict is Verdict.OK else f"HTTP {status}")
    assert outcome.tail == f"why: {status}"


def test_scripted_500s_then_success_each_attempt_counted(client: Forwarder, target: HttpTarget) -> None:
    target.script("/hooks", 500, 502)
    verdicts = [post(client, target, facts=Facts("d-2", "push", n, "req-2")).verdict for n in (1, 2, 3)]
    assert verdicts == [Verdict.RETRY, Verdict.RETRY, Verdict.OK]
    assert [r.header("X-Webhook-Attempt") for r in target.requests()] == ["1", "2", "3"]


def test_retry_after_in_seconds_and_as_an_http_date(client: Forwarder, target: HttpTarget) -> None:
    later = email.utils.formatdate(time.time() + 120, usegmt=True)
    target.script("/hooks", Answer(429, headers={"Retry-After": "7"}), Answer(503, headers={"Retry-After": later}),
                  Answer(404, headers={"Retry-After": "7"}))
    assert post(client, target).retry_after_s == 7
    waited = post(client, target).retry_after_s
    assert waited is not None and 115 <= waited <= 120
    assert post(client, target).retry_after_s is None  # a final answer's Retry-After means nothing


def test_retry_after_values() -> None:
    now = 1_700_000_000.0
    assert retry_after("0", now) == 0 and retry_after(" 30 ", now) == 30
    assert retry_after(email.utils.formatdate(now - 60, usegmt=True), now) == 0  # a date past: at once
    assert retry_after("99999999999", now) == MAX_RETRY_AFTER_S
    for unusable in (None, "", "-5", "1.5", "soon", "Mon, 99 Foo 2024 99:99:99 GMT"):
        assert retry_after(unusable, now) is None


def test_a_redirect_is_final_and_not_followed(client: Forwarder, target: HttpTarget) -> None:
    target.script("/hooks", Answer(302, headers={"Location": target.url("/elsewhere")}))
    outcome = post(client, target)
    assert (outcome.verdict, outcome.status) == (Verdict.FAIL, 302)
    assert "redirects are not followed" in outcome.error
    assert [r.path for r in target.requests()] == ["/hooks"]


def test_a_closed_port_is_a_connection_error_to_retry(client: Forwarder) -> None:
    outcome = client.post(Target(url=f"http://127.0.0.1:{free_port()}/hooks"), BODY, "application/json", FACTS)
    assert (outcome.verdict, outcome.status, outcome.error) == (Verdict.RETRY, None, "connection refused")


def test_a_slow_target_times_out_within_timeout_s(client: Forwarder, target: HttpTarget) -> None:
    target.script("/hooks", Answer(200, delay_s=3))
    outcome = post(client, target, timeout_s=0.3)
    assert (outcome.verdict, outcome.status, outcome.error) == (Verdict.RETRY, None, "timeout")
    assert 0.25 <= outcome.duration_s < 1.5
    assert post(client, target).ok  # the timed-out connection was not reused for the next forward


def test_a_slow_body_counts_against_the_same_timeout(client: Forwarder, target: HttpTarget) -> None:
    target.script("/hooks", Answer(200, delay_s=2, drop=False))
    start = time.monotonic()
    assert post(client, target, timeout_s=0.5).error == "timeout"
    assert time.monotonic() - start < 1.5


def test_keep_alive_reuses_one_connection_and_survives_the_target_closing_it(
        client: Forwarder, target: HttpTarget) -> None:
    assert all(post(client, target).ok for _ in range(3))
    assert {r.connection for r in target.requests()} == {1}
    assert target.drop_idle() == 1  # the application's keep-alive timeout
    wait_for(lambda: target.open_connections() == 0)  # closed on its side: its FIN is on the way
    assert post(client, target).ok
    assert len(target.requests()) == 4 and target.connections() == 2  # sent once, on a new connection


def test_a_reused_connection_dropped_mid_request_is_tried_once_more_on_a_new_one(
        client: Forwarder, target: HttpTarget) -> None:
    assert post(client, target).ok
    target.script("/hooks", Answer(drop=True))
    outcome = post(client, target)
    assert outcome.ok  # at least once: the target saw the request twice
    assert [r.connection for r in target.requests()] == [1, 1, 2]


def test_a_fresh_connection_dropped_without_an_answer_is_retried_later(client: Forwarder, target: HttpTarget) -> None:
    target.script("/hooks", Answer(drop=True))
    outcome = post(client, target)
    assert (outcome.verdict, outcome.error) == (Verdict.RETRY, "connection closed by the target")
    assert len(target.requests()) == 1


def test_connection_close_and_long_answers_are_not_reused(client: Forwarder, target: HttpTarget) -> None:
    big = b"x" * (2 << 20) + b"the end"
    target.script("/hooks", Answer(200, close=True), Answer(500, big))
    assert post(client, target).ok
    outcome = post(client, target)
    assert outcome.retryable and len(outcome.tail) <= 4096
    assert post(client, target).ok
    assert [r.connection for r in target.requests()] == [1, 2, 3]


def test_a_long_answer_below_the_drain_limit_keeps_its_tail(client: Forwarder, target: HttpTarget) -> None:
    target.script("/hooks", Answer(500, b"a" * 10000 + b"the end"))
    outcome = post(client, target)
    assert len(outcome.tail) == 4096 and outcome.tail.endswith("the end")
    assert post(client, target).ok and target.connections() == 1


def test_the_pool_bounds_connections_per_target(target: HttpTarget) -> None:
    target.default = Answer(200, delay_s=0.05)
    client = Forwarder(max_connections=2, max_idle=2)
    results: list[Outcome] = []
    threads = [threading.Thread(target=lambda: results.append(post(client, target))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    client.close()
    assert len(results) == 8 and all(r.ok for r in results)
    assert target.connections() == 2


def test_cloudevents_mode_is_a_binary_request_the_sdk_parses(client: Forwarder, target: HttpTarget) -> None:
    facts = Facts("d-3", "push", 2, "req-3", endpoint="/webhook", received=1_700_000_000.0)
    assert post(client, target, facts=facts, mode="cloudevents").ok
    [got] = target.requests()
    event = from_binary_event(HTTPMessage(dict(got.headers), got.body))
    assert (event.get_id(), event.get_source(), event.get_type(), event.get_specversion()) == (
        "d-3", "/webhook", "push", "1.0")
    time_ = event.get_time()
    assert time_ is not None and time_.timestamp() == 1_700_000_000.0
    assert event.get_data() == json.loads(BODY) and got.header("X-Webhook-Attempt") == "2"


def test_cloudevents_mode_carries_an_incoming_events_own_attributes(client: Forwarder, target: HttpTarget) -> None:
    original = {"id": "A 1%", "source": "urn:example:orders", "type": "order.created", "specversion": "1.0",
                "subject": "orders/42", "time": "2024-05-01T10:00:00Z", "tenant": "acme"}
    facts = Facts("ce_x", "order.created", 1, "req-4", endpoint="/ce", cloudevent=original)
    assert post(client, target, facts=facts, mode="cloudevents").ok
    [got] = target.requests()
    event = from_binary_event(HTTPMessage(dict(got.headers), got.body))
    assert (event.get_id(), event.get_source(), event.get_subject(), event.get_extension("tenant")) == (
        "A 1%", "urn:example:orders", "orders/42", "acme")


def test_https_verifies_against_the_ca_file(client: Forwarder, tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    with HttpTarget(tls=pki.server) as target:
        ok = post(client, target, ca_file=str(pki.ca_file))
        assert ok.ok, ok.error
        untrusted = post(client, target)  # the system store does not know the test CA
        assert untrusted.retryable and untrusted.error.startswith("tls: certificate not trusted")
        assert post(client, target, ca_file=str(pki.ca_file)).ok
        assert len(target.requests()) == 2
        (tmp_path / "ca.pem").unlink()
        client.close()  # no idle connection left: the next forward needs the CA file
        gone = post(client, target, ca_file=str(pki.ca_file))
        assert gone.retryable and gone.error.startswith("ca_file: cannot read it")


@pytest.mark.parametrize(("options", "message"), [
    ({"url": "ftp://127.0.0.1/x"}, "url: must be an http:// or https:// URL with a host"),
    ({"url": "http:///x"}, "url: must be an http:// or https:// URL with a host"),
    ({"url": "http://user:pw@127.0.0.1/x"}, "url: credentials in the URL are not allowed (use headers)"),
    ({"url": "http://127.0.0.1/é"}, "url: must be ASCII (percent-encoded) with no fragment"),
    ({"url": "http://127.0.0.1/x#y"}, "url: must be ASCII (percent-encoded) with no fragment"),
    ({"url": "http://127.0.0.1:99999/x"}, "url: the port is not a number from 1 to 65535"),
    ({"url": "http://127.0.0.1/x", "timeout_s": 0}, "timeout_s: must be more than 0 and at most 3600 seconds"),
    ({"url": "http://127.0.0.1/x", "mode": "json"}, "format: must be one of raw, cloudevents, got 'json'"),
    ({"url": "http://127.0.0.1/x", "ca_file": "/ca.pem"}, "ca_file: only an https:// target verifies a certificate"),
    ({"url": "http://127.0.0.1/x", "headers": {"X-Webhook-Event": "x"}}, "headers: X-Webhook-Event is set by the"),
    ({"url": "http://127.0.0.1/x", "headers": {"ce-id": "x"}}, "headers: ce-id is set by the forward itself"),
    ({"url": "http://127.0.0.1/x", "headers": {"X-A": "a\r\nX-B: b"}}, "headers: the value of X-A holds control"),
    ({"url": "http://127.0.0.1/x", "headers": {"bad name": "x"}}, "headers: not a valid HTTP header name"),
    ({"url": "http://127.0.0.1/x", "pass_headers": ["Content-Type"]}, "pass_headers: Content-Type is set by"),
    ({"url": "http://127.0.0.1/x", "sign": ["whsec_not base64!"]}, "sign: the secret is not a Standard Webhooks"),
])
def test_target_refuses_what_it_cannot_send(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        Target(**options)


def test_a_content_type_that_cannot_be_a_header_is_sent_as_octet_stream(client: Forwarder, target: HttpTarget) -> None:
    assert client.post(Target(url=target.url("/x")), BODY, "text/plain\r\nX-Evil: 1", FACTS).ok
    [got] = target.requests()
    assert got.header("Content-Type") == "application/octet-stream" and got.header("X-Evil") is None


def test_no_secret_in_a_targets_repr_or_an_outcome(client: Forwarder) -> None:
    target = Target(url=f"http://127.0.0.1:{free_port()}/x", headers={"Authorization": "Bearer tok-123"},
                    sign=[SECRET])
    shown = repr(target)
    assert "tok-123" not in shown and SECRET not in shown and "whsec" not in shown
    outcome = client.post(target, BODY, "application/json", FACTS)
    assert "tok-123" not in repr(outcome) and SECRET not in repr(outcome)
