"""Request context for hooks: `pass_headers`, `pass_query` and `env_from`, stored with the delivery so
that a run after a kill -9, or on another replica of the shared spool, gets what the request carried.
Real sidecars, real hooks writing their environment, real PostgreSQL."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import Sidecar, wait_for, write_config
from .support import SPOOL_URL_VAR, cli_text

# The first run of a delivery holds (a run to kill the sidecar under); every later one records its env.
HOLD_ONCE = ("cat >/dev/null; if [ ! -e \"$OUT/$WEBHOOK_DELIVERY.held\" ]; then touch \"$OUT/$WEBHOOK_DELIVERY.held\";"
             " sleep 60; fi; env > \"$OUT/$WEBHOOK_DELIVERY.env.tmp\"; mv \"$OUT/$WEBHOOK_DELIVERY.env.tmp\""
             " \"$OUT/$WEBHOOK_DELIVERY.env\"")
PAYLOAD = {"after": "abc123", "repository": {"full_name": "acme/app", "private": False, "stars": 7,
                                             "topics": ["a", "b"]}, "note": "multi\nline"}


def config_text(top: str = "", run: str = "") -> str:
    run = run or ("cat >/dev/null; env > \"$OUT/$WEBHOOK_DELIVERY.env.tmp\";"
                  " mv \"$OUT/$WEBHOOK_DELIVERY.env.tmp\" \"$OUT/$WEBHOOK_DELIVERY.env\"")
    return top + f"""endpoints:
  - path: /webhook
    provider: github
    secret_env: WEBHOOK_SECRET
    pass_headers: [X-GitHub-Hook-ID, User-Agent, X-Absent]
    pass_query: true
    routes:
      - event: push
        name: deploy
        run: [sh, -c, '{run.replace("'", "''")}']
        env: {{{{OUT: {{out}}}}}}
        env_from: {{{{SHA: after, REPO: repository.full_name, PRIVATE: repository.private, STARS: repository.stars,
                    TOPICS: repository.topics, NOTE: note, GONE: no.such.path}}}}
"""


def environment(path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    key = ""
    for line in path.read_text().splitlines():
        name, sep, value = line.partition("=")
        if sep and name.replace("_", "").isalnum() and name[:1].isalpha():
            key, out[name] = name, value
        elif key:
            out[key] += "\n" + line  # a value holding a newline
    return out


def send(sidecar: Sidecar, delivery: str) -> None:
    body = json.dumps(PAYLOAD).encode()
    r = sidecar.deliver(body, delivery=delivery, path="/webhook?env=prod&x=1",
                        extra={"X-GitHub-Hook-ID": "4242", "User-Agent": "GitHub-Hookshot/abc"})
    assert r.status == 200 and r.json()["status"] == "accepted", r.body


def assert_context(env: dict[str, str]) -> None:
    assert env["WEBHOOK_HEADER_X_GITHUB_HOOK_ID"] == "4242"
    assert env["WEBHOOK_HEADER_USER_AGENT"] == "GitHub-Hookshot/abc"
    assert "WEBHOOK_HEADER_X_ABSENT" not in env  # not in the request: unset
    assert not any("SIGNATURE" in k for k in env)  # credentials never reach a hook
    assert env["WEBHOOK_QUERY"] == "env=prod&x=1"
    assert env["SHA"] == "abc123" and env["REPO"] == "acme/app"
    assert env["PRIVATE"] == "false" and env["STARS"] == "7"  # scalars as JSON text
    assert env["TOPICS"] == '["a","b"]'  # lists and objects as compact JSON
    assert env["NOTE"] == "multi\nline"  # strings as they are
    assert "GONE" not in env  # a missing path leaves the variable unset


def test_hooks_get_passed_headers_query_and_payload_values(tmp_path: Path, sidecars: Callable[..., Sidecar]) -> None:
    config = write_config(tmp_path, config_text())
    sidecar = sidecars(config)
    send(sidecar, "ctx-1")
    env_file = tmp_path / "out" / "ctx-1.env"
    wait_for(env_file.exists, timeout=10)
    assert_context(environment(env_file))


def test_the_context_is_stored_and_survives_a_kill_9(tmp_path: Path, sidecars: Callable[..., Sidecar]) -> None:
    config = write_config(tmp_path, config_text(run=HOLD_ONCE))
    first = sidecars(config)
    send(first, "ctx-kill")
    out = tmp_path / "out"
    wait_for((out / "ctx-kill.held").exists, timeout=10)
    first.stop(signal.SIGKILL)
    sidecars(config)  # the same spool: the job runs again, from what was stored
    wait_for((out / "ctx-kill.env").exists, timeout=20)
    assert_context(environment(out / "ctx-kill.env"))


def test_another_replica_runs_it_with_the_stored_context(tmp_path: Path, sidecars: Callable[..., Sidecar],
                                                         pg_url: str) -> None:
    config = write_config(tmp_path, config_text(top=f"spool_url_env: {SPOOL_URL_VAR}\nlease_s: 2\n", run=HOLD_ONCE))
    first = sidecars(config, "--replica", "r1", env={SPOOL_URL_VAR: pg_url})
    wait_for(lambda: first.request("GET", "/readyz").status == 200, timeout=10)  # the database link is open
    send(first, "ctx-pg")
    out = tmp_path / "out"
    wait_for((out / "ctx-pg.held").exists, timeout=10)
    first.stop(signal.SIGKILL)
    sidecars(config, "--replica", "r2", env={SPOOL_URL_VAR: pg_url})  # takes it over when the lease runs out
    wait_for((out / "ctx-pg.env").exists, timeout=30)
    env = environment(out / "ctx-pg.env")
    assert env["WEBHOOK_REPLICA"] == "r2"
    assert_context(env)


@pytest.mark.parametrize(("key", "value", "message"), [
    ("pass_headers", "[X-Hub-Signature-256]", "carries a credential"),
    ("pass_headers", "[Authorization]", "carries a credential"),
    ("pass_headers", "[Cookie]", "carries a credential"),
    ("pass_headers", "[X-Gitlab-Token]", "carries a credential"),
    ("pass_headers", "['bad header']", "must be a header name"),
])
def test_credentials_and_bad_names_are_config_errors(tmp_path: Path, key: str, value: str, message: str) -> None:
    passed = "    pass_headers: [X-GitHub-Hook-ID, User-Agent, X-Absent]\n"
    text = config_text().replace(passed, f"    {key}: {value}\n")
    config = write_config(tmp_path, text)
    result = cli_text("check", "--config", str(config), env={"WEBHOOK_SECRET": "s"})
    assert result.returncode != 0
    assert message in result.stderr + result.stdout
    assert "config.yaml:5" in result.stderr + result.stdout  # the file and the line of the key


def test_env_from_may_not_set_the_sidecars_own_variables(tmp_path: Path) -> None:
    config = write_config(tmp_path, config_text().replace("SHA: after", "WEBHOOK_EVENT: after"))
    result = cli_text("check", "--config", str(config), env={"WEBHOOK_SECRET": "s"})
    assert result.returncode != 0
    assert "names starting with WEBHOOK_ are the sidecar's own" in result.stdout + result.stderr
