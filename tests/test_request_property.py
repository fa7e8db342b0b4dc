"""Property test of the whole request path against a running sidecar.

Random methods, paths, header names and values (odd bytes included), bodies and Content-Length
values, some of them correctly signed deliveries, are sent over raw sockets. Whatever arrives:
an HTTP answer that is never a 500, the process stays up, and the log holds no escaped exception
(`request.failed`, `request.exception`, `connection.failed`) and no line that is not one JSON object.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .conftest import Sidecar, github_signature, serving
from .support import exchange, table

CONFIG = table("""
- event: push
  if: {ref: refs/heads/main}
  run: ["true"]
- event: "*"
  run: ["true"]
""", "max_body_bytes: 4096\nrequest_timeout_s: 2\n", more="""
- path: /open
  provider: none
  routes:
    - event: "*"
      run: ["true"]
""")

SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
BAD_MSGS = {"request.failed", "request.exception", "connection.failed"}


@dataclass
class Served:
    sidecar: Sidecar
    checked: int = 0  # its log lines checked so far


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("property")
    config = tmp / "config.yaml"
    config.write_text(CONFIG)
    with serving(config) as sidecar:
        yield Served(sidecar)


# --- strategies (one_of picks its branches evenly: repeating a branch weights it) --------
odd_bytes = st.binary(max_size=40)
token = st.text(alphabet="!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz",
                min_size=1, max_size=20).map(str.encode)
# Header-value-like text: any latin-1 character but the line ends, so most lines stay lines.
latin1 = st.text(alphabet=st.characters(max_codepoint=0xFF, blacklist_characters="\r\n"), max_size=40).map(
    lambda s: s.encode("latin-1"))

methods = st.one_of(*[st.sampled_from([b"POST", b"GET", b"HEAD", b"PUT", b"DELETE", b"OPTIONS", b"PATCH"])] * 4,
                    st.sampled_from([b"CONNECT", b"TRACE", b"post", b"other", b"BREW"]), token, odd_bytes)
paths = st.one_of(
    *[st.sampled_from([b"/webhook", b"/open", b"/healthz", b"/readyz", b"/metrics", b"/", b"*", b"//webhook"])] * 4,
    st.tuples(st.sampled_from([b"/webhook", b"/open", b"/healthz", b"/"]), latin1).map(b"".join),
    odd_bytes,
)
versions = st.one_of(*[st.just(b"HTTP/1.1")] * 6, st.sampled_from(
    [b"HTTP/1.0", b"HTTP/0.9", b"HTTP/2.0", b"HTTP/1.2", b"http/1.1", b"HTTP/1", b""]), odd_bytes)
header_names = st.one_of(
    *[st.sampled_from([b"Content-Length", b"Transfer-Encoding", b"X-GitHub-Event", b"X-GitHub-Delivery",
                       b"X-Hub-Signature-256", b"X-Request-Id", b"Content-Type", b"Connection", b"Expect",
                       b"Host", b"X-Webhook-Event", b"X-Webhook-Delivery", b"content-length"])] * 10,
    token, odd_bytes)
header_values = st.one_of(
    *[st.sampled_from([b"0", b"-1", b"chunked", b"close", b"keep-alive", b"100-continue", b"push", b"ping",
                       b"application/json", b"application/x-www-form-urlencoded", b"sha256=" + b"0" * 64])] * 4,
    token, latin1, latin1, latin1, odd_bytes)
bodies = st.one_of(
    st.binary(max_size=300),
    st.sampled_from([b"{}", b'{"ref": "refs/heads/main"}', b'{"type": "push\\n"}', b"[" * 100 + b"]" * 100,
                     b"payload=%7B%7D", b'{"a": ' + b"9" * 5000 + b"}"]),
    st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                 lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                 max_leaves=20).map(lambda v: json.dumps(v).encode()),
)


@st.composite
def raw_requests(draw: st.DrawFn) -> bytes:
    """A request, mostly well framed so that it gets past the parser, sometimes not at all."""
    body = draw(bodies)
    if draw(st.integers(0, 4)) < 2:
        # A correctly signed delivery with random event, delivery id and extra headers.
        headers = [(b"X-GitHub-Event", draw(header_values)), (b"X-GitHub-Delivery", draw(header_values)),
                   (b"X-Hub-Signature-256", github_signature(body).encode()),
                   (b"Content-Length", str(len(body)).encode()),
                   *draw(st.lists(st.tuples(header_names, header_values), max_size=3))]
        line = b"POST /webhook HTTP/1.1"
    else:
        headers = draw(st.lists(st.tuples(header_names, header_values), max_size=6))
        length = draw(st.one_of(st.none(), st.just(str(len(body)).encode()), st.integers(-10, 10_000).map(
            lambda n: str(n).encode()), header_values))
        if length is not None:
            headers.append((b"Content-Length", length))
        line = draw(methods) + b" " + draw(paths) + b" " + draw(versions)
    headers = draw(st.permutations(headers))
    separator = draw(st.sampled_from([b": "] * 6 + [b":", b":\t", b" : "]))
    eol = draw(st.sampled_from([b"\r\n"] * 6 + [b"\n"]))
    head = line + eol + b"".join(name + separator + value + eol for name, value in headers) + eol
    return head + body


STATUS = re.compile(rb"HTTP/1\.1 (\d{3}) ")


def check_new_log_lines(server: Served) -> None:
    """Every line since the last check is one JSON object, with no escaped exception and no 500."""
    lines = list(server.sidecar.raw)
    for raw in lines[server.checked:]:
        assert raw.startswith("{") and raw.endswith("}\n"), raw
        event = json.loads(raw)
        assert event.get("msg") not in BAD_MSGS and event.get("status") != 500, raw
    server.checked = len(lines)


@given(data=raw_requests())
@SETTINGS
def test_no_request_gets_a_500_or_escapes_the_handler(server: Served, data: bytes) -> None:
    answer = exchange(server.sidecar.port, data, timeout=5)[0]
    if not answer:
        # Only a request line without any word may be closed without an answer.
        assert not str(data.split(b"\n", 1)[0], "latin-1").split(), f"no answer to {data[:200]!r}"
    else:
        first = STATUS.match(answer)
        assert first, answer[:200]
        assert int(first[1]) != 500, (data[:300], answer[:300])
    assert server.sidecar.proc.poll() is None, "the sidecar died"
    check_new_log_lines(server)  # later responses on the connection: their log lines say their status


def test_after_the_property_run_the_server_is_healthy(server: Served) -> None:
    assert server.sidecar.request("GET", "/healthz").status == 200
    time.sleep(0.3)  # the last lines through the pipe
    check_new_log_lines(server)
    assert server.sidecar.proc.poll() is None
