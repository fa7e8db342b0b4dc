"""Hostile input against a real sidecar: a table of raw-socket cases, each with its expected answer.

One sidecar serves the whole module (request deadline 1 s, so the deadline cases are quick); the
connection cap has its own small one. Every loop is bounded in count and time, and everything
talks to 127.0.0.1 only. The last tests check what the suite must leave behind: a live server,
every log line one JSON object, no 500 and no escaped exception, and a bounded RSS.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import re
import socket
import struct
import termios
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sidecar import config as config_mod
from sidecar.errors import ConfigError
from sidecar.providers import PROVIDERS

from .conftest import SECRET, Sidecar, github_signature, hooks_out, serving, wait_for
from .support import exchange, table

DEADLINE_S = 1.0

# Records what a hook received: argv, environment, stdin. Files are named by delivery and route.
RECORDER = """#!/bin/sh
set -eu
name="$OUT/$WEBHOOK_DELIVERY.$WEBHOOK_ROUTE"
printf '%s\\n' "$#" "$@" > "$name.argv"
env > "$name.env"
cat > "$name.body.tmp"
mv "$name.body.tmp" "$name.body"
"""

EVERY = """
- event: "*"
  name: every
  run: [{recorder}, fixed-arg]
  env: {{OUT: {out}}}
"""
CONFIG = table("""
- event: push
  name: pushed
  run: [{recorder}, fixed-arg]
  env: {{OUT: {out}}}
