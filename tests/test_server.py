"""The HTTP contract against a real sidecar process: every row of the status table."""

from __future__ import annotations

import json
import socket
import time
import uuid
from pathlib import Path

import pytest

from .conftest import Sidecar, github_signature, wait_for, write_config
from .support import exchange, table

PUSH_MAIN = json.dumps({"ref": "refs/heads/main", "repository": {"full_name": "org/app"}}).encode()


def raw_exchange(port: int, data: bytes) -> bytes:
    """Send raw bytes (no EOF), read until the server closes or 5 s pass; what came back."""
    return exchange(port, data, half_close=False, timeout=5.0)[0]


def test_valid_delivery_is_accepted_and_runs_matching_routes(basic: tuple[Sidecar, Path]) -> None:
    sidecar, out = basic
    delivery = str(uuid.uuid4())
    resp = sidecar.deliver(PUSH_MAIN, event="push", delivery=delivery)
    assert resp.status == 200
    assert resp.json() == {"status": "accepted", "delivery": delivery, "routes": ["main_push", "every"]}
    for route in ("main_push", "every"):
        body_file = out / f"{delivery}.{route}.body"
        wait_for(body_file.exists)
        assert body_file.read_bytes() == PUSH_MAIN
    line = sidecar.wait_log(lambda e: e.get("msg") == "delivery.accepted" and e.get("delivery") == delivery)
    assert line["status"] == 200 and line["event"] == "push" and line["routes"] == ["main_push", "every"]
    assert line["bytes"] == len(PUSH_MAIN) and line["provider"] == "github"


def test_if_filter_and_star_route(basic: tuple[Sidecar, Path]) -> None:
    sidecar, out = basic
    delivery = str(uuid.uuid4())
    body = json.dumps({"ref": "refs/heads/feature"}).encode()
    assert sidecar.deliver(body, event="push", delivery=delivery).json()["routes"] == ["every"]
    release = json.dumps({"action": "published", "release": {"draft": False}}).encode()
    assert sidecar.deliver(release, event="release").json()["routes"] == ["every", "released"]
    draft = json.dumps({"action": "published", "release": {"draft": True}}).encode()
    assert sidecar.deliver(draft, event="release").json()["routes"] == ["every"]
    wait_for((out / f"{delivery}.every.body").exists)
    assert not (out / f"{delivery}.main_push.body").exists()


def test_no_matching_route_is_ignored(tmp_path: Path, sidecars) -> None:
    config = write_config(tmp_path, """
        endpoints:
          - path: /hooks/github
            provider: github
            secret_env: WEBHOOK_SECRET
            routes:
              - event: push
                run: {scripts}/record.sh
                env: {{OUT: {out}}}
    """)
    sidecar = sidecars(config)
    resp = sidecar.deliver(b'{"zen": "x"}', event="issues", path="/hooks/github", delivery="d-1")
    assert resp.status == 200
    assert resp.json() == {"status": "ignored", "delivery": "d-1"}
    assert sidecar.wait_log(lambda e: e.get("msg") == "delivery.ignored")["event"] == "issues"
    assert list((tmp_path / "out").iterdir()) == []


def test_ping_is_answered_without_running_hooks(basic: tuple[Sidecar, Path]) -> None:
    sidecar, out = basic
    delivery = str(uuid.uuid4())
    resp = sidecar.deliver(b'{"zen": "Keep it logically awesome."}', event="ping", delivery=delivery)
    assert resp.status == 200 and resp.json() == {"status": "pong"}
    sidecar.wait_log(lambda e: e.get("msg") == "delivery.answered" and e.get("delivery") == delivery)
    assert not list(out.glob(f"{delivery}.*"))


def test_form_encoded_github_payload(basic: tuple[Sidecar, Path]) -> None:
    from urllib.parse import urlencode
    sidecar, out = basic
    delivery = str(uuid.uuid4())
    form = urlencode({"payload": PUSH_MAIN.decode()}).encode()
    resp = sidecar.post("/webhook", form, {
        "Content-Type": "application/x-www-form-urlencoded", "X-GitHub-Event": "push",
        "X-GitHub-Delivery": delivery, "X-Hub-Signature-256": github_signature(form)})
    assert resp.status == 200 and resp.json()["routes"] == ["main_push", "every"]
    body_file = out / f"{delivery}.every.body"
    wait_for(body_file.exists)
    assert body_file.read_bytes() == form  # the hook gets the bytes as sent


