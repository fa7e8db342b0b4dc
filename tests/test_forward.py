"""Forward routes end to end: a real sidecar POSTs accepted deliveries to a real HTTP target
(tests/http_target.py) that answers from a script; signatures checked with the official
`standardwebhooks` library, CloudEvents requests parsed with the `cloudevents` SDK; both spools."""

from __future__ import annotations

import base64
import json
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cloudevents.core.bindings.http import HTTPMessage, from_binary_event
from standardwebhooks.webhooks import Webhook

from .conftest import Sidecar, wait_for, write_config
from .http_target import Answer, HttpTarget
from .support import SPOOL_URL_VAR, free_port, shared_table, spool_jobs, table

APP_SECRET = "whsec_" + base64.b64encode(b"the-app-secret-0123456789abcdef").decode()


@pytest.fixture
def target() -> Iterator[HttpTarget]:
    with HttpTarget() as t:
        yield t


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


RETRY = "retry_backoff_s: 0.2\nretry_backoff_max_s: 0.5\n"


def forward_table(url: str, extra: str = "") -> str:
    """The /webhook endpoint's routes: `app` forwarding to `url`, then `extra` (at the same indentation)."""
    return f"""      - event: push
        name: app
        retries: 3
        forward:
          url: {url}
          headers: {{{{X-Source: sidecar}}}}
          pass_headers: [X-GitHub-Event, User-Agent]
          sign: {{{{secret_env: APP_SECRET}}}}
          timeout_s: 2
{extra}"""


def start(sidecars: Callable[..., Sidecar], tmp_path: Path, routes: str, backend: str = "sqlite",
          pg_url: str = "", replica: str = "r1") -> Sidecar:
    config = write_config(tmp_path, (table if backend == "sqlite" else shared_table)(routes, RETRY))
    env = {"APP_SECRET": APP_SECRET, **({SPOOL_URL_VAR: pg_url} if backend == "postgres" else {})}
    sidecar = sidecars(config, "--replica", replica, env=env)
    wait_for(lambda: sidecar.request("GET", "/readyz").status == 200, timeout=10)
    return sidecar


def deliver(sidecar: Sidecar, delivery: str, body: bytes = b'{"ref": "refs/heads/main"}') -> None:
    r = sidecar.deliver(body, delivery=delivery, extra={"User-Agent": "GitHub-Hookshot/x", "Cookie": "s=1"})
    assert r.status == 200 and r.json()["status"] == "accepted", r.body


def finished(sidecar: Sidecar, delivery: str) -> dict[str, object]:
    return sidecar.wait_log(lambda e: e.get("msg") == "hook.finished" and e.get("delivery") == delivery
                            and e.get("state") != "pending", timeout=15)


@pytest.fixture
def pg_or_none(request: pytest.FixtureRequest, backend: str) -> str:
    return str(request.getfixturevalue("pg_url")) if backend == "postgres" else ""


def test_the_app_gets_the_body_its_headers_and_a_signature_it_can_verify(
        tmp_path: Path, sidecars: Callable[..., Sidecar], target: HttpTarget, backend: str, pg_or_none: str) -> None:
    sidecar = start(sidecars, tmp_path, forward_table(target.url("/hooks")), backend, pg_or_none)
    body = b'{"ref": "refs/heads/main", "n": 1}'
    deliver(sidecar, "fw-1", body)
    (got,) = target.wait_requests(1, "/hooks", timeout=10)
    headers = got.header_map()
    assert got.method == "POST" and got.body == body
    assert headers["content-type"] == "application/json"
    assert headers["x-webhook-delivery"] == "fw-1" and headers["x-webhook-event"] == "push"
    assert headers["x-webhook-attempt"] == "1" and headers["x-request-id"]
    assert headers["x-source"] == "sidecar"
    assert headers["x-github-event"] == "push" and headers["user-agent"] == "GitHub-Hookshot/x"
    assert "cookie" not in headers and "x-hub-signature-256" not in headers  # an allow-list
    # The application verifies one scheme whatever the sender: Standard Webhooks, with the official library.
    assert Webhook(APP_SECRET).verify(got.body, headers) == json.loads(body)
    line = finished(sidecar, "fw-1")
    assert line["state"] == "done" and line["target"] == "forward" and line["http_status"] == 200