""" + EVERY, """\
max_body_bytes: 262144
request_timeout_s: {deadline}
max_connections: 256
max_connections_per_client: 256  # all from 127.0.0.1; only the deadline ends slow clients here (test_flood.py)
""", more="- path: /open\n  provider: none\n  routes:\n" + textwrap.indent(EVERY.strip("\n"), "    ")
          + "\n- path: /stripe\n  provider: stripe\n  secret_env: WEBHOOK_SECRET\n  routes:\n"
          + textwrap.indent(EVERY.strip("\n"), "    "))


@dataclass
class Hostile:
    sidecar: Sidecar
    out: Path
    tmp: Path


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hostile]:
    tmp = tmp_path_factory.mktemp("hostile")
    out = hooks_out(tmp)
    recorder = tmp / "record.sh"
    recorder.write_text(RECORDER)
    recorder.chmod(0o755)
    config = tmp / "config.yaml"
    config.write_text(CONFIG.format(deadline=DEADLINE_S, recorder=recorder, out=out))
    with serving(config) as sidecar:
        yield Hostile(sidecar, out, tmp)


# --- raw sockets ----------------------------------------------------------------------
@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


def parse_answer(raw: bytes) -> Answer:
    """The first final response in `raw` (a 100 Continue is skipped); fails on anything that is not HTTP."""
    while True:
        head, sep, rest = raw.partition(b"\r\n\r\n")
        assert sep, f"no complete response head in {raw[:300]!r}"
        lines = head.decode("latin-1").split("\r\n")
        match = re.fullmatch(r"HTTP/1\.1 (\d{3}) [^\r\n]*", lines[0])
        assert match, f"bad status line {lines[0]!r}"
        status = int(match[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if status == 100:
            raw = rest
            continue
        length = int(headers["content-length"])
        assert len(rest) >= length, "body shorter than its Content-Length"
        return Answer(status, headers, rest[:length])


# --- request builders -----------------------------------------------------------------
BODY = b'{"ref": "refs/heads/main", "repository": {"full_name": "org/app"}}'


def request(head: bytes, *headers: bytes, body: bytes = b"") -> bytes:
    return head + b"\r\n" + b"".join(h + b"\r\n" for h in headers) + b"\r\n" + body


def signed(body: bytes = BODY, *extra: bytes, length: bytes | None = None, event: bytes = b"push",
           delivery: bytes | None = None) -> bytes:
    """A GitHub delivery signed with the test secret; `length` replaces the true Content-Length."""
    headers = [b"Host: x", b"Content-Type: application/json", b"X-GitHub-Event: " + event,
               b"X-Hub-Signature-256: " + github_signature(body).encode(), *extra]
    if delivery:
        headers.append(b"X-GitHub-Delivery: " + delivery)
    headers.append(b"Content-Length: " + (str(len(body)).encode() if length is None else length))
    return request(b"POST /webhook HTTP/1.1", *headers, body=body)


def fields(count: int, size: int) -> list[bytes]:
    return [b"X-F%d: %s" % (i, b"v" * size) for i in range(count)]


GET_HEALTH = b"GET /healthz HTTP/1.1"
TLS_HELLO = b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + bytes(range(0x20, 0x40))


@dataclass(frozen=True)
class Case:
    id: str
    data: bytes
    status: int | None          # None: the right outcome is a close without any answer
    half_close: bool = True     # False: the client goes silent instead (the deadline cases)
    must_close: bool = False    # the answer must say Connection: close


CASES = [
    # -- request line
    Case("garbage-request-line", b"FOO\r\n\r\n", 400),
    Case("four-words", request(b"GET /healthz HTTP/1.1 extra"), 400),
    Case("http-0.9-get", b"GET /healthz\r\n", 505),
    Case("http-0.9-post", b"POST /webhook\r\n", 400),
    Case("http-0.9-explicit", request(b"GET /healthz HTTP/0.9"), 505),
    Case("http-2.0", request(b"GET /healthz HTTP/2.0"), 505),
    Case("http-3", request(b"GET /healthz HTTP/3"), 400),
    Case("http-1.1.1", request(b"GET /healthz HTTP/1.1.1"), 400),
    Case("version-not-http", request(b"GET /healthz FOO/1.1"), 400),
    Case("version-superscript-digit", request(b"GET /healthz HTTP/1.\xb2"), 400),
    Case("http-1.0", request(b"GET /healthz HTTP/1.0"), 200),
    Case("blank-line-only", b"\r\n", None),
    Case("request-line-over-64k", request(b"GET /" + b"a" * 70_000 + b" HTTP/1.1"), 414),
    Case("lowercase-method", request(b"get /healthz HTTP/1.1"), 501),
    Case("unknown-method", request(b"BREW /webhook HTTP/1.1"), 501),
    Case("escape-in-method", request(b"G\x1bET /healthz HTTP/1.1"), 501),
    Case("nel-in-path", request(b"GET /a\x85b HTTP/1.1"), 400),     # \x85 splits words like a space
    Case("nul-in-path", request(b"GET /heal\x00thz HTTP/1.1"), 404),
    Case("absolute-form-target", request(b"GET http://evil.example/healthz HTTP/1.1"), 404),
    Case("dot-segments", request(b"POST /x/../webhook HTTP/1.1", b"Content-Length: 0"), 404),
    Case("tls-handshake-on-plain-port", TLS_HELLO, 408, half_close=False),
    Case("partial-request-line-then-silence", b"GET /healthz HT", 408, half_close=False),
    Case("partial-request-line-then-close", b"GET /healthz HT", 400),
    # -- Content-Length and framing
    Case("cl-negative", signed(length=b"-1"), 400),
    Case("cl-non-numeric", signed(length=b"abc"), 400),
    Case("cl-exponent", signed(length=b"1e3"), 400),
    Case("cl-plus-sign", signed(length=b"+%d" % len(BODY)), 400),
    Case("cl-hex", signed(length=b"0x40"), 400),
    Case("cl-superscript-digit", signed(length=b"\xb2"), 400),
    Case("cl-5000-digits", signed(length=b"9" * 5000), 413),
    Case("cl-20-digits", signed(length=b"1" + b"0" * 19), 413),
    Case("cl-leading-zeros", signed(length=b"000%d" % len(BODY)), 200),
    Case("cl-list", signed(length=b"%d, %d" % (len(BODY), len(BODY))), 400),
    Case("cl-duplicated-equal", signed(BODY, b"Content-Length: %d" % len(BODY)), 200),
    Case("cl-duplicated-differing", signed(BODY, b"Content-Length: 5"), 400),
    Case("cl-and-chunked", signed(BODY, b"Transfer-Encoding: chunked"), 411, must_close=True),
    Case("chunked-only", request(b"POST /webhook HTTP/1.1", b"Transfer-Encoding: chunked",
                                 body=b"2\r\n{}\r\n0\r\n\r\n"), 411, must_close=True),
    Case("te-identity", request(b"POST /webhook HTTP/1.1", b"Transfer-Encoding: identity",
                                b"Content-Length: 2", body=b"{}"), 411, must_close=True),
    Case("no-cl", request(b"POST /webhook HTTP/1.1", b"X-GitHub-Event: push"), 411),
    Case("cl-zero-empty-body", signed(b""), 400),
    Case("cl-over-body-then-silence", signed(length=b"%d" % (len(BODY) + 50)), 408, half_close=False),
    Case("cl-over-body-then-close", signed(length=b"%d" % (len(BODY) + 50)), 400),
    Case("cl-under-body", signed() + b"trailing garbage", 200),   # the rest is a second, broken request
    Case("cl-over-max-with-body", request(b"POST /webhook HTTP/1.1", b"Content-Length: 300000",
                                          body=b"x" * 300_000), 413, must_close=True),
    Case("cl-over-max-no-body", request(b"POST /webhook HTTP/1.1", b"Content-Length: 10000000"), 413),
    Case("get-with-body", request(GET_HEALTH, b"Content-Length: 5", body=b"hello"), 200),
    # -- header block
    Case("one-header-line-over-64k", request(GET_HEALTH, b"X-Big: " + b"a" * 70_000), 431),
    Case("header-block-over-64k", request(GET_HEALTH, *fields(40, 2000)), 431),
    Case("header-block-under-64k", request(GET_HEALTH, *fields(30, 2000)), 200),
    Case("99-header-fields", request(GET_HEALTH, *fields(99, 1)), 200),
    Case("100-header-fields", request(GET_HEALTH, *fields(100, 1)), 431),
    Case("5000-header-fields", request(GET_HEALTH, *fields(5000, 1)), 431),
    Case("obs-fold", request(GET_HEALTH, b"X-A: a", b" folded"), 400),
    Case("line-without-colon", request(GET_HEALTH, b"nocolon"), 400),
    Case("space-before-colon", request(b"POST /webhook HTTP/1.1", b"Content-Length : 2", body=b"{}"), 400),
    Case("empty-header-name", request(GET_HEALTH, b": value"), 400),
    Case("non-token-header-name", request(GET_HEALTH, b"X(bad): 1"), 400),
    Case("nul-in-header-value", request(GET_HEALTH, b"X-A: a\x00b"), 200),
    Case("bare-cr-in-header-value", request(GET_HEALTH, b"X-A: a\rb"), 200),
    Case("control-chars-in-header-value", request(GET_HEALTH, b"X-A: \x01\x1b[2J\x7f"), 200),
    Case("non-utf8-header-values", signed(BODY, b"X-Note: \xff\xfe\x80\xc3(", b"User-Agent: \xe9t\xe9"), 200),
    Case("lf-only-line-ends", b"GET /healthz HTTP/1.1\nHost: x\n\n", 200),
    Case("headers-then-silence", request(GET_HEALTH, b"Host: x")[:-2], 408, half_close=False),
    Case("headers-then-close", request(GET_HEALTH, b"Host: x")[:-2], 400),
    Case("expect-100-continue", signed(BODY, b"Expect: 100-continue"), 200),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_raw_request(hostile: Hostile, case: Case) -> None:
    raw, took = exchange(hostile.sidecar.port, case.data, half_close=case.half_close)
    if case.status is None:
        assert raw == b"", f"expected a close without answer, got {raw[:200]!r}"
        return
    answer = parse_answer(raw)
    assert answer.status == case.status, f"{raw[:400]!r}"
    assert re.fullmatch(r"[A-Za-z0-9._-]{1,128}", answer.headers["x-request-id"])
    if answer.status >= 400:
        assert set(json.loads(answer.body)) == {"error"}
    if case.must_close:
        assert answer.headers.get("connection") == "close"
    if case.status == 408:
        # Answered at the whole-request deadline (the reaper runs every 0.2 s), not before, not much later.
        assert DEADLINE_S - 0.1 < took < DEADLINE_S + 2.0
    else:
        assert took < DEADLINE_S, "answered only at the deadline"


def test_bare_cr_cannot_smuggle_a_header(hostile: Hostile) -> None:
    """http.client's email parser splits at a bare CR: 'X-Note: a\\rX-GitHub-Event: release' was two headers."""
    sidecar = hostile.sidecar
    # The injected lines come first, so a parser that split them would take them.
    data = request(b"POST /webhook HTTP/1.1", b"Host: x",
                   b"X-Note: a\rX-GitHub-Event: release\rX-GitHub-Delivery: forged",
                   b"X-GitHub-Event: push", b"X-GitHub-Delivery: cr-smuggle", b"Content-Type: application/json",
                   b"X-Hub-Signature-256: " + github_signature(BODY).encode(), b"Content-Length: %d" % len(BODY),
                   body=BODY)
    answer = parse_answer(exchange(sidecar.port, data)[0])
    assert answer.status == 200
    assert json.loads(answer.body) == {"status": "accepted", "delivery": "cr-smuggle", "routes": ["pushed", "every"]}
    line = sidecar.wait_log(lambda e: e.get("delivery") == "cr-smuggle" and e.get("msg") == "delivery.accepted")
    assert line["event"] == "push"


