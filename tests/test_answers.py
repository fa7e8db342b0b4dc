"""The answers senders accept, end to end: a real sidecar, requests signed as each sender signs them.

Discord interactions are built with discord-interactions' types and checked against its response
types, signed with PyNaCl (discord-interactions' own key library); Twilio's are signed with twilio's
RequestValidator and answered with what its TwiML builder makes; Slack's are signed as Slack documents.
Accepted, ignored and duplicate deliveries get the sender's answer; handshakes and errors keep theirs;
an endpoint's `respond` replaces the provider's answer and is checked at load.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import subprocess
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from sidecar import config as config_mod

from .conftest import Response, Sidecar, serving, wait_for, write_config
from .provider_cases import DISCORD_PRIVATE, DISCORD_PUBLIC
from .support import ROOT, SECRET, endpoint_config, endpoint_error

signing = pytest.importorskip("nacl.signing", reason="PyNaCl not installed (dev extra)")
interactions = pytest.importorskip("discord_interactions", reason="discord-interactions not installed (dev extra)")
twilio_validator = pytest.importorskip("twilio.request_validator", reason="twilio SDK not installed (dev extra)")
twiml = pytest.importorskip("twilio.twiml.messaging_response", reason="twilio SDK not installed (dev extra)")

InteractionType = interactions.InteractionType
ResponseType = interactions.InteractionResponseType
TWILIO_TOKEN = "0123456789abcdef0123456789abcdef"
TWILIO_URL = "https://hooks.example.com/twilio"
SLACK_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
FORM = "application/x-www-form-urlencoded"
EMPTY_TWIML = b'<?xml version="1.0" encoding="UTF-8"?><Response/>'
ENV = {"DISCORD_PUBLIC_KEY": DISCORD_PUBLIC.decode(), "TWILIO_TOKEN": TWILIO_TOKEN, "SLACK_SECRET": SLACK_SECRET}


def _endpoint(path: str, provider: str, secret: str, routes: list[tuple[str, str]], extra: str = "") -> str:
    """An item of `endpoints:` whose routes (event, `if` as YAML flow or "") record what they get."""
    text = f"  - path: {path}\n    provider: {provider}\n    secret_env: {secret}\n{extra}    routes:\n"
    for i, (event, when) in enumerate(routes):
        text += (f"      - event: {event}\n        name: r{i}\n        run: {{scripts}}/record.sh\n"
                 f"        env: {{{{OUT: {{out}}}}}}\n")
        text += f"        if: {when}\n" if when else ""
    return text


RESPOND_DISCORD = ("    respond: {{status: 200, content_type: application/json,"
                   " body: '{{\"type\": 4, \"data\": {{\"content\": \"on it\"}}}}'}}\n")
RESPOND_TWILIO = (f"    url: {TWILIO_URL}\n    respond: {{{{content_type: text/xml,"
                  " body: '<Response><Message>got it</Message></Response>'}}\n")
CONFIG = "request_timeout_s: 5\nendpoints:\n" + "".join([
    _endpoint("/discord", "discord", "DISCORD_PUBLIC_KEY",
              [("APPLICATION_COMMAND", "{{data.name: deploy}}"), ("MESSAGE_COMPONENT", ""),
               ("APPLICATION_AUTHORIZED", "")]),
    _endpoint("/discord-says", "discord", "DISCORD_PUBLIC_KEY", [("APPLICATION_COMMAND", "")], RESPOND_DISCORD),
    _endpoint("/twilio", "twilio", "TWILIO_TOKEN", [("received", "{{Body: deploy}}")], f"    url: {TWILIO_URL}\n"),
    _endpoint("/twilio-says", "twilio", "TWILIO_TOKEN", [("received", "")], RESPOND_TWILIO),
    _endpoint("/slack", "slack", "SLACK_SECRET", [("slash_command", "{{command: /deploy}}"), ("block_actions", ""),
                                                  ("app_mention", "")]),
    _endpoint("/github-says", "github", "WEBHOOK_SECRET", [("push", "")],
              "    respond: {{status: 202, body: queued}}\n"),
])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Sidecar, Path]]:
    directory = tmp_path_factory.mktemp("answers")
    with serving(write_config(directory, CONFIG), env=ENV) as sidecar:
        yield sidecar, directory / "out"


def recorded(out: Path, delivery: str, route: str) -> bytes:
    """The body record.sh got for `delivery` on route `route` (waits for it)."""
    path = out / f"{delivery}.{route}.body"
    wait_for(path.exists, timeout=10)
    return path.read_bytes()


def assert_answer(resp: Response, status: int, content_type: str, body: bytes) -> None:
    assert (resp.status, resp.body) == (status, body), (resp.status, resp.body)
    if status != 204:
        assert resp.headers["content-type"] == content_type


# --- Discord --------------------------------------------------------------------------------------
def discord_post(sidecar: Sidecar, document: dict[str, Any] | bytes, path: str = "/discord",
                 key: bytes = DISCORD_PRIVATE) -> Response:
    """POST `document` as Discord does: Ed25519 (PyNaCl) over timestamp + body, checked with verify_key."""
    body = document if isinstance(document, bytes) else json.dumps(document).encode()
    ts = str(int(time.time()))
    signature = signing.SigningKey(bytes.fromhex(key.decode())).sign(ts.encode() + body).signature.hex()
    assert interactions.verify_key(body, signature, ts, DISCORD_PUBLIC.decode()) == (key == DISCORD_PRIVATE)
    return sidecar.post(path, body, {"Content-Type": "application/json", "X-Signature-Ed25519": signature,
                                     "X-Signature-Timestamp": ts})


def interaction(kind: int, name: str = "deploy", ident: str | None = None) -> dict[str, Any]:
    return {"type": kind, "id": ident or str(uuid.uuid4().int >> 65), "application_id": "11", "version": 1,
            "token": "aW50ZXJhY3Rpb246MTox", "data": {"id": "12", "name": name, "type": 1, "custom_id": "ok"}}


def test_discord_command_is_deferred_and_its_hook_runs(server: tuple[Sidecar, Path]) -> None:
    sidecar, out = server
    command = interaction(InteractionType.APPLICATION_COMMAND)
    resp = discord_post(sidecar, command)
    assert_answer(resp, 200, "application/json", b'{"type":5}')
    assert resp.json() == {"type": ResponseType.DEFERRED_CHANNEL_MESSAGE_WITH_SOURCE}
    assert json.loads(recorded(out, command["id"], "r0"))["token"] == command["token"]  # for the follow-up
    again = discord_post(sidecar, command)  # Discord never retries, but a duplicate gets the same answer
    assert_answer(again, 200, "application/json", b'{"type":5}')
    assert sidecar.wait_log(lambda e: e.get("msg") == "delivery.duplicate" and e.get("delivery") == command["id"])


def test_discord_answers_by_interaction_type_accepted_or_ignored(server: tuple[Sidecar, Path]) -> None:
    sidecar, out = server
    component = interaction(InteractionType.MESSAGE_COMPONENT)
    resp = discord_post(sidecar, component)
    assert resp.json() == {"type": ResponseType.DEFERRED_UPDATE_MESSAGE}
    recorded(out, component["id"], "r1")
    ignored = interaction(InteractionType.APPLICATION_COMMAND, name="status")  # no route for it
    resp = discord_post(sidecar, ignored)
    assert resp.json() == {"type": ResponseType.DEFERRED_CHANNEL_MESSAGE_WITH_SOURCE}
    assert sidecar.wait_log(lambda e: e.get("msg") == "delivery.ignored" and e.get("delivery") == ignored["id"])
    modal = discord_post(sidecar, interaction(InteractionType.MODAL_SUBMIT))
    assert modal.json() == {"type": ResponseType.DEFERRED_CHANNEL_MESSAGE_WITH_SOURCE}
    # Autocomplete accepts nothing but choices: none is the answer that does not fail.
    complete = discord_post(sidecar, interaction(InteractionType.APPLICATION_COMMAND_AUTOCOMPLETE))
    assert complete.json() == {"type": ResponseType.APPLICATION_COMMAND_AUTOCOMPLETE_RESULT, "data": {"choices": []}}


def test_discord_handshake_and_errors_keep_their_answers(server: tuple[Sidecar, Path]) -> None:
    sidecar, _ = server
    for path in ("/discord", "/discord-says"):  # `respond` does not replace the PING's PONG
        ping = discord_post(sidecar, {"type": InteractionType.PING, "id": "1", "application_id": "11",
                                      "token": "t", "version": 1}, path)
        assert_answer(ping, 200, "application/json", b'{"type":1}')
        assert ping.json() == {"type": ResponseType.PONG}
    forged = discord_post(sidecar, interaction(InteractionType.APPLICATION_COMMAND),
                          key=hashlib.sha256(b"not the application").hexdigest().encode())
    assert forged.status == 401 and set(forged.json()) == {"error"}
    unparsable = discord_post(sidecar, b'{"type": 2,')  # signed, but not JSON
    assert unparsable.status == 400 and set(unparsable.json()) == {"error"}


def test_discord_webhook_events_get_204_with_no_body(server: tuple[Sidecar, Path]) -> None:
    sidecar, out = server
    ping = discord_post(sidecar, {"version": 1, "application_id": "11", "type": 0})
    assert_answer(ping, 204, "", b"")
    event = {"version": 1, "application_id": "11", "type": 1,
             "event": {"type": "APPLICATION_AUTHORIZED", "timestamp": "2024-10-18T14:42:53.064834",
                       "data": {"integration_type": 1, "scopes": ["applications.commands"], "user": {"id": "7"}}}}
    resp = discord_post(sidecar, event)
    assert_answer(resp, 204, "", b"")
    accepted = sidecar.wait_log(lambda e: e.get("msg") == "delivery.accepted" and e.get("event") ==
                                "APPLICATION_AUTHORIZED")
    assert json.loads(recorded(out, accepted["delivery"], "r2")) == event
    assert not [e for e in sidecar.find_logs("delivery.accepted") if e.get("event") == "WEBHOOK_PING"]


def test_discord_respond_replaces_the_deferral(server: tuple[Sidecar, Path]) -> None:
    sidecar, out = server
    command = interaction(InteractionType.APPLICATION_COMMAND)
    resp = discord_post(sidecar, command, "/discord-says")
    assert_answer(resp, 200, "application/json", b'{"type": 4, "data": {"content": "on it"}}')
    assert resp.json()["type"] == ResponseType.CHANNEL_MESSAGE_WITH_SOURCE
    recorded(out, command["id"], "r0")


# --- Twilio ---------------------------------------------------------------------------------------
def twilio_post(sidecar: Sidecar, params: dict[str, str], path: str = "/twilio", token: str = TWILIO_TOKEN,
                idem: str | None = None) -> Response:
    """POST an SMS webhook as Twilio does: form params, signed by twilio's RequestValidator."""
    signature = twilio_validator.RequestValidator(token).compute_signature(TWILIO_URL, params)
    return sidecar.post(path, urlencode(params).encode(), {
        "Content-Type": FORM, "X-Twilio-Signature": signature,
        "I-Twilio-Idempotency-Token": idem or uuid.uuid4().hex})


