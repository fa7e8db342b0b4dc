"""Conditions end to end: a real sidecar runs the hooks of the routes whose conditions hold (payload,
headers, query string), logs why a delivery is ignored, and `webhook-sidecar explain` gives the same
verdicts from a payload file without a signature."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import Sidecar, serving, wait_for, write_config
from .support import cli, table

ROUTES = table("""
    - event: [push, create]
      name: deploy
      if:
        ref: [refs/heads/main, refs/heads/release]
        repository.full_name: {{regex: "^acme/"}}
        head_commit.message: {{not: {{regex: "\\\\[skip ci\\\\]"}}}}
        $header.User-Agent: {{glob: "GitHub-Hookshot/*"}}
        $query.env: prod
      any:
        - {{repository.private: false}}
        - {{sender.login: {{in: [alice, bob]}}}}
      run: {scripts}/record.sh
      env: {{OUT: {out}}}
    - event: push
      name: tags
      if: {{ref: {{glob: "refs/tags/v*"}}, repository.stars: {{ge: 10}}}}
      run: {scripts}/record.sh
      env: {{OUT: {out}}}
    - event: issues
      name: triage
      run: {scripts}/record.sh
      env: {{OUT: {out}}}
""")

PUSH = {"ref": "refs/heads/main", "repository": {"full_name": "acme/app", "private": True, "stars": 3},
        "head_commit": {"message": "fix the build"}, "sender": {"login": "alice"}}
HOOKSHOT = {"User-Agent": "GitHub-Hookshot/044aadd"}


@pytest.fixture(scope="module")
def conditional(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Sidecar, Path, Path]]:
    """One sidecar on ROUTES; yields (sidecar, its config, the hooks' output directory)."""
    directory = tmp_path_factory.mktemp("conditions")
    config = write_config(directory, ROUTES)
    with serving(config) as sidecar:
        yield sidecar, config, directory / "out"


def routes_run(out: Path, delivery: str) -> list[str]:
    """The routes that ran for `delivery` (record.sh writes <delivery>.<route>.body)."""
    return sorted(p.name.split(".")[1] for p in out.glob(f"{delivery}.*.body"))


def ignored(sidecar: Sidecar, delivery: str) -> str:
    line = sidecar.wait_log(lambda e: e.get("msg") == "delivery.ignored" and e.get("delivery") == delivery)
    return str(line["reason"])


def test_a_delivery_runs_the_routes_whose_conditions_hold(conditional: tuple[Sidecar, Path, Path]) -> None:
    sidecar, _, out = conditional
    resp = sidecar.deliver(json.dumps(PUSH).encode(), delivery="d-ok", path="/webhook?env=prod", extra=HOOKSHOT)
    assert resp.json()["routes"] == ["deploy"]
    wait_for(lambda: routes_run(out, "d-ok") == ["deploy"])
    env = (out / "d-ok.deploy.env").read_text()
    assert "WEBHOOK_EVENT=push" in env

    tag = {**PUSH, "ref": "refs/tags/v1.2", "repository": {"full_name": "acme/app", "private": True, "stars": 10}}
    assert sidecar.deliver(json.dumps(tag).encode(), event="push", delivery="d-tag").json()["routes"] == ["tags"]
    wait_for(lambda: routes_run(out, "d-tag") == ["tags"])
    # `create` is in deploy's event list; alice is in the second `any` group.
    resp = sidecar.deliver(json.dumps(PUSH).encode(), event="create", delivery="d-create",
                           path="/webhook?env=prod&x=1", extra=HOOKSHOT)
    assert resp.json()["routes"] == ["deploy"]
    wait_for(lambda: routes_run(out, "d-create") == ["deploy"])


@pytest.mark.parametrize(("change", "path", "extra", "reason"), [
    ({}, "/webhook?env=staging", HOOKSHOT, 'route deploy: $query.env: found "staging", wanted "prod"'),
    ({}, "/webhook", HOOKSHOT, 'route deploy: $query.env: found nothing, wanted "prod"'),
    ({}, "/webhook?env=prod", {"User-Agent": "curl/8"},
     'route deploy: $header.User-Agent: found "curl/8", wanted a string matching glob "GitHub-Hookshot/*"'),
    ({"ref": "refs/heads/dev"}, "/webhook?env=prod", HOOKSHOT,
     'route deploy: ref: found "refs/heads/dev", wanted one of ["refs/heads/main", "refs/heads/release"]'),
    ({"head_commit": {"message": "docs [skip ci]"}}, "/webhook?env=prod", HOOKSHOT,
     'route deploy: head_commit.message: found "docs [skip ci]", wanted not a string matching regex'
     ' "\\\\[skip ci\\\\]"'),
    ({"sender": {"login": "mallory"}}, "/webhook?env=prod", HOOKSHOT,
     'route deploy: any[0].repository.private: found true, wanted false'),
])
def test_an_ignored_delivery_logs_the_first_failing_condition(
        conditional: tuple[Sidecar, Path, Path], change: dict[str, object], path: str, extra: dict[str, str],
        reason: str) -> None:
    sidecar, _, out = conditional
    delivery = f"d-no-{abs(hash((path, reason))) % 10**8}"
    resp = sidecar.deliver(json.dumps({**PUSH, **change}).encode(), delivery=delivery, path=path, extra=extra)
    assert resp.status == 200 and resp.json() == {"status": "ignored", "delivery": delivery}
    assert ignored(sidecar, delivery) == reason
    assert routes_run(out, delivery) == []


def test_an_event_no_route_takes_is_named(conditional: tuple[Sidecar, Path, Path]) -> None:
    sidecar, _, _ = conditional
    sidecar.deliver(b"{}", event="release", delivery="d-release")
    assert ignored(sidecar, "d-release") == 'no route for event "release"'


def test_explain_prints_every_route_verdict_without_a_signature(
        conditional: tuple[Sidecar, Path, Path], tmp_path: Path) -> None:
    _, config, _ = conditional
    payload = tmp_path / "push.json"
    payload.write_text(json.dumps(PUSH))
    base = ("explain", "--config", str(config), "--path", "/webhook", "-H", "X-GitHub-Event: push")
    # No secret in the environment: explain needs none.
    result = cli(*base, "-H", "User-Agent: GitHub-Hookshot/1", "--query", "env=prod", str(payload),
                 env={"WEBHOOK_SECRET": ""})
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().splitlines() == [
        'endpoint /webhook (github), event "push"',
        "  deploy  match",
        '  tags    no: ref: found "refs/heads/main", wanted a string matching glob "refs/tags/v*"',
        '  triage  no: event: found "push", wanted "issues"',
    ]
    result = cli(*base, str(payload))
    assert result.returncode == 1
    assert result.stdout.decode().splitlines()[1] == '  deploy  no: $header.User-Agent: found nothing, wanted a' \
                                                     ' string matching glob "GitHub-Hookshot/*"'
    # --event overrides the header; a ping is the provider's to answer.
    result = cli(*base, "--event", "ping", str(payload))
    assert result.returncode == 1
    assert "the github provider answers this event itself: no route runs" in result.stdout.decode()


def test_explain_says_why_it_cannot(conditional: tuple[Sidecar, Path, Path], tmp_path: Path) -> None:
    _, config, _ = conditional
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    result = cli("explain", "--config", str(config), "--path", "/nowhere", str(bad))
    assert result.returncode == 2
    assert "no endpoint at /nowhere" in result.stderr.decode() and "endpoints: /webhook" in result.stderr.decode()
    result = cli("explain", "--config", str(config), "--path", "/webhook", str(bad))
    assert result.returncode == 2
    assert "would refuse this delivery: body is not valid JSON" in result.stderr.decode()