def test_expect_100_continue_only_when_the_body_is_wanted(hostile: Hostile) -> None:
    """A client that waits for 100 Continue is told 413/404/411 instead, and sends no body for them."""
    port = hostile.sidecar.port
    for head, status in ((b"POST /webhook HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 10000000", 413),
                         (b"POST /nowhere HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2", 404),
                         (b"POST /webhook HTTP/1.1\r\nExpect: 100-continue", 411)):
        raw, took = exchange(port, head + b"\r\n\r\n", half_close=False)
        assert raw.startswith(b"HTTP/1.1 %d " % status), raw[:200]
        assert b" 100 Continue" not in raw and took < DEADLINE_S
    # A wanted body: headers, then 100 Continue, then the body, then 200.
    whole = signed(BODY, b"Expect: 100-continue", delivery=b"expect-1")
    head, body = whole[:len(whole) - len(BODY)], whole[len(whole) - len(BODY):]
    with socket.create_connection(("127.0.0.1", port), timeout=4) as sock:
        sock.sendall(head)
        interim = b""
        while not interim.endswith(b"\r\n\r\n"):
            interim += sock.recv(1)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(body)
        final = b""
        while b"accepted" not in final:
            final += sock.recv(65536)
    assert final.startswith(b"HTTP/1.1 200 ")


