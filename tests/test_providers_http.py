"""Every provider end to end: a real sidecar with one endpoint per provider.

A valid delivery (built independently, see test_providers) is accepted and runs
its hook; a bad signature is a 401; Slack's url_verification is answered; and
`python -m sidecar sign` / `send` produce deliveries the server accepts.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import ROOT, SECRET, Sidecar, serving, wait_for, write_config
from .support import recording_endpoint
from .test_providers import FACTORIES, STANDARD_SECRET, STRIPE_SECRET, Delivery

SECRET_ENV = {"standard": "STANDARD_SECRET", "stripe": "STRIPE_SECRET"}
ENV = {"STANDARD_SECRET": STANDARD_SECRET.decode(), "STRIPE_SECRET": STRIPE_SECRET.decode()}
OPTIONS = {"hmac-sha256": {"header": "X-Signature", "prefix": "sha256=", "event_header": "X-Event",
                           "delivery_header": "X-Delivery"}}
# Where each provider finds the delivery id in a request (the JSON body for stripe and slack).
DELIVERY_HEADER = {"github": "X-GitHub-Delivery", "gitlab": "X-Gitlab-Event-UUID", "gitea": "X-Gitea-Delivery",
                   "bitbucket": "X-Request-UUID", "shopify": "X-Shopify-Webhook-Id", "hmac-sha256": "X-Delivery"}
EVENT = {"github": "push", "gitlab": "Push Hook", "gitea": "push", "bitbucket": "repo:push", "stripe": "push",
         "slack": "push", "standard": "push", "shopify": "orders/create", "hmac-sha256": "build.done"}
PROVIDERS = sorted(FACTORIES)


def route(name: str) -> str:
    return "rec-" + name.replace("hmac-sha256", "hmac")


CONFIG = "max_body_bytes: 65536\nrequest_timeout_s: 5\nendpoints:\n" + "".join(
    recording_endpoint(p, p, SECRET_ENV.get(p, "WEBHOOK_SECRET"), route(p), OPTIONS.get(p)) for p in PROVIDERS)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Sidecar, Path]]:
    directory = tmp_path_factory.mktemp("providers")
    with serving(write_config(directory, CONFIG), env=ENV) as sidecar:
        yield sidecar, directory / "out"


def fresh(name: str) -> tuple[Delivery, str]:
    """A valid delivery signed now, with a delivery id no other test uses."""
    ident = uuid.uuid4().hex
    body = json.dumps({"id": f"evt_{ident}", "event_id": f"Ev{ident}", "type": "push", "object_kind": "push",
                       "ref": "refs/heads/main"}).encode()
    kwargs: dict[str, Any] = {"t": int(time.time())} if name in ("slack", "standard", "stripe") else {}
    if name == "standard":
        kwargs["msg_id"] = f"msg_{ident}"
    d = FACTORIES[name](body, **kwargs)
    expected = {"stripe": f"evt_{ident}", "slack": f"Ev{ident}", "standard": f"msg_{ident}"}.get(name, ident)
    if name in DELIVERY_HEADER:
        d.headers = d.with_header(DELIVERY_HEADER[name], ident)
    d.headers["Content-Type"] = "application/json"
    return d, expected


def hook_ran(out: Path, name: str, delivery: str, body: bytes) -> dict[str, str]:
    """Wait for record.sh's files; return the hook's environment."""
    base = out / f"{delivery}.{route(name)}"
    wait_for(lambda: Path(f"{base}.body").exists(), timeout=10)
    assert Path(f"{base}.body").read_bytes() == body
    lines = Path(f"{base}.env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line)


@pytest.mark.parametrize("name", PROVIDERS)
def test_valid_delivery_is_accepted_and_runs_the_hook(server: tuple[Sidecar, Path], name: str) -> None:
    sidecar, out = server
    d, delivery = fresh(name)
    resp = sidecar.post(f"/{name}", d.body, d.headers)
    assert resp.status == 200, resp.body
    assert resp.json() == {"status": "accepted", "delivery": delivery, "routes": [route(name)]}
    env = hook_ran(out, name, delivery, d.body)
    assert env["WEBHOOK_PROVIDER"] == name
    assert env["WEBHOOK_EVENT"] == EVENT[name]
    assert SECRET not in "".join(env.values())


@pytest.mark.parametrize("name", PROVIDERS)
def test_bad_signature_is_401(server: tuple[Sidecar, Path], name: str) -> None:
    sidecar, _ = server
    d, _ = fresh(name)
    wrong = FACTORIES[name](d.body, secret=b"whsec_" + b"d3Jvbmcgc2VjcmV0IGtleSBieXRlcw==") if name == "standard" \
        else FACTORIES[name](d.body, secret=b"wrong secret")
    headers = {**d.headers, **{h: wrong.headers[h] for h in d.signed if h in wrong.headers}}
    resp = sidecar.post(f"/{name}", d.body, headers)
    assert resp.status == 401, resp.body
    assert set(resp.json()) == {"error"}
    for h in d.signed:
        assert headers[h] not in resp.body.decode()
    # Tampered body with the right headers: 401 too (except GitLab, whose token does not cover the body).
    if name != "gitlab":
        assert sidecar.post(f"/{name}", d.body + b" ", d.headers).status == 401
    assert sidecar.post(f"/{name}", d.body, {"Content-Type": "application/json"}).status == 401


def test_stale_and_future_deliveries_are_401_and_logged_with_the_reason(server: tuple[Sidecar, Path]) -> None:
    sidecar, _ = server
    for name in ("slack", "standard", "stripe"):
        for offset, reason in ((-301, "stale"), (301, "future")):
            rid = f"{name}-{reason}-{uuid.uuid4().hex[:8]}"
            d = FACTORIES[name](b'{"type":"push"}', t=int(time.time()) + offset)
            resp = sidecar.post(f"/{name}", d.body, {**d.headers, "X-Request-Id": rid})
            assert resp.status == 401, (name, reason)
            line = sidecar.wait_log(lambda e, rid=rid: e.get("request_id") == rid and e.get("status") == 401)
            assert line["reason"] == reason
            assert not any(v in json.dumps(line) for v in d.headers.values() if len(v) > 12)


def test_slack_url_verification_is_answered_without_a_hook(server: tuple[Sidecar, Path]) -> None:
    sidecar, out = server
    before = set(out.iterdir())
    challenge = "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"
    body = json.dumps({"token": "Jhj5dZrVaK7ZwHHjRyZWjbDl", "challenge": challenge,
                       "type": "url_verification"}).encode()
    d = FACTORIES["slack"](body, t=int(time.time()))
    resp = sidecar.post("/slack", body, {**d.headers, "Content-Type": "application/json"})
    assert resp.status == 200
    assert resp.headers["content-type"] == "text/plain"
    assert resp.body == challenge.encode()
    unsigned = sidecar.post("/slack", body, {"Content-Type": "application/json"})
    assert unsigned.status == 401 and challenge.encode() not in unsigned.body
    time.sleep(0.3)
    assert set(out.iterdir()) == before


def test_github_ping_is_answered_without_a_hook(server: tuple[Sidecar, Path]) -> None:
    sidecar, _ = server
    d, _ = fresh("github")
    resp = sidecar.post("/github", d.body, {**d.headers, "X-GitHub-Event": "ping"})
    assert resp.status == 200 and resp.json() == {"status": "pong"}


# --- the CLI ------------------------------------------------------------------------------
def cli(name: str, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    options = [f"--option={k}={v}" for k, v in OPTIONS.get(name, {}).items()]
    env = {"PATH": "/usr/bin:/bin", "WEBHOOK_SECRET": SECRET, **ENV}
    return subprocess.run([sys.executable, "-m", "sidecar", *args, "--provider", name,
                           "--secret-env", SECRET_ENV.get(name, "WEBHOOK_SECRET"), *options],
                          input=stdin, capture_output=True, cwd=ROOT, env=env, timeout=30)


@pytest.mark.parametrize("name", PROVIDERS)
def test_cli_sign_output_is_accepted(server: tuple[Sidecar, Path], name: str) -> None:
    sidecar, out = server
    d, delivery = fresh(name)
    args = ["sign", "--event", EVENT[name]]
    if name not in ("stripe", "slack"):  # those take the id from the body
        args += ["--delivery", delivery]
    result = cli(name, *args, stdin=d.body)
    assert result.returncode == 0, result.stderr
    headers = dict(line.split(": ", 1) for line in result.stdout.decode().splitlines())
    resp = sidecar.post(f"/{name}", d.body, {**headers, "Content-Type": "application/json"})
    assert resp.status == 200, resp.body
    assert resp.json()["delivery"] == delivery
    assert hook_ran(out, name, delivery, d.body)["WEBHOOK_EVENT"] == EVENT[name]


@pytest.mark.parametrize("name", PROVIDERS)
def test_cli_send_is_accepted(server: tuple[Sidecar, Path], name: str, tmp_path: Path) -> None:
    sidecar, out = server
    d, delivery = fresh(name)
    payload = tmp_path / "payload.json"
    payload.write_bytes(d.body)
    args = ["send", f"http://127.0.0.1:{sidecar.port}/{name}", str(payload), "--event", EVENT[name]]
    if name not in ("stripe", "slack"):
        args += ["--delivery", delivery]
    result = cli(name, *args)
    assert result.returncode == 0, (result.stdout, result.stderr)
    status, _, text = result.stdout.decode().partition("\n")
    assert status == "200 OK"
    assert json.loads(text) == {"status": "accepted", "delivery": delivery, "routes": [route(name)]}
    hook_ran(out, name, delivery, d.body)