def sms(body: str) -> dict[str, str]:
    return {"MessageSid": "SM" + uuid.uuid4().hex, "SmsStatus": "received", "Body": body,
            "From": "+15550001111", "To": "+15550002222", "AccountSid": "AC" + "0" * 32, "NumMedia": "0"}


def test_twilio_gets_empty_twiml_accepted_ignored_and_duplicate(server: tuple[Sidecar, Path]) -> None:
    sidecar, out = server
    # What twilio's own TwiML builder makes for "do nothing", parsed: a Response element and nothing in it.
    expected = ET.fromstring(str(twiml.MessagingResponse()))
    idem = uuid.uuid4().hex
    params = sms("deploy")
    for resp in (twilio_post(sidecar, params, idem=idem), twilio_post(sidecar, sms("hello"))):  # accepted, ignored
        assert_answer(resp, 200, "text/xml", EMPTY_TWIML)
        parsed = ET.fromstring(resp.body)
        assert (parsed.tag, list(parsed), parsed.text) == (expected.tag, [], None)
    assert b"Body=deploy" in recorded(out, idem, "r0")
    duplicate = twilio_post(sidecar, params, idem=idem)
    assert_answer(duplicate, 200, "text/xml", EMPTY_TWIML)
    assert sidecar.wait_log(lambda e: e.get("msg") == "delivery.duplicate" and e.get("delivery") == idem)
    forged = twilio_post(sidecar, sms("deploy"), token="f" * 32)
    assert forged.status == 401 and forged.headers["content-type"] == "application/json"