def test_header_names_any_case_first_field_wins_and_connection_rules(hostile: Hostile) -> None:
    port = hostile.sidecar.port
    # Lower-case names; of two event fields the first counts, as in http.client.
    data = request(b"POST /webhook HTTP/1.1", b"host: x", b"x-github-event: push", b"X-GITHUB-EVENT: release",
                   b"x-github-delivery: case-1", b"x-hub-signature-256: " + github_signature(BODY).encode(),
                   b"content-length: %d" % len(BODY), body=BODY)
    answer = parse_answer(exchange(port, data)[0])
    assert answer.status == 200 and json.loads(answer.body)["routes"] == ["pushed", "every"]
    # HTTP/1.0 closes unless it asks for keep-alive; HTTP/1.1 keeps unless it asks to close.
    for head, extra, closes in ((b"GET /healthz HTTP/1.0", (), True),
                                (b"GET /healthz HTTP/1.0", (b"Connection: Keep-Alive",), False),
                                (b"GET /healthz HTTP/1.1", (), False),
                                (b"GET /healthz HTTP/1.1", (b"Connection: close",), True)):
        answer = parse_answer(exchange(port, request(head, *extra))[0])
        assert answer.status == 200
        assert (answer.headers.get("connection") == "close") is closes, (head, extra)


def test_trailing_whitespace_in_a_header_value_is_not_part_of_it(hostile: Hostile) -> None:
    answer = parse_answer(exchange(hostile.sidecar.port, signed(BODY, event=b"push \t", delivery=b"ows-1 "))[0])
    assert answer.status == 200
    assert json.loads(answer.body) == {"status": "accepted", "delivery": "ows-1", "routes": ["pushed", "every"]}


# --- event names, delivery ids and what hooks see ---------------------------------------
def hook_record(out: Path, delivery: str, route: str) -> tuple[list[str], dict[str, str], bytes]:
    body = out / f"{delivery}.{route}.body"
    wait_for(body.exists, timeout=10)
    # split("\n"), not splitlines(): values may hold U+2028 or \x85, which splitlines() breaks at.
    argv_lines = (out / f"{delivery}.{route}.argv").read_text().split("\n")[:-1]
    env = dict(line.split("=", 1) for line in (out / f"{delivery}.{route}.env").read_text().split("\n")
               if "=" in line)
    return argv_lines[1:], env, body.read_bytes()


