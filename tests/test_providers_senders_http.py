"""The senders added after the first ten, end to end: a real sidecar with one endpoint per sender.

A valid delivery (built independently, provider_cases.py) runs its hook with the
sender's event type and delivery id; a forged one is a 401 counted under the
provider's name; the handshakes (discord PING, zoom url_validation, twitch
challenge) are answered without a hook; and `webhook-sidecar send` signs every
one of them so that the server accepts it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import ROOT, SECRET, Sidecar, serving, wait_for, write_config
from .provider_cases import (
    BASIC_SECRET,
    DISCORD_PRIVATE,
    DISCORD_PUBLIC,
    GITLAB_SIGNING,
    PADDLE_SECRET,
    TWILIO_URL,
    Delivery,
    basic,
    bearer,
    discord,
    gitlab_signed,
    linear,
    mailgun,
    paddle,
    pagerduty,
    sentry,
    twilio,
    twitch,
    zoom,
)
from .support import recording_endpoint

BEARER_TOKEN = "It-s-a-Secret-to-Everybody"
ENV = {"GITLAB_SIGNING": GITLAB_SIGNING.decode(), "DISCORD_PUBLIC_KEY": DISCORD_PUBLIC.decode(),
       "DISCORD_PRIVATE_KEY": DISCORD_PRIVATE.decode(), "PADDLE_SECRET": PADDLE_SECRET.decode(),
       "BASIC_SECRET": BASIC_SECRET.decode(), "BEARER_TOKEN": BEARER_TOKEN}
SECRET_ENV = {"gitlab-signed": "GITLAB_SIGNING", "discord": "DISCORD_PUBLIC_KEY", "paddle": "PADDLE_SECRET",
              "basic": "BASIC_SECRET", "bearer": "BEARER_TOKEN"}
OPTIONS: dict[str, dict[str, str]] = {
    "twilio": {"url": TWILIO_URL},
    "basic": {"event_field": "status", "delivery_header": "X-Delivery"},
    "bearer": {"event_field": "status", "delivery_header": "X-Delivery"},
}
# Senders that need a specific answer get it instead of the JSON status (tests/test_answers.py has them all).
ANSWERS = {"twilio": b'<?xml version="1.0" encoding="UTF-8"?><Response/>', "discord": b'{"type":5}'}
NAMES = ["gitlab-signed", "twilio", "discord", "linear", "paddle", "mailgun", "zoom", "pagerduty", "twitch",
         "sentry", "basic", "bearer"]


def provider_of(name: str) -> str:
    return "gitlab" if name == "gitlab-signed" else name


CONFIG = "max_body_bytes: 65536\nrequest_timeout_s: 5\nendpoints:\n" + "".join(
    recording_endpoint(n, provider_of(n), SECRET_ENV.get(n, "WEBHOOK_SECRET"), f"rec-{n}", OPTIONS.get(n))
    for n in NAMES)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Sidecar, Path]]:
    directory = tmp_path_factory.mktemp("senders")
    with serving(write_config(directory, CONFIG), env=ENV) as sidecar:
        yield sidecar, directory / "out"


def _headers(d: Delivery, **extra: str) -> Delivery:
    d.headers.update(extra)
    d.headers.setdefault("Content-Type", "application/json")
    return d


# name -> (a valid delivery signed now with id `ident`, the event type the hook must see, whether the
# delivery id is the sender's; zoom sends none, so the sidecar makes one up)
def _cases(ident: str) -> dict[str, tuple[Callable[[], Delivery], str, bool]]:
    now = int(time.time())
    return {
        "gitlab-signed": (lambda: gitlab_signed(b'{"object_kind":"push"}', GITLAB_SIGNING, now, ident), "Push Hook",
                          True),
        "twilio": (lambda: _headers(twilio(json.dumps({"type": "com.twilio.test", "n": ident}).encode()),
                                    **{"I-Twilio-Idempotency-Token": ident}), "com.twilio.test", True),
        "discord": (lambda: discord(json.dumps({"type": 2, "id": ident}).encode(), t=now), "APPLICATION_COMMAND",
                    True),
        "linear": (lambda: _headers(linear(b'{"type":"Issue","action":"create"}', t=now),
                                    **{"Linear-Delivery": ident}), "Issue", True),
        "paddle": (lambda: paddle(json.dumps({"event_id": ident, "event_type": "transaction.completed"}).encode(),
                                  t=now), "transaction.completed", True),
        "mailgun": (lambda: mailgun(t=now, token=ident), "delivered", True),
        "zoom": (lambda: zoom(json.dumps({"event": "meeting.started", "n": ident}).encode(), t=now),
                 "meeting.started", False),
        "pagerduty": (lambda: _headers(pagerduty(b'{"event":{"event_type":"incident.triggered"}}'),
                                       **{"X-Webhook-Id": ident}), "incident.triggered", True),
        "twitch": (lambda: twitch(json.dumps({"subscription": {"type": "channel.follow"}}).encode(), t=now,
                                  msg_id=ident), "channel.follow", True),
        "sentry": (lambda: _headers(sentry(), **{"Request-ID": ident}), "issue", True),
        "basic": (lambda: _headers(basic(b'{"status":"firing"}'), **{"X-Delivery": ident}), "firing", True),
        "bearer": (lambda: _headers(bearer(b'{"status":"resolved"}', BEARER_TOKEN.encode()), **{"X-Delivery": ident}),
                   "resolved", True),
    }


def hook_env(out: Path, name: str, delivery: str, body: bytes | None) -> dict[str, str]:
    """Wait for record.sh's files; check the body it got (unless None); return its environment."""
    base = out / f"{delivery}.rec-{name}"
    wait_for(lambda: Path(f"{base}.body").exists(), timeout=10)
    if body is not None:
        assert Path(f"{base}.body").read_bytes() == body
    lines = Path(f"{base}.env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line)


def post(sidecar: Sidecar, name: str, d: Delivery) -> Any:
    target = d.target or f"/{name}"
    return sidecar.post(target, d.body, {"Content-Type": "application/json", **d.headers})


@pytest.mark.parametrize("name", NAMES)
def test_valid_delivery_runs_the_hook_with_event_and_delivery(server: tuple[Sidecar, Path], name: str) -> None:
    sidecar, out = server
    ident = uuid.uuid4().hex
    make, event, own_id = _cases(ident)[name]
    d = make()
    resp = post(sidecar, name, d)
    assert resp.status == 200, resp.body
    if name in ANSWERS:
        assert resp.body == ANSWERS[name]
        body = sidecar.wait_log(lambda e: e.get("msg") == "delivery.accepted" and e.get("delivery") == ident)
    else:
        body = resp.json()
        assert body["status"] == "accepted"
    assert body["routes"] == [f"rec-{name}"]
    assert body["delivery"] == ident if own_id else body["delivery"] != ident
    env = hook_env(out, name, body["delivery"], d.body)
    assert env["WEBHOOK_EVENT"] == event
    assert env["WEBHOOK_DELIVERY"] == body["delivery"]
    assert env["WEBHOOK_PROVIDER"] == provider_of(name)
    if own_id:  # the sender's redelivery is recognised
        again = post(sidecar, name, make())
        assert again.body == ANSWERS[name] if name in ANSWERS else again.json()["status"] == "duplicate"
        sidecar.wait_log(lambda e: e.get("msg") == "delivery.duplicate" and e.get("delivery") == ident)


@pytest.mark.parametrize("name", NAMES)
def test_forged_delivery_is_401_and_counted(server: tuple[Sidecar, Path], name: str) -> None:
    sidecar, _ = server
    make, _, _ = _cases(uuid.uuid4().hex)[name]
    d = make()
    wrong = {k: v for k, v in d.headers.items()}
    unsigned = d.body
    if name == "mailgun":
        unsigned = json.dumps({k: v for k, v in json.loads(d.body).items() if k != "signature"}).encode()
    resp = sidecar.post(d.target or f"/{name}", unsigned, {"Content-Type": "application/json"})  # nothing signed
    assert resp.status == 401, resp.body
    if name == "mailgun":  # the signature is in the body: break it there
        payload = json.loads(d.body)
        payload["signature"]["token"] += "x"
        resp = post(sidecar, name, Delivery(d.provider, wrong, json.dumps(payload).encode()))
    else:
        signed = d.signed[-1]
        value = wrong[signed]
        wrong[signed] = value[:-2] + ("00" if value[-2:] != "00" else "11")
        resp = post(sidecar, name, Delivery(d.provider, wrong, d.body, target=d.target))
    assert resp.status == 401, resp.body
    assert set(resp.json()) == {"error"}
    metrics = sidecar.request("GET", "/metrics").body.decode()
    assert f'webhook_sidecar_verification_failures_total{{provider="{provider_of(name)}",reason=' in metrics


def test_handshakes_are_answered_without_a_hook(server: tuple[Sidecar, Path]) -> None:
    sidecar, out = server
    before = set(out.iterdir())
    now = int(time.time())
    ping = discord(b'{"type":1,"id":"ping-1","application_id":"2","token":"t","version":1}', t=now)
    resp = post(sidecar, "discord", ping)
    assert resp.status == 200 and resp.json() == {"type": 1}
    zoom_body = b'{"event":"endpoint.url_validation","payload":{"plainToken":"qgg8vlvZRS6UYooatFL8Aw"}}'
    resp = post(sidecar, "zoom", zoom(zoom_body, t=now))
    assert resp.status == 200 and resp.json()["plainToken"] == "qgg8vlvZRS6UYooatFL8Aw"
    assert len(resp.json()["encryptedToken"]) == 64
    challenge = twitch(b'{"challenge":"abc-123","subscription":{"type":"channel.follow"}}', t=now)
    challenge.headers["Twitch-Eventsub-Message-Type"] = "webhook_callback_verification"
    resp = post(sidecar, "twitch", challenge)
    assert resp.status == 200 and resp.body == b"abc-123" and resp.headers["content-type"] == "text/plain"
    unsigned = sidecar.post("/twitch", challenge.body, {"Content-Type": "application/json"})
    assert unsigned.status == 401 and b"abc-123" not in unsigned.body
    time.sleep(0.3)  # a hook would have written by now (the valid-delivery tests see them in milliseconds)
    assert set(out.iterdir()) == before


# --- `webhook-sidecar send` for every sender ------------------------------------------------------
def send(url: str, payload: Path, name: str, *args: str) -> subprocess.CompletedProcess[str]:
    options = [f"--option={k}={v}" for k, v in OPTIONS.get(name, {}).items()]
    env = {"PATH": "/usr/bin:/bin", "WEBHOOK_SECRET": SECRET, **ENV}
    return subprocess.run([sys.executable, "-m", "sidecar", "send", url, str(payload), "--provider", provider_of(name),
                           "--secret-env", SECRET_ENV.get(name, "WEBHOOK_SECRET"), *options, *args],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=30)


CLI = {  # name -> (body, extra send arguments, expected event)
    "gitlab-signed": (b'{"object_kind":"push"}', ["--event", "Push Hook"], "Push Hook"),
    "twilio": (b"MessageStatus=delivered&MessageSid=SM1", ["--content-type", "application/x-www-form-urlencoded"],
               "delivered"),
    "discord": (b'{"type":2,"id":"@ID@","data":{"name":"deploy"}}', [], "APPLICATION_COMMAND"),
    "linear": (b'{"type":"Issue","action":"create"}', ["--event", "Issue"], "Issue"),
    "paddle": (b'{"event_id":"@ID@","event_type":"transaction.completed"}', [], "transaction.completed"),
    "mailgun": (b'{"event-data":{"event":"delivered"}}', [], "delivered"),
    "zoom": (b'{"event":"meeting.started"}', [], "meeting.started"),
    "pagerduty": (b'{"event":{"event_type":"incident.triggered"}}', [], "incident.triggered"),
    "twitch": (b'{"subscription":{"type":"channel.follow"}}', ["--event", "channel.follow"], "channel.follow"),
    "sentry": (b'{"action":"created"}', ["--event", "issue"], "issue"),
    "basic": (b'{"status":"firing"}', [], "firing"),
    "bearer": (b'{"status":"firing"}', [], "firing"),
}


@pytest.mark.parametrize("name", NAMES)
def test_cli_send_is_accepted(server: tuple[Sidecar, Path], name: str, tmp_path: Path) -> None:
    sidecar, out = server
    ident = uuid.uuid4().hex
    body, args, event = CLI[name]
    payload = tmp_path / "payload"
    payload.write_bytes(body.replace(b"@ID@", ident.encode()))
    url = f"http://127.0.0.1:{sidecar.port}/{name}" + ("?env=prod" if name == "twilio" else "")
    result = send(url, payload, name, "--delivery", ident, *args)
    assert result.returncode == 0, (result.stdout, result.stderr)
    status, _, text = result.stdout.partition("\n")
    assert status == "200 OK"
    if name in ANSWERS:
        assert text.rstrip("\n").encode() == ANSWERS[name]
        answer = {"delivery": ident}
    else:
        answer = json.loads(text)
        assert answer["status"] == "accepted", answer
    if name != "zoom":  # zoom sends no delivery id
        assert answer["delivery"] == ident
    # mailgun and linear sign values inside the body: `send` writes them in, so the hook gets that body.
    sent = None if name in ("mailgun", "linear") else payload.read_bytes()
    assert hook_env(out, name, answer["delivery"], sent)["WEBHOOK_EVENT"] == event


def sign(name: str, body: bytes, *args: str) -> subprocess.CompletedProcess[bytes]:
    env = {"PATH": "/usr/bin:/bin", "WEBHOOK_SECRET": SECRET, **ENV}
    return subprocess.run([sys.executable, "-m", "sidecar", "sign", "--provider", provider_of(name),
                           "--secret-env", SECRET_ENV.get(name, "WEBHOOK_SECRET"), *args], input=body,
                          capture_output=True, cwd=ROOT, env=env, timeout=30)


def test_cli_sign_prints_a_body_that_carries_its_signature(server: tuple[Sidecar, Path]) -> None:
    """mailgun: headers (none), a blank line, then the body with the signature written in; it is accepted."""
    sidecar, _ = server
    ident = uuid.uuid4().hex
    result = sign("mailgun", b'{"event-data":{"event":"delivered"}}', "--delivery", ident)
    assert result.returncode == 0, result.stderr
    head, sep, body = result.stdout.partition(b"\n")
    assert (head, sep) == (b"", b"\n") and json.loads(body)["signature"]["token"] == ident
    resp = sidecar.post("/mailgun", body, {"Content-Type": "application/json"})
    assert resp.status == 200 and resp.json()["delivery"] == ident


def test_cli_sign_discord_uses_the_private_key_and_names_the_public_one(server: tuple[Sidecar, Path]) -> None:
    sidecar, _ = server
    ident = uuid.uuid4().hex
    body = json.dumps({"type": 2, "id": ident}).encode()
    result = sign("discord", body)
    assert result.returncode == 0, result.stderr
    assert DISCORD_PUBLIC.decode() in result.stderr.decode()
    headers = dict(line.split(": ", 1) for line in result.stdout.decode().splitlines())
    assert sidecar.post("/discord", body, {**headers, "Content-Type": "application/json"}).json() == {"type": 5}
    sidecar.wait_log(lambda e: e.get("msg") == "delivery.accepted" and e.get("delivery") == ident)
    missing = subprocess.run([sys.executable, "-m", "sidecar", "sign", "--provider", "discord",
                              "--private-key-env", "NO_SUCH_KEY"], input=body, capture_output=True, cwd=ROOT,
                             env={"PATH": "/usr/bin:/bin"}, timeout=30)
    assert missing.returncode != 0 and b"NO_SUCH_KEY" in missing.stderr


def test_cli_sign_twilio_json_names_the_query_it_signed(server: tuple[Sidecar, Path]) -> None:
    result = sign("twilio", b'{"type":"x"}', "--option", f"url={TWILIO_URL}")
    assert result.returncode == 0, result.stderr
    assert b"bodySHA256=" in result.stderr and b"X-Twilio-Signature: " in result.stdout
