"""`provider: cloudevents` end to end: requests built with the official `cloudevents` SDK (binary,
structured, batched) sent to a real sidecar whose real hooks record their stdin and environment; the
abuse-protection OPTIONS handshake; bearer or no credentials; dedupe on source + id."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cloudevents.core.bindings.http import HTTPMessage, to_binary_event, to_structured_event
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent

from .conftest import Sidecar, wait_for, write_config

TOKEN = "a-bearer-token-for-ce"
RECORD = ("cat > \"$OUT/$WEBHOOK_CE_ID.body\"; env > \"$OUT/$WEBHOOK_CE_ID.env.tmp\";"
          " mv \"$OUT/$WEBHOOK_CE_ID.env.tmp\" \"$OUT/$WEBHOOK_CE_ID.env\"")


def table(options: str = "secret_env: CE_TOKEN") -> str:
    return f"""endpoints:
  - path: /events
    provider: cloudevents
    {options}
    allowed_origins: [eventgrid.azure.net]
    routes:
      - event: order.created
        name: created
        run: [sh, -c, '{RECORD}']
        env: {{{{OUT: {{out}}}}}}
      - event: [order.paid, order.shipped]
        name: later
        run: [sh, -c, '{RECORD}']
        env: {{{{OUT: {{out}}}}}}
"""


def event(id_: str, type_: str = "order.created", data: Any = None, **more: Any) -> CloudEvent:
    attributes = {"id": id_, "source": "urn:example:shop", "type": type_, "specversion": "1.0",
                  "datacontenttype": "application/json", **more}
    return CloudEvent(attributes=attributes, data={"order": id_} if data is None else data)


def post(sidecar: Sidecar, message: HTTPMessage | tuple[dict[str, str], bytes], token: str | None = TOKEN) -> Any:
    headers, body = (message.headers, message.body) if isinstance(message, HTTPMessage) else message
    headers = {**headers, **({"Authorization": f"Bearer {token}"} if token else {})}
    return sidecar.post("/events", body, headers)


def env_of(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


def start(sidecars: Callable[..., Sidecar], tmp_path: Path, options: str = "secret_env: CE_TOKEN") -> Sidecar:
    return sidecars(write_config(tmp_path, table(options)), env={"CE_TOKEN": TOKEN})


def test_binary_and_structured_events_reach_hooks_with_their_attributes(
        tmp_path: Path, sidecars: Callable[..., Sidecar]) -> None:
    sidecar = start(sidecars, tmp_path)
    out = tmp_path / "out"
    when = datetime(2024, 5, 1, 10, 0, tzinfo=UTC)
    binary = post(sidecar, to_binary_event(event("b-1", subject="orders/1", time=when)))
    assert binary.status == 200 and binary.json()["status"] == "accepted", binary.body
    structured = post(sidecar, to_structured_event(event("s-1", type_="order.paid"), JSONFormat()))
    assert structured.status == 200 and structured.json()["routes"] == ["later"], structured.body
    wait_for(lambda: (out / "b-1.env").exists() and (out / "s-1.env").exists(), timeout=10)
    assert json.loads((out / "b-1.body").read_text()) == {"order": "b-1"}  # the data on stdin
    env = env_of(out / "b-1.env")
    assert (env["WEBHOOK_CE_ID"], env["WEBHOOK_CE_SOURCE"], env["WEBHOOK_CE_TYPE"]) == (
        "b-1", "urn:example:shop", "order.created")
    assert env["WEBHOOK_CE_SUBJECT"] == "orders/1" and env["WEBHOOK_CE_TIME"].startswith("2024-05-01T10:00:00")
    assert env["WEBHOOK_EVENT"] == "order.created" and env_of(out / "s-1.env")["WEBHOOK_ROUTE"] == "later"


def test_a_batch_is_one_delivery_per_event_and_the_same_source_and_id_is_a_duplicate(
        tmp_path: Path, sidecars: Callable[..., Sidecar]) -> None:
    sidecar = start(sidecars, tmp_path)
    out = tmp_path / "out"
    fmt = JSONFormat()
    batch = b"[" + b",".join(fmt.write(e) for e in (event("x-1"), event("x-2", type_="order.shipped"))) + b"]"
    r = post(sidecar, ({"Content-Type": "application/cloudevents-batch+json"}, batch))
    assert r.status == 200 and r.json()["status"] == "accepted" and len(r.json()["deliveries"]) == 2, r.body
    wait_for(lambda: (out / "x-1.env").exists() and (out / "x-2.env").exists(), timeout=10)
    again = post(sidecar, to_binary_event(event("x-1")))  # the same source and id: a duplicate
    assert again.status == 200 and again.json()["status"] == "duplicate", again.body


def test_missing_attributes_bad_credentials_and_the_handshake(tmp_path: Path,
                                                              sidecars: Callable[..., Sidecar]) -> None:
    sidecar = start(sidecars, tmp_path)
    message = to_binary_event(event("m-1"))
    missing = post(sidecar, ({k: v for k, v in message.headers.items() if k.lower() != "ce-source"}, message.body))
    assert missing.status == 400 and "source" in missing.json()["error"]
    assert post(sidecar, message, token=None).status == 401
    assert post(sidecar, message, token="wrong-token-value").status == 401
    allowed = sidecar.request("OPTIONS", "/events", headers={"WebHook-Request-Origin": "eventgrid.azure.net"})
    assert allowed.status == 200 and allowed.headers["webhook-allowed-origin"] == "eventgrid.azure.net"
    assert "POST" in allowed.headers["allow"]
    other = sidecar.request("OPTIONS", "/events", headers={"WebHook-Request-Origin": "evil.example"})
    assert other.status == 200 and "webhook-allowed-origin" not in other.headers


def test_unauthenticated_needs_no_secret_and_is_warned(tmp_path: Path, sidecars: Callable[..., Sidecar]) -> None:
    sidecar = start(sidecars, tmp_path, options="unauthenticated: true")
    assert sidecar.wait_log(lambda e: e.get("msg") == "endpoint.unverified" and e.get("endpoint") == "/events")
    r = post(sidecar, to_binary_event(event("u-1")), token=None)
    assert r.status == 200 and r.json()["status"] == "accepted", r.body
    wait_for((tmp_path / "out" / "u-1.env").exists, timeout=10)