@pytest.mark.parametrize("event, routes", [
    ("push", ["pushed", "every"]),
    ("Push", ["every"]),
    ("push/../push", ["every"]),
    ("../../etc/passwd", ["every"]),
    ("/etc/passwd", ["every"]),
    ("*", ["every"]),                      # a literal "*" is an event name like any other
    ("$(touch {tmp}/pwned)", ["every"]),
    ("`touch {tmp}/pwned`;touch {tmp}/pwned", ["every"]),
])
def test_event_names_select_no_file_and_reach_hooks_only_as_webhook_event(
        hostile: Hostile, event: str, routes: list[str]) -> None:
    sidecar = hostile.sidecar
    event = event.format(tmp=hostile.tmp)
    delivery = f"ev-{abs(hash(event)):x}"
    answer = parse_answer(exchange(sidecar.port, signed(BODY, event=event.encode(), delivery=delivery.encode()))[0])
    assert answer.status == 200
    assert json.loads(answer.body) == {"status": "accepted", "delivery": delivery, "routes": routes}
    for route in routes:
        argv, env, body = hook_record(hostile.out, delivery, route)
        assert argv == ["fixed-arg"]            # payload data never reaches a command line
        assert env["WEBHOOK_EVENT"] == event
        assert env["WEBHOOK_DELIVERY"] == delivery
        assert body == BODY
    assert not (hostile.tmp / "pwned").exists()
    assert not list(hostile.tmp.rglob("passwd"))
    # Only files the recorder names from (safe delivery id, route name) exist.
    names = {p.name for p in hostile.out.iterdir()}
    assert all(re.fullmatch(r"[A-Za-z0-9._:-]+\.(pushed|every)\.(argv|env|body|body\.tmp)", n) for n in names)


@pytest.mark.parametrize("event", [
    "push\n{\"msg\":\"forged\"}", "push\r", "push\x00", "\x1b[31mpush", "push\x7f", "\x08\x08\x08push",
])
def test_event_with_control_characters_is_400_and_runs_nothing(hostile: Hostile, event: str) -> None:
    """Through JSON (`type` on an unverified endpoint) an event name can carry any character."""
    sidecar = hostile.sidecar
    delivery = f"ctl-{abs(hash(event)):x}"
    answer = sidecar.post("/open", json.dumps({"type": event}).encode(), {"X-Webhook-Delivery": delivery})
    assert answer.status == 400 and answer.json() == {"error": "event type holds control characters"}
    line = sidecar.wait_log(lambda e: e.get("request_id") == answer.headers["x-request-id"])
    assert line["reason"] == "invalid_event" and "event" not in line
    time.sleep(0.1)
    assert not list(hostile.out.glob(f"{delivery}.*"))


def test_unicode_line_breaks_and_c1_controls_in_events_are_escaped_in_logs(hostile: Hostile) -> None:
    sidecar = hostile.sidecar
    event = "push\u2028\u2029\x85\x9b31m"
    answer = sidecar.post("/open", json.dumps({"type": event}).encode(), {"X-Webhook-Delivery": "c1-event"})
    assert answer.status == 200 and answer.json()["routes"] == ["every"]
    line = sidecar.wait_log(lambda e: e.get("msg") == "hook.finished" and e.get("delivery") == "c1-event")
    assert line["event"] == event
    raw = next(r for r in sidecar.raw if '"hook.finished"' in r and "c1-event" in r)
    assert "\\u2028\\u2029\\u0085\\u009b31m" in raw and raw.isascii()
    assert hook_record(hostile.out, "c1-event", "every")[1]["WEBHOOK_EVENT"] == event


def test_non_utf8_event_header_is_routed_exactly_and_logged_escaped(hostile: Hostile) -> None:
    sidecar = hostile.sidecar
    answer = parse_answer(exchange(sidecar.port, signed(BODY, event=b"\xffpush", delivery=b"latin1-event"))[0])
    assert answer.status == 200 and json.loads(answer.body)["routes"] == ["every"]
    line = sidecar.wait_log(lambda e: e.get("msg") == "delivery.accepted" and e.get("delivery") == "latin1-event")
    assert line["event"] == "\xffpush"


@pytest.mark.parametrize("given", ["d\x1b[0m", "d e", "d/../../x", "x" * 129, "d\x7f"])
def test_unsafe_delivery_ids_are_replaced(hostile: Hostile, given: str) -> None:
    answer = parse_answer(exchange(hostile.sidecar.port, signed(BODY, delivery=given.encode()))[0])
    assert answer.status == 200
    assert re.fullmatch(r"[0-9a-f]{32}", json.loads(answer.body)["delivery"])


def test_delivery_id_with_a_final_newline_is_replaced(hostile: Hostile) -> None:
    """Stripe's delivery id is the JSON `id`: "evt_1\\n" passed a regex that ended in `$`."""
    sidecar = hostile.sidecar
    body = json.dumps({"id": "evt_1\n", "type": "invoice.paid"}).encode()
    headers = PROVIDERS["stripe"]().sign(body, SECRET.encode(), time.time())
    answer = sidecar.post("/stripe", body, {**headers, "Content-Type": "application/json"})
    assert answer.status == 200
    delivery = answer.json()["delivery"]
    assert re.fullmatch(r"[0-9a-f]{32}", delivery)
    assert hook_record(hostile.out, delivery, "every")[1]["WEBHOOK_DELIVERY"] == delivery