def test_twilio_respond_answers_with_its_twiml(server: tuple[Sidecar, Path]) -> None:
    sidecar, out = server
    idem = uuid.uuid4().hex
    resp = twilio_post(sidecar, sms("status"), "/twilio-says", idem=idem)
    assert_answer(resp, 200, "text/xml", b"<Response><Message>got it</Message></Response>")
    assert [m.text for m in ET.fromstring(resp.body).iter("Message")] == ["got it"]
    recorded(out, idem, "r0")


# --- Slack ----------------------------------------------------------------------------------------
def slack_post(sidecar: Sidecar, body: bytes, content_type: str = FORM) -> Response:
    """POST as Slack does: X-Slack-Signature = v0= hex HMAC-SHA256 of v0:timestamp:body."""
    ts = str(int(time.time()))
    signature = "v0=" + hmac.new(SLACK_SECRET.encode(), f"v0:{ts}:".encode() + body, hashlib.sha256).hexdigest()
    return sidecar.post("/slack", body, {"Content-Type": content_type, "X-Slack-Request-Timestamp": ts,
                                         "X-Slack-Signature": signature})


def slash(command: str) -> tuple[str, bytes]:
    trigger = f"{uuid.uuid4().int % 10**13}.{uuid.uuid4().int % 10**13}.{uuid.uuid4().hex}"
    return trigger, urlencode({
        "token": "gIkuvaNzQIHg97ATvDxqgjtO", "team_id": "T0001", "team_domain": "example", "channel_id": "C2147483705",
        "channel_name": "test", "user_id": "U2147483697", "user_name": "Steve", "command": command, "text": "web",
        "api_app_id": "A123456", "response_url": "https://hooks.slack.com/commands/1234/5678",
        "trigger_id": trigger}).encode()


