"""config.yaml text -> Config, or the exact errors with file, line and key."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from sidecar import config
from sidecar.errors import ConfigError

from .conftest import SCRIPTS

ENV = {"WEBHOOK_SECRET": "s3cret", "OTHER_SECRET": "other"}


def load(tmp_path: Path, text: str, environ: dict[str, str] | None = None, env_file: Path | None = None):
    path = tmp_path / "config.yaml"
    path.write_text(textwrap.dedent(text).format(scripts=SCRIPTS))
    return config.load(path, env_file, ENV if environ is None else environ)


def errors(tmp_path: Path, text: str, **kwargs) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text, **kwargs)
    prefix = f"{tmp_path / 'config.yaml'}:"
    assert all(e.startswith(prefix) for e in info.value.errors)
    return [e[len(prefix):] for e in info.value.errors]


def test_example_config_of_the_repository_is_valid() -> None:
    root = Path(__file__).resolve().parent.parent
    cfg = config.load(root / "config.yaml", None, {"WEBHOOK_SECRET": "x"})
    ep = cfg.endpoints["/webhook"]
    assert [r.name for r in ep.routes] == ["on_push", "log_event"]
    assert ep.routes[0].when == (("ref", "refs/heads/main"),)
    assert ep.routes[0].argv == (str(root / "hooks" / "on_push.sh"),)
    assert ep.routes[0].timeout_s == 300 and ep.routes[0].env == (("APP", "web"),)
    assert cfg.spool_dir == root / ".spool"


def test_full_route(tmp_path: Path) -> None:
    cfg = load(tmp_path, """
        listen: 127.0.0.1:9000
        endpoints:
          - path: /gh
            provider: github
            secret_env: [WEBHOOK_SECRET, OTHER_SECRET]
            allow_sha1: true
            routes:
              - event: push
                name: deploy
                run: [{scripts}/record.sh, --flag, 3]
                timeout_s: 2.5
                concurrency: 1
                retries: 0
                env: {{A: b, N: 5}}
    """)
    ep = cfg.endpoints["/gh"]
    assert ep.secrets == (b"s3cret", b"other")
    assert ep.provider.opts == {"allow_sha1": True}
    route = ep.routes[0]
    assert route.argv == (str(SCRIPTS / "record.sh"), "--flag", "3")
    assert (route.timeout_s, route.concurrency, route.retries) == (2.5, 1, 0)
    assert route.env == (("A", "b"), ("N", "5"))
    assert "s3cret" not in repr(cfg)


GH_NO_ROUTES = """
    endpoints:
      - path: /gh
        provider: github
        secret_env: WEBHOOK_SECRET
        routes: []