# --- payloads -------------------------------------------------------------------------
@pytest.mark.parametrize("body, status", [
    (b"[" * 30_000 + b"]" * 30_000, 400),                        # C-level recursion
    (b'{"a":' * 20_000 + b"1" + b"}" * 20_000, 400),
    (b"[" * 65 + b"]" * 65, 400),                                # parses, but deeper than 64
    (b'{"a":' * 50 + b"1" + b"}" * 50, 200),
    (b'{"n": ' + b"9" * 5000 + b"}", 400),                       # int() refuses > 4300 digits
    (b'{"ref": "' + b"x" * 200_000 + b'"}', 200),                # very long string
    (b'{"s": "' + b"\\u0000\\ud800" * 20_000 + b'"}', 200),      # escapes, a lone surrogate
    (b'{"a": 1, "a": 2, "a": 3}', 200),
    (b"\xff\xfe{}", 400),
], ids=["deep-arrays", "deep-objects", "depth-65", "depth-50", "huge-int", "long-string",
        "escaped-nul-and-surrogate", "duplicate-keys", "not-utf8"])
def test_json_payloads(hostile: Hostile, body: bytes, status: int) -> None:
    delivery = f"json-{abs(hash(body)):x}"
    answer = hostile.sidecar.deliver(body, delivery=delivery)
    assert answer.status == status, answer.body
    if status == 200:
        assert hook_record(hostile.out, delivery, "every")[2] == body   # byte for byte


# --- control characters in every logged field -----------------------------------------
CONTROLS = "".join(chr(c) for c in (*range(1, 9), *range(11, 13), *range(14, 32), 0x7F, 0x85, 0x9B))


def test_control_characters_in_logged_fields_stay_one_escaped_line(hostile: Hostile) -> None:
    sidecar = hostile.sidecar
    # Characters str.split() takes for spaces (\x0b, \x1c, \x85...) would split the request line.
    path = "/nope/\x00" + "".join(c for c in CONTROLS if not c.isspace()) + "?q=\x08"
    rid_given = "id\x1b[2J" + CONTROLS
    data = request(b"GET " + path.encode("latin-1") + b" HTTP/1.1", b"Connection: close",
                   b"X-Request-Id: " + rid_given.encode("latin-1"))
    answer = parse_answer(exchange(sidecar.port, data)[0])
    assert answer.status == 404
    rid = answer.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", rid)               # the unsafe id was not echoed
    line = sidecar.wait_log(lambda e: e.get("request_id") == rid)
    assert line["path"] == path and line["remote"] == "127.0.0.1"
    raw = next(r for r in sidecar.raw if rid in r)
    assert "\\u001b" in raw and "\\u007f" in raw and raw.isascii()

    # The delivery id (replaced), the event (refused), in one request.
    ctl = CONTROLS.replace("\r", "").encode("latin-1")
    answer = parse_answer(exchange(sidecar.port, signed(BODY, event=b"push" + ctl, delivery=b"d" + ctl))[0])
    assert answer.status == 400
    line = sidecar.wait_log(lambda e: e.get("request_id") == answer.headers["x-request-id"])
    assert line["reason"] == "invalid_event"

    # An error message that quotes the request line.
    answer = parse_answer(exchange(sidecar.port, b"GET / HTTP/1.1\x1b[31m\x01\r\n\r\n")[0])
    assert answer.status == 400
    line = sidecar.wait_log(lambda e: e.get("request_id") == answer.headers["x-request-id"])
    assert "\\x1b[31m\\x01" in line["error"]  # quoted with repr()