def test_5xx_and_429_are_retried_404_and_redirects_are_dead_letters(
        tmp_path: Path, sidecars: Callable[..., Sidecar], target: HttpTarget) -> None:
    target.script("/flaky", 500, 503, 200)
    target.script("/busy", Answer(429, headers={"Retry-After": "1"}), 200)
    text = forward_table(target.url("/flaky"), extra=f"""      - event: push
        name: busy
        forward: {{{{url: "{target.url('/busy')}"}}}}
      - event: push
        name: gone
        forward: {{{{url: "{target.url('/gone')}"}}}}
      - event: push
        name: moved
        forward: {{{{url: "{target.url('/moved')}"}}}}
""")
    target.script("/gone", 404)
    target.script("/moved", Answer(302, headers={"Location": target.url("/elsewhere")}))
    sidecar = start(sidecars, tmp_path, text)
    deliver(sidecar, "fw-r")
    attempts = [r.header("X-Webhook-Attempt") for r in target.wait_requests(3, "/flaky", timeout=15)]
    assert attempts == ["1", "2", "3"]
    busy = target.wait_requests(2, "/busy", timeout=15)
    assert busy[1].at - busy[0].at >= 0.9  # Retry-After (1 s) outweighs the 0.2 s backoff
    wait_for(lambda: {j["route"]: j["state"] for j in spool_jobs(tmp_path / "config.yaml")} ==
             {"app": "done", "busy": "done", "gone": "failed", "moved": "failed"}, timeout=15, interval=0.2)
    assert len(target.requests("/gone")) == 1 and len(target.requests("/moved")) == 1  # no retry
    assert target.requests("/elsewhere") == []  # redirects are not followed
    moved = next(e for e in sidecar.find_logs("hook.finished") if e.get("route") == "moved")
    assert moved["http_status"] == 302 and moved["dead_letter"] is True


def test_a_closed_port_and_a_slow_target_are_retried(tmp_path: Path, sidecars: Callable[..., Sidecar],
                                                     target: HttpTarget) -> None:
    url = f"http://127.0.0.1:{free_port()}/x"  # nothing listens there
    target.script("/slow", Answer(200, delay_s=5), 200)
    text = forward_table(url, extra=f"""      - event: push
        name: slow
        timeout_s: 1
        forward: {{{{url: "{target.url('/slow')}"}}}}
""").replace("retries: 3", "retries: 1")
    sidecar = start(sidecars, tmp_path, text)
    deliver(sidecar, "fw-c")
    wait_for(lambda: len([e for e in sidecar.find_logs("hook.finished") if e.get("route") == "app"]) == 2,
             timeout=15)
    app = [e for e in sidecar.find_logs("hook.finished") if e.get("route") == "app"]
    assert [e["state"] for e in app] == ["pending", "failed"]
    assert "refused" in str(app[0]["error"]) and app[0]["outcome"] == "failed"
    slow = sidecar.wait_log(lambda e: e.get("msg") == "hook.finished" and e.get("route") == "slow"
                            and e.get("state") == "done", timeout=15)
    first = next(e for e in sidecar.find_logs("hook.finished") if e.get("route") == "slow")
    assert first["outcome"] == "timeout" and slow["attempt"] == 2


def test_cloudevents_format_is_a_binary_mode_event(tmp_path: Path, sidecars: Callable[..., Sidecar],
                                                   target: HttpTarget) -> None:
    text = forward_table(target.url("/ce")).replace("          timeout_s: 2\n", "          timeout_s: 2\n"
                                                    "          format: cloudevents\n")
    sidecar = start(sidecars, tmp_path, text)
    deliver(sidecar, "fw-ce", b'{"a": 1}')
    (got,) = target.wait_requests(1, "/ce", timeout=10)
    event = from_binary_event(HTTPMessage(dict(got.headers), got.body))  # the SDK reads what the app gets
    assert (event.get_id(), event.get_source(), event.get_type(), event.get_specversion()) == (
        "fw-ce", "/webhook", "push", "1.0")
    assert event.get_time() is not None and event.get_data() == {"a": 1}


def test_an_acknowledged_forward_is_delivered_once_after_a_kill_9(
        tmp_path: Path, sidecars: Callable[..., Sidecar], target: HttpTarget, backend: str, pg_or_none: str) -> None:
    target.script("/app", *([503] * 50))  # the app is down while the first sidecar runs
    text = forward_table(target.url("/app")).replace("retries: 3", "retries: 20")
    first = start(sidecars, tmp_path, text, backend, pg_or_none)
    deliver(first, "fw-k")
    target.wait_requests(1, "/app", timeout=10)
    first.stop(signal.SIGKILL)
    target.clear_scripts()  # the app is back: every later request is answered 200
    n = len(target.requests("/app"))
    second = start(sidecars, tmp_path, text, backend, pg_or_none, replica="r2")
    finished(second, "fw-k")
    later = target.requests("/app")[n:]
    assert len(later) == 1  # delivered once: not lost, not twice
    assert later[0].header("X-Webhook-Delivery") == "fw-k"


def test_run_and_forward_together_is_a_config_error(tmp_path: Path) -> None:
    from .support import cli_text
    text = forward_table("http://127.0.0.1:9/x").replace("        retries: 3\n", "        retries: 3\n"
                                                         "        run: /bin/true\n")
    config = write_config(tmp_path, table(text, RETRY))
    result = cli_text("check", "--config", str(config), env={"WEBHOOK_SECRET": "s", "APP_SECRET": APP_SECRET})
    assert result.returncode != 0 and "a route has run or forward, never both" in result.stdout + result.stderr
