"""The delivery intake without a socket: real providers, a real config, an in-memory scheduler."""

from __future__ import annotations

import json
from http import HTTPStatus
from pathlib import Path

import pytest

from sidecar import config as config_mod
from sidecar import intake
from sidecar.config import Config
from sidecar.errors import QueueFull, Unavailable
from sidecar.http11 import Headers

from .conftest import github_signature
from .memory_queue import MemoryScheduler
from .support import SCRIPTS, SECRET, table

ROUTES = f"""
- event: push
  name: on-push
  run: {SCRIPTS}/record.sh
  if: {{ref: refs/heads/main}}
- event: "*"
  name: every-event
  run: {SCRIPTS}/record.sh
  if: {{ref: refs/heads/main}}
"""


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Config:
    path: Path = tmp_path_factory.mktemp("intake") / "config.yaml"
    path.write_text(table(ROUTES))
    return config_mod.load(path, environ={"WEBHOOK_SECRET": SECRET})


def github(body: bytes, event: str = "push", delivery: str = "d-1", signature: str | None = None) -> Headers:
    """The headers GitHub sends with `body`, through the server's own header reader."""
    fields = {"X-GitHub-Event": event, "X-GitHub-Delivery": delivery, "Content-Type": "application/json",
              "X-Hub-Signature-256": github_signature(body) if signature is None else signature}
    return Headers([f"{name}: {value}\r\n".encode() for name, value in fields.items()])


def receive(config: Config, scheduler: MemoryScheduler, body: bytes, headers: Headers | None = None,
            target: str = "/webhook") -> intake.Outcome:
    return intake.receive("POST", target, github(body) if headers is None else headers, body, "rid-1",
                          config, scheduler)


MAIN = b'{"ref":"refs/heads/main"}'


def test_accepted_with_its_routes_and_the_delivery_as_sent(config: Config) -> None:
    scheduler = MemoryScheduler()
    outcome = receive(config, scheduler, MAIN)
    assert (outcome.status, outcome.msg) == (HTTPStatus.OK, "delivery.accepted")
    assert json.loads(outcome.body) == {"status": "accepted", "delivery": "d-1", "routes": ["on-push", "every-event"]}
    assert outcome.fields == {"endpoint": "/webhook", "provider": "github", "bytes": len(MAIN), "event": "push",
                              "delivery": "d-1", "routes": ["on-push", "every-event"]}
    [(delivery, routes)] = scheduler.spool.deliveries
    assert (delivery.endpoint, delivery.delivery, delivery.event, delivery.request_id, delivery.body) == (
        "/webhook", "d-1", "push", "rid-1", MAIN)
    assert delivery.cwd == str(config.base_dir) and routes == ("on-push", "every-event")


def test_a_redelivery_is_a_duplicate(config: Config) -> None:
    scheduler = MemoryScheduler()
    assert receive(config, scheduler, MAIN).msg == "delivery.accepted"
    again = receive(config, scheduler, MAIN)
    assert (again.status, again.msg) == (HTTPStatus.OK, "delivery.duplicate")
    assert json.loads(again.body) == {"status": "duplicate", "delivery": "d-1"}
    assert len(scheduler.spool.deliveries) == 1


def test_no_route_matches_is_ignored_and_nothing_is_submitted(config: Config) -> None:
    scheduler = MemoryScheduler()
    body = b'{"ref":"refs/heads/dev"}'
    outcome = receive(config, scheduler, body)
    assert (outcome.status, outcome.msg) == (HTTPStatus.OK, "delivery.ignored")
    assert json.loads(outcome.body) == {"status": "ignored", "delivery": "d-1"}
    assert scheduler.spool.deliveries == []


def test_a_bad_signature_is_401_before_the_body_is_parsed(config: Config) -> None:
    scheduler = MemoryScheduler()
    body = b"{not json"  # would be a 400 if it were parsed
    outcome = receive(config, scheduler, body, github(body, signature="sha256=" + "0" * 64))
    assert (outcome.status, outcome.msg) == (HTTPStatus.UNAUTHORIZED, "delivery.rejected")
    assert outcome.fields["reason"] == "mismatch" and "error" not in outcome.fields  # no detail of a 401 logged
    assert "event" not in outcome.fields and scheduler.spool.deliveries == []
    signed = receive(config, scheduler, body)  # the same body, signed: now it is parsed, and refused
    assert signed.status == HTTPStatus.BAD_REQUEST


@pytest.mark.parametrize("body", [b"{not json", b'{"ref": NaN}', b'{"n": Infinity}'])
def test_invalid_json_is_400(config: Config, body: bytes) -> None:
    outcome = receive(config, MemoryScheduler(), body)
    assert (outcome.status, outcome.msg) == (HTTPStatus.BAD_REQUEST, "request.rejected")
    assert "error" in json.loads(outcome.body) and outcome.fields["reason"]


@pytest.mark.parametrize("refusal", [QueueFull(), Unavailable("spool unavailable")])
def test_a_scheduler_that_cannot_take_it_is_503_with_retry_after(config: Config, refusal: Unavailable) -> None:
    scheduler = MemoryScheduler()
    scheduler.refuse = refusal
    outcome = receive(config, scheduler, MAIN)
    assert (outcome.status, outcome.msg) == (HTTPStatus.SERVICE_UNAVAILABLE, "request.rejected")
    assert outcome.headers == {"Retry-After": refusal.headers["Retry-After"]}
    assert json.loads(outcome.body) == {"error": str(refusal)}


def test_unknown_path_and_other_methods(config: Config) -> None:
    assert receive(config, MemoryScheduler(), MAIN, target="/nowhere?x=1").status == HTTPStatus.NOT_FOUND
    put = intake.receive("PUT", "/webhook", github(MAIN), MAIN, "rid-1", config, MemoryScheduler())
    assert (put.status, put.headers) == (HTTPStatus.METHOD_NOT_ALLOWED, {"Allow": "POST"})


def test_an_unsafe_delivery_id_is_replaced(config: Config) -> None:
    outcome = receive(config, MemoryScheduler(), MAIN, github(MAIN, delivery="../../etc\n"))
    assert outcome.status == HTTPStatus.OK and outcome.fields["delivery"] != "../../etc\n"
    assert len(outcome.fields["delivery"]) == 32