# --- slowloris --------------------------------------------------------------------------
def test_slowloris_200_clients_while_a_valid_delivery_gets_200(hostile: Hostile) -> None:
    sidecar = hostile.sidecar
    timeouts_before = len(sidecar.find_logs("request.timeout"))
    socks: list[socket.socket] = []
    try:
        for i in range(200):
            sock = socket.create_connection(("127.0.0.1", sidecar.port), timeout=2)
            sock.sendall(b"POST /webhook HTTP/1.1\r\nHost: x\r\nX-Slow-%d: " % i)
            socks.append(sock)
        started = time.monotonic()
        answer = sidecar.deliver(BODY, delivery="during-slowloris")
        took = time.monotonic() - started
        assert answer.status == 200 and answer.json()["status"] == "accepted"
        assert took < 0.8, f"a valid delivery took {took:.2f}s while 200 clients trickled"
        # One byte per client every 0.2 s: every recv succeeds, only the whole-request deadline ends them.
        open_socks = set(range(len(socks)))
        while open_socks and time.monotonic() - started < DEADLINE_S + 1.0:
            for i in list(open_socks):
                try:
                    socks[i].send(b"a")
                except OSError:
                    open_socks.discard(i)
            time.sleep(0.2)
        outcomes = []
        for sock in socks:
            sock.settimeout(2)
            data = b""
            try:
                while chunk := sock.recv(65536):
                    data += chunk
            except (TimeoutError, ConnectionResetError) as e:
                data += type(e).__name__.encode()
            outcomes.append(data)
        assert time.monotonic() - started < DEADLINE_S + 4
    finally:
        for sock in socks:
            sock.close()
    # Each slow client got its 408 (or, if our byte crossed the close, at least the close).
    assert all(o.startswith(b"HTTP/1.1 408 ") or o in (b"", b"ConnectionResetError") for o in outcomes), \
        {o[:40] for o in outcomes}
    assert sum(o.startswith(b"HTTP/1.1 408 ") for o in outcomes) >= 150
    wait_for(lambda: len(sidecar.find_logs("request.timeout")) - timeouts_before >= 200, timeout=5)
    assert sidecar.request("GET", "/healthz").status == 200