@pytest.mark.parametrize("signature", [
    "sha256=" + "0" * 64,                       # wrong
    "",                                         # empty
    "sha1=" + "0" * 40,                         # legacy scheme, not allowed here
    "sha256=zz",                                # malformed
    "sha256=" + "0" * 63,                       # wrong length
])
def test_bad_signatures_are_401(basic: tuple[Sidecar, Path], signature: str) -> None:
    sidecar, _ = basic
    headers = {"X-GitHub-Event": "push", "Content-Type": "application/json"}
    if signature:
        headers["X-Hub-Signature-256"] = signature
    resp = sidecar.post("/webhook", PUSH_MAIN, headers)
    assert resp.status == 401
    assert set(resp.json()) == {"error"}
    rid = resp.headers["x-request-id"]
    line = sidecar.wait_log(lambda e: e.get("request_id") == rid)
    assert line["msg"] == "delivery.rejected" and line["status"] == 401
    assert signature[7:] not in json.dumps(line) or not signature[7:]


def test_missing_signature_is_401(basic: tuple[Sidecar, Path]) -> None:
    sidecar, _ = basic
    resp = sidecar.post("/webhook", PUSH_MAIN, {"X-GitHub-Event": "push"})
    assert resp.status == 401 and "X-Hub-Signature-256" in resp.json()["error"]


def test_signature_of_other_secret_is_401_and_leaks_nothing(basic: tuple[Sidecar, Path]) -> None:
    sidecar, _ = basic
    resp = sidecar.deliver(PUSH_MAIN, secret="not the secret")
    assert resp.status == 401
    expected = github_signature(PUSH_MAIN)
    assert expected[7:].encode() not in resp.body
    assert not any(expected[7:] in line for line in sidecar.raw)


def test_invalid_json_is_400_after_verification(basic: tuple[Sidecar, Path]) -> None:
    sidecar, _ = basic
    resp = sidecar.deliver(b"{not json")
    assert resp.status == 400 and resp.json() == {"error": "body is not valid JSON"}
    # Unsigned garbage is refused by the signature check first, never parsed.
    assert sidecar.post("/webhook", b"{not json", {"X-GitHub-Event": "push"}).status == 401


@pytest.mark.parametrize("body", [b'{"n": NaN}', b'{"n": Infinity}', b'[-Infinity]'])
def test_nan_and_infinity_are_not_json(basic: tuple[Sidecar, Path], body: bytes) -> None:
    # Python's decoder takes them by default; RFC 8259 and every other parser refuse them.
    sidecar, _ = basic
    resp = sidecar.deliver(body)
    assert resp.status == 400 and resp.json() == {"error": "body is not valid JSON"}


def test_deeply_nested_json_is_400(basic: tuple[Sidecar, Path]) -> None:
    sidecar, _ = basic
    body = b"[" * 3000 + b"]" * 3000
    assert sidecar.deliver(body).status == 413  # over this table's 4096-byte limit
    body = b"[" * 1000 + b"]" * 1000
    assert sidecar.deliver(body).status == 400


def test_unknown_path_is_404(basic: tuple[Sidecar, Path]) -> None:
    sidecar, _ = basic
    resp = sidecar.deliver(PUSH_MAIN, path="/nope")
    assert resp.status == 404 and resp.json() == {"error": "no endpoint at this path"}
    assert sidecar.request("GET", "/etc/passwd").status == 404


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
def test_other_methods_on_an_endpoint_are_405_with_allow(basic: tuple[Sidecar, Path], method: str) -> None:
    sidecar, _ = basic
    resp = sidecar.request(method, "/webhook")
    assert resp.status == 405 and resp.headers["allow"] == "POST"


def test_post_to_health_is_405(basic: tuple[Sidecar, Path]) -> None:
    sidecar, _ = basic
    resp = sidecar.post("/healthz", b"{}")
    assert resp.status == 405 and resp.headers["allow"] == "GET"


def test_health_and_ready(basic: tuple[Sidecar, Path]) -> None:
    sidecar, _ = basic
    assert sidecar.request("GET", "/healthz").json() == {"status": "ok"}
    ready = sidecar.request("GET", "/readyz")
    assert ready.status == 200 and ready.json()["status"] == "ready"


def test_no_content_length_is_411(basic: tuple[Sidecar, Path]) -> None:
    sidecar, _ = basic
    answer = raw_exchange(sidecar.port, b"POST /webhook HTTP/1.1\r\nHost: x\r\nX-GitHub-Event: push\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 411 ")