def test_slack_slash_commands_and_interactions_get_an_empty_200(server: tuple[Sidecar, Path]) -> None:
    sidecar, out = server
    trigger, body = slash("/deploy")
    assert_answer(slack_post(sidecar, body), 200, "text/plain", b"")
    assert b"command=%2Fdeploy" in recorded(out, trigger, "r0")
    assert_answer(slack_post(sidecar, body), 200, "text/plain", b"")  # duplicate
    _, other = slash("/weather")  # ignored
    assert_answer(slack_post(sidecar, other), 200, "text/plain", b"")
    action: dict[str, Any] = {"type": "block_actions", "trigger_id": "13345224609.738474920.8088930838d88f008e0",
              "user": {"id": "U1"}, "response_url": "https://hooks.slack.com/actions/T1/1/x",
              "actions": [{"action_id": "approve", "value": "v1", "type": "button"}]}
    action["trigger_id"] += uuid.uuid4().hex
    form = urlencode({"payload": json.dumps(action)}).encode()
    assert_answer(slack_post(sidecar, form), 200, "text/plain", b"")
    assert recorded(out, action["trigger_id"], "r1") == form  # the hook gets the body as Slack sent it


def test_slack_events_api_and_url_verification_keep_their_answers(server: tuple[Sidecar, Path]) -> None:
    sidecar, _ = server
    ident = "Ev" + uuid.uuid4().hex
    event = {"type": "event_callback", "event_id": ident, "event": {"type": "app_mention", "text": "hi"}}
    resp = slack_post(sidecar, json.dumps(event).encode(), "application/json")
    assert resp.status == 200 and resp.json() == {"status": "accepted", "delivery": ident, "routes": ["r2"]}
    challenge = {"type": "url_verification", "token": "x", "challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmH"}
    resp = slack_post(sidecar, json.dumps(challenge).encode(), "application/json")
    assert_answer(resp, 200, "text/plain", challenge["challenge"].encode())