"""


def test_secret_from_env_file_and_environment_wins(tmp_path: Path) -> None:
    env_file = tmp_path / "dev.env"
    env_file.write_text("WEBHOOK_SECRET=from-file\n")
    text = GH_NO_ROUTES
    assert load(tmp_path, text, environ={}, env_file=env_file).endpoints["/gh"].secrets == (b"from-file",)
    assert load(tmp_path, text, environ={"WEBHOOK_SECRET": "real"}, env_file=env_file).endpoints["/gh"].secrets == (
        b"real",)


def test_digest_changes_with_the_secret(tmp_path: Path) -> None:
    text = GH_NO_ROUTES
    a = load(tmp_path, text, environ={"WEBHOOK_SECRET": "a"}).digest
    assert a == load(tmp_path, text, environ={"WEBHOOK_SECRET": "a"}).digest
    assert a != load(tmp_path, text, environ={"WEBHOOK_SECRET": "b"}).digest


@pytest.mark.parametrize(("text", "expected"), [
    ("endpoints: [\n", ["2: (yaml): column 1: the file ends where a value was expected (an unclosed '[' or '{',"
                        " or a key with nothing after it)"
                        " (YAML: expected the node content, but found '<stream end>')"]),
    ("endpoints:\n\t- path: /x\n", ["2: (yaml): column 1: a tab: YAML is indented with spaces only"
                                     " (YAML: found character '\\t' that cannot start any token)"]),
    ("a: b: c\n", ["1: (yaml): column 5: a ': ' where a value was expected: quote a value that holds ': ',"
                   " or check the indentation of this key (YAML: mapping values are not allowed here)"]),
    ("- a\n- b\n", ["1: (top level): the file must be a mapping with an 'endpoints' list, got a list"]),
    ("listen: 8080\nendpoints: []\n", [
        "1: listen: must be a string, got int 8080", "2: endpoints: needs at least one endpoint"]),
    ("lisen: x:1\nendpoints: []\n", [
        f"1: lisen: unknown key (expected one of: {', '.join(sorted(config.TOP_KEYS))})",
        "2: endpoints: needs at least one endpoint"]),
    ("max_body_bytes: 0\nendpoints: []\n", [
        "1: max_body_bytes: must be at least 1, got 0", "2: endpoints: needs at least one endpoint"]),
])
def test_top_level_errors(tmp_path: Path, text: str, expected: list[str]) -> None:
    assert errors(tmp_path, text) == expected


def test_every_error_is_reported_with_its_line(tmp_path: Path) -> None:
    found = errors(tmp_path, """
        endpoints:
          - path: webhook
            provider: gitgud
            routes:
              - event: push
                run: hooks/missing.sh
              - event: on
                run: {scripts}/record.sh
                timeout_s: -1
                env: {{WEBHOOK_EVENT: x}}
          - path: /two
            provider: github
            secret_env: [WEBHOOK_SECRET, NOPE_SECRET]
            routes:
              - event: push
                run: {scripts}/record.sh
                if: {{"a..b": 1}}
                colour: blue
    """)
    assert found[1].startswith("4: endpoints[0].provider: unknown provider 'gitgud' (known: ")
    assert "github, " in found[1] and "none" in found[1]
    assert found == [
        "3: endpoints[0].path: must start with '/' and hold no query or spaces, got 'webhook'",
        found[1],
        f"7: endpoints[0].routes[0].run: no such file: {tmp_path / 'hooks' / 'missing.sh'}",
        "8: endpoints[0].routes[1].event: must be a string or a list, got boolean True"
        " (quote it if you meant a string)",
        "10: endpoints[0].routes[1].timeout_s: must be at least 0.001, got -1.0",
        "11: endpoints[0].routes[1].env.WEBHOOK_EVENT: must be a variable name not starting with WEBHOOK_",
        "14: endpoints[1].secret_env[1]: secret NOPE_SECRET is not set in the environment or the env file",
        "18: endpoints[1].routes[0].if.a..b: must be a dotted payload path such as 'repository.full_name'",
        "19: endpoints[1].routes[0].colour: unknown key (expected one of: any, broadcast, concurrency, env, env_from,"
        " event, forward, if, lane, name, reply, retries, run, sandbox, timeout_s)",
    ]


def test_duplicate_keys_and_paths_are_errors(tmp_path: Path) -> None:
    found = errors(tmp_path, """
        endpoints:
          - path: /a
            provider: none
            routes: []
            routes: []
          - path: /a
            provider: none
            routes: []
    """)
    assert found == ["6: endpoints[0].routes: duplicate key", "7: endpoints[1].path: duplicate path '/a'"]


def test_missing_secret_env_and_not_executable(tmp_path: Path) -> None:
    script = tmp_path / "plain.sh"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o644)
    found = errors(tmp_path, """
        endpoints:
          - path: /a
            provider: github
            routes:
              - event: push
                run: plain.sh
              - event: push
                run: ./plain.sh --now
              - event: push
                run: no-such-command-anywhere
    """)
    assert found == [
        "3: endpoints[0]: missing required key 'secret_env' (provider 'github' verifies signatures)",
        "7: endpoints[0].routes[0].run: command not found on PATH: 'plain.sh' (scripts need a path such as hooks/x.sh)",
        f"9: endpoints[0].routes[1].run: no such file: {tmp_path / 'plain.sh --now'} "
        "(to pass arguments, write run as a list)",
        "11: endpoints[0].routes[2].run: command not found on PATH: 'no-such-command-anywhere' "
        "(scripts need a path such as hooks/x.sh)",
    ]
    found = errors(tmp_path, """
        endpoints:
          - path: /a
            provider: none
            routes:
              - event: push
                run: ./plain.sh
    """)
    assert found == [f"7: endpoints[0].routes[0].run: not executable: {script} (chmod +x it)"]


def test_route_names_default_to_the_script_and_stay_unique(tmp_path: Path) -> None:
    cfg = load(tmp_path, """
        endpoints:
          - path: /a
            provider: none
            routes:
              - {{event: push, run: {scripts}/record.sh}}
              - {{event: tag, run: {scripts}/record.sh}}
              - {{event: x, run: [echo, hi], name: shout}}
    """)
    assert [r.name for r in cfg.endpoints["/a"].routes] == ["record", "record-1", "shout"]
    found = errors(tmp_path, """
        endpoints:
          - path: /a
            provider: none
            routes:
              - {{event: push, run: [echo], name: same}}
              - {{event: tag, run: [echo], name: same}}
    """)
    assert found == ["7: endpoints[0].routes[1].name: duplicate route name 'same'"]


def test_reserved_paths(tmp_path: Path) -> None:
    assert errors(tmp_path, """
        endpoints:
          - {{path: /healthz, provider: none, routes: []}}
    """) == ["3: endpoints[0].path: /healthz is reserved for health and metrics"]