def test_chunked_is_411(basic: tuple[Sidecar, Path]) -> None:
    sidecar, _ = basic
    answer = raw_exchange(sidecar.port, b"POST /webhook HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                                        b"\r\n2\r\n{}\r\n0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 411 ")
    assert b"Connection: close" in answer


@pytest.mark.parametrize("value", [b"-1", b"abc", b"1e3", b"10, 12"])
def test_bad_content_length_is_400(basic: tuple[Sidecar, Path], value: bytes) -> None:
    sidecar, _ = basic
    request = b"POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Length: " + value + b"\r\n\r\n{}"
    answer = raw_exchange(sidecar.port, request)
    assert answer.startswith(b"HTTP/1.1 400 ")


def test_too_large_is_413_without_reading_the_body(basic: tuple[Sidecar, Path]) -> None:
    sidecar, _ = basic
    # Announce 10 MB and send none of it: the answer must come at once.
    start = time.monotonic()
    answer = raw_exchange(sidecar.port, b"POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert time.monotonic() - start < 1.5


def test_keep_alive_serves_several_requests_on_one_connection(basic: tuple[Sidecar, Path]) -> None:
    import http.client
    sidecar, _ = basic
    conn = http.client.HTTPConnection("127.0.0.1", sidecar.port, timeout=5)
    try:
        ports = set()
        for i in range(5):
            body = json.dumps({"ref": "refs/heads/x", "n": i}).encode()
            conn.request("POST", "/webhook", body=body, headers={
                "X-GitHub-Event": "push", "X-Hub-Signature-256": github_signature(body)})
            resp = conn.getresponse()
            assert resp.status == 200 and json.loads(resp.read())["status"] == "accepted"
            ports.add(conn.sock.getsockname()[1])
        # A 401 also keeps the connection: its body was read.
        conn.request("POST", "/webhook", body=b"{}", headers={"X-GitHub-Event": "push"})
        resp = conn.getresponse()
        assert resp.status == 401 and resp.getheader("Connection") != "close"
        resp.read()
        conn.request("GET", "/healthz")
        assert conn.getresponse().status == 200
        ports.add(conn.sock.getsockname()[1])
        assert len(ports) == 1
    finally:
        conn.close()


def test_request_id_is_echoed_when_safe_and_generated_otherwise(basic: tuple[Sidecar, Path]) -> None:
    sidecar, out = basic
    delivery = str(uuid.uuid4())
    resp = sidecar.deliver(PUSH_MAIN, delivery=delivery, extra={"X-Request-Id": "abc-123"})
    assert resp.headers["x-request-id"] == "abc-123"
    env_file = out / f"{delivery}.every.env"
    wait_for(env_file.exists)
    assert "WEBHOOK_REQUEST_ID=abc-123" in env_file.read_text().splitlines()
    bad = sidecar.request("GET", "/healthz", headers={"X-Request-Id": "bad id\x7f"})
    assert bad.headers["x-request-id"] != "bad id\x7f" and len(bad.headers["x-request-id"]) == 32


def test_stalled_client_is_dropped(basic: tuple[Sidecar, Path]) -> None:
    """Headers then silence: dropped at the 2 s request deadline, the server still serves."""
    sidecar, _ = basic
    with socket.create_connection(("127.0.0.1", sidecar.port), timeout=10) as sock:
        sock.sendall(b"POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"a\":")
        start = time.monotonic()
        data = sock.recv(65536)
        elapsed = time.monotonic() - start
        assert 1.5 < elapsed < 5
        assert data.startswith(b"HTTP/1.1 408 ")
        while data:
            data = sock.recv(65536)
    assert sidecar.request("GET", "/healthz").status == 200


def test_trickling_client_is_dropped_at_the_deadline(basic: tuple[Sidecar, Path]) -> None:
    """One byte every 0.3 s never trips a socket timeout; the whole-request deadline ends it."""
    sidecar, _ = basic
    with socket.create_connection(("127.0.0.1", sidecar.port), timeout=10) as sock:
        start = time.monotonic()
        closed = False
        for byte in b"POST /webhook HTTP/1.1\r\nX-Filler: " + b"a" * 100:
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                closed = True
                break
            time.sleep(0.3)
            if time.monotonic() - start > 6:
                break
        if not closed:
            sock.settimeout(3)
            try:
                closed = sock.recv(1) == b""
            except ConnectionResetError:
                closed = True
        assert closed, "the trickling connection was still open"
        assert time.monotonic() - start < 6


def test_responses_never_wait_for_hooks(tmp_path: Path, sidecars) -> None:
    config = write_config(tmp_path, table('- {{event: "*", run: {scripts}/slow.sh, env: {{OUT: {out}, SLEEP: "3"}}}}'))
    sidecar = sidecars(config)
    start = time.monotonic()
    for i in range(3):
        assert sidecar.deliver(b"{}", delivery=f"slow-{i}").status == 200
    assert time.monotonic() - start < 1.0
    assert not (tmp_path / "out" / "slow-0.done").exists()
    wait_for((tmp_path / "out" / "slow-0.done").exists, timeout=10)