# --- respond on any provider, and its checks at load --------------------------------------------
def test_respond_on_a_github_endpoint(server: tuple[Sidecar, Path]) -> None:
    sidecar, _ = server
    body = b'{"ref":"refs/heads/main"}'
    resp = sidecar.deliver(body, path="/github-says", delivery=uuid.uuid4().hex, secret=SECRET)
    assert_answer(resp, 202, "text/plain; charset=utf-8", b"queued")
    resp = sidecar.deliver(body, event="ping", path="/github-says", secret=SECRET)
    assert resp.status == 200 and resp.json() == {"status": "pong"}  # the ping keeps its answer


@pytest.mark.parametrize(("respond", "error"), [
    ("{status: 302}", "endpoints[0].respond.status: must be a 2xx status (the delivery was received), got 302"),
    ("{status: 299}", "endpoints[0].respond.status: must be a 2xx status (the delivery was received), got 299"),
    ("{status: '200'}", "endpoints[0].respond.status: must be an integer, got a string"),
    ("{status: 204, body: x}", "endpoints[0].respond.body: a 204 answer has no body"),
    ("{headers: {}}", "endpoints[0].respond.headers: unknown key (expected one of: body, content_type, status)"),
    ("'{\"type\": 5}'", "endpoints[0].respond: must be a mapping, got a string"),
    ("{body: {type: 5}}", "endpoints[0].respond.body: must be a string, got a mapping"),
    ("{content_type: \"text/plain\\r\\nX: y\"}", "endpoints[0].respond.content_type: must be a media type in"),
])
def test_respond_errors_name_file_and_line(tmp_path: Path, respond: str, error: str) -> None:
    found = endpoint_error(tmp_path, f"    provider: github\n    respond: {respond}\n", {"S": "x"})
    assert f"{tmp_path / 'config.yaml'}:5: {error}" in found, found


def test_respond_defaults_its_content_type_from_the_body(tmp_path: Path) -> None:
    cases = {"{body: '{\"ok\": true}'}": (200, "application/json", b'{"ok": true}'),
             "{status: 204}": (204, "text/plain; charset=utf-8", b""),
             "{body: done, content_type: text/html}": (200, "text/html", b"done")}
    for respond, expected in cases.items():
        config = endpoint_config(tmp_path, f"    provider: github\n    respond: {respond}\n", {"S": "x"})
        assert tuple(config.endpoints["/hook"].respond or ()) == expected


def test_the_interactive_recipes_load_and_parse(tmp_path: Path) -> None:
    """docs/interactive.md: its endpoints load as one config (offline: no secrets or scripts here), its
    Python hooks compile and its shell hooks parse."""
    text = (ROOT / "docs" / "interactive.md").read_text()
    found = re.findall(r"```(yaml|python|sh)\n(.*?)```", text, re.S)
    endpoints = "".join(code for kind, code in found if kind == "yaml")
    (tmp_path / "config.yaml").write_text("endpoints:\n" + endpoints)
    config = config_mod.load(tmp_path / "config.yaml", environ={}, offline=True)
    assert set(config.endpoints) == {"/discord", "/slack/deploy", "/sms", "/voice", "/slack/status", "/discord/ping"}
    assert all(config.endpoints[p].routes[0].reply is not None for p in ("/slack/status", "/discord/ping"))
    sms_answer = (200, "text/xml", b"<Response><Message>Deploy queued.</Message></Response>")
    assert config.endpoints["/sms"].respond == sms_answer
    for kind, code in found:
        if kind == "python":
            compile(code, "recipe", "exec")
        elif kind == "sh":
            assert subprocess.run(["sh", "-n"], input=code, text=True).returncode == 0, code