# --- the connection cap -----------------------------------------------------------------
def test_connection_cap_answers_503_at_once_and_recovers(tmp_path: Path, sidecars) -> None:
    limit = 8
    config = tmp_path / "config.yaml"
    config.write_text(table("""- event: "*"\n  run: ["true"]""",
                            f"request_timeout_s: 5\nmax_connections: {limit}\nmax_connections_per_client: {limit}\n"))
    sidecar = sidecars(config)
    # Idle or slow connections would be closed to make room (tests/test_flood.py); only connections
    # handling a complete request hold their slot. These pipeline requests for a 3.5 KB /metrics and
    # read none of the answers into a 1 KB receive buffer, so each handler blocks writing one.
    busy: list[socket.socket] = []
    try:
        for _ in range(limit):
            sock = socket.socket()
            busy.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
            sock.connect(("127.0.0.1", sidecar.port))
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n" * 400)

        def unread() -> list[int]:
            return [struct.unpack("i", fcntl.ioctl(s, termios.FIONREAD, b"\0" * 4))[0] for s in busy]

        def all_stuck() -> bool:
            # Between two pipelined requests a handler is briefly idle, and could make room: wait until
            # no answer makes progress for a while, i.e. every handler is blocked in its write.
            before = unread()
            time.sleep(0.5)
            return all(before) and unread() == before
        wait_for(all_stuck, timeout=10)
        for path in (b"/readyz", b"/webhook"):
            raw, took = exchange(sidecar.port, b"GET %s HTTP/1.1\r\n\r\n" % path)
            answer = parse_answer(raw)
            assert answer.status == 503 and took < 0.5
            assert answer.headers["retry-after"].isdigit() and answer.headers["connection"] == "close"
            assert json.loads(answer.body) == {"error": "too many connections"}
            assert answer.headers["x-request-id"]
        refused = sidecar.wait_log(lambda e: e.get("msg") == "connection.refused")
        assert refused["status"] == 503 and refused["limit"] == limit
        wait_for(lambda: len(sidecar.find_logs("connection.refused")) == 2, timeout=5)
        # Liveness still holds (a full pod is unready, not dead), without taking a slot.
        for _ in range(3):
            raw, took = exchange(sidecar.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", half_close=False)
            answer = parse_answer(raw)
            assert answer.status == 200 and json.loads(answer.body) == {"status": "ok"} and took < 0.5
            assert answer.headers["connection"] == "close"
        assert len(sidecar.find_logs("connection.refused")) == 2
        assert not sidecar.find_logs("connection.evicted")  # nothing idle or slow to close
        for sock in busy[:3]:
            sock.close()
        # The closed ones free their slots as soon as their threads see EOF.
        wait_for(lambda: sidecar.deliver(b"{}", delivery="after-cap").status == 200, timeout=5, interval=0.1)
    finally:
        for sock in busy:
            sock.close()
    assert not sidecar.find_logs("connection.failed")


def test_a_peer_that_stops_reading_frees_its_slot_after_the_deadline(tmp_path: Path, sidecars) -> None:
    """A peer pipelines deliveries and reads none of the answers. Once a body is read its request's
    deadline is over, so a handler blocked writing the answer gives up by the socket's send timeout
    (request_timeout_s + 1 s): the connection is closed and the slot serves the next one."""
    config = tmp_path / "config.yaml"
    config.write_text(table("""- event: "*"\n  run: ["true"]""",
                            "request_timeout_s: 1\nmax_connections: 1\nmax_connections_per_client: 1\n"))
    sidecar = sidecars(config)
    # Wrong signatures: each a 401 after its body is read, nothing queued.
    one = (b"POST /webhook HTTP/1.1\r\nHost: x\r\nX-GitHub-Event: push\r\nContent-Length: 2\r\n"
           b"X-Hub-Signature-256: sha256=" + b"0" * 64 + b"\r\n\r\n{}")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    sock.connect(("127.0.0.1", sidecar.port))
    sent = threading.Thread(target=lambda: _send_until_closed(sock, one * 1000), daemon=True)
    try:
        sent.start()

        def stuck() -> bool:  # no answer written for a while: the handler is blocked in its write
            before = len(sidecar.find_logs("delivery.rejected"))
            time.sleep(0.3)
            return before > 10 and len(sidecar.find_logs("delivery.rejected")) == before
        wait_for(stuck, timeout=10)
        since = time.monotonic() - 0.3
        # While its handler writes, the slot is taken: a second connection is refused at once.
        assert parse_answer(exchange(sidecar.port, b"GET /readyz HTTP/1.1\r\n\r\n")[0]).status == 503
        wait_for(lambda: sidecar.deliver(b"{}", delivery="after-stuck").status == 200, timeout=8, interval=0.2)
        freed_after = time.monotonic() - since
    finally:
        sock.close()
    dropped = sidecar.wait_log(lambda e: e.get("msg") == "connection.dropped")
    last = sidecar.find_logs("delivery.rejected")[-1]  # logged once its answer was written
    blocked = _ts(dropped["ts"]) - _ts(last["ts"])
    print(f"\nthe handler gave up {blocked:.1f} s after its last answer went out; the slot was free"
          f" {freed_after:.1f} s after the peer was seen stuck")
    assert dropped["error"] == "BlockingIOError"
    # The send timeout bounds each send(): a write that moved a little first waits twice at most.
    assert blocked < 2 * (1 + 1) + 0.5 and freed_after < 8
    assert not sidecar.find_logs("connection.failed")


def _ts(stamp: str) -> float:
    return datetime.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").timestamp()


def _send_until_closed(sock: socket.socket, data: bytes) -> None:
    try:
        while True:
            sock.sendall(data)
    except OSError:
        pass


def test_max_connections_must_be_a_positive_integer(tmp_path: Path) -> None:
    for value, problem in (("0", "must be at least 1, got 0"), ("many", "must be an integer, got a string"),
                           ("true", "must be an integer, got boolean True")):
        config = tmp_path / "config.yaml"
        config.write_text(f"max_connections: {value}\nendpoints:\n  - path: /w\n    provider: none\n"
                          "    routes:\n      - event: x\n        run: ['true']\n")
        with pytest.raises(ConfigError) as err:
            config_mod.load(config, environ={})
        assert err.value.errors == [f"{config}:1: max_connections: {problem}" + (
            " (quote it if you meant a string)" if value == "true" else "")]
    config.write_text("max_connections: 3\nendpoints:\n  - path: /w\n    provider: none\n"
                      "    routes:\n      - event: x\n        run: ['true']\n")
    assert config_mod.load(config, environ={}).max_connections == 3


# --- what the suite leaves behind -------------------------------------------------------
def test_after_the_suite_the_server_is_alive_clean_and_small(hostile: Hostile) -> None:
    sidecar = hostile.sidecar
    assert sidecar.proc.poll() is None
    assert sidecar.request("GET", "/healthz").json() == {"status": "ok"}
    assert sidecar.deliver(BODY, delivery="after-the-suite").status == 200
    for raw in list(sidecar.raw):
        assert raw.endswith("}\n") and raw.isascii() and not any(ord(c) < 0x20 for c in raw[:-1]), raw
        assert {"ts", "level", "msg"} <= set(json.loads(raw)), raw
    bad = [e for e in sidecar.logs if e.get("msg") in ("request.failed", "connection.failed", "request.exception")]
    assert not bad, bad
    assert not any(e.get("status") == 500 for e in sidecar.logs)
    status = Path(f"/proc/{sidecar.proc.pid}/status").read_text()
    vm_rss = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
    assert vm_rss is not None, status
    rss_kib = int(vm_rss[1])
    print(f"\nsidecar VmRSS after the hostile suite: {rss_kib / 1024:.1f} MiB")
    assert rss_kib < 150 * 1024
