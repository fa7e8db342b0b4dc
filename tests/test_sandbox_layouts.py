"""The quick start as a new user runs it (`make run` in a clone: config.yaml, hooks/, .env and .spool side by
side) under /tmp and under a home directory: a hostile hook cannot open .env or the spool, nor change the
config directory, while mktemp, git, curl and python work; the example hooks run under the default sandbox."""

from __future__ import annotations

import http.server
import json
import os
import shutil
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecar import sandbox

from .conftest import ROOT, SCRIPTS, SECRET, Sidecar, wait_for
from .support import outside_writable_dirs, table

pytestmark = pytest.mark.skipif(sandbox.abi() == 0, reason="the kernel has no Landlock (or it is disabled)")

HOSTILE = {"read_env", "list_spool", "read_spool", "write_config", "add_to_config", "write_hook"}
ORDINARY = {"read_config", "home", "mktemp", "git", "curl", "python"}


@pytest.fixture
def web() -> Iterator[int]:
    """A local HTTP server hooks call with curl (the network stays open)."""

    class Ok(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Ok)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def make_clone(parent: Path, port: int, user_home: Path | None = None) -> Path:
    """A checkout as `make run` serves it: the example config.yaml and hooks, a .env, plus a probing route."""
    repo = parent / "webhook-sidecar"
    repo.mkdir(parents=True)
    shutil.copytree(ROOT / "hooks", repo / "hooks")
    shutil.copy(SCRIPTS / "sandbox_probe.sh", repo / "hooks" / "probe.sh")
    (repo / ".env").write_text(f"WEBHOOK_SECRET={SECRET}\n")
    env = {"ENV_FILE": repo / ".env", "SPOOL_DIR": repo / ".spool", "CONFIG_DIR": repo, "PORT": port}
    if user_home is not None:
        env["USER_HOME"] = user_home
    example = (ROOT / "config.yaml").read_text()
    (repo / "config.yaml").write_text(example + f"""\
      - event: "*"
        name: probe
        run: hooks/probe.sh
        env: {json.dumps({k: str(v) for k, v in env.items()})}
""")
    return repo


def results(sidecar: Sidecar) -> dict[str, str]:
    line = sidecar.wait_log(lambda e: e.get("msg") == "hook.finished" and e.get("route") == "probe", timeout=30)
    assert line["outcome"] == "ok", line
    return dict(row.split(" ", 1) for row in line["output_tail"].splitlines() if " " in row)


def run_quick_start(sidecars, repo: Path, home: Path) -> tuple[Sidecar, dict[str, str]]:
    sidecar = sidecars(repo / "config.yaml", "--env-file", str(repo / ".env"),
                       env={"HOME": str(home), "SIDECAR_SANDBOX": "on", "WEBHOOK_SECRET": ""})
    body = json.dumps({"ref": "refs/heads/main"}).encode()
    assert sidecar.deliver(body, event="push").status == 200
    got = results(sidecar)
    wait_for(lambda: len(sidecar.find_logs("hook.finished")) == 3, timeout=15)
    outcomes = {e["route"]: e["outcome"] for e in sidecar.find_logs("hook.finished")}
    assert outcomes == {"on_push": "ok", "log_event": "ok", "probe": "ok"}, outcomes  # the examples work as shipped
    return sidecar, got


def assert_private_home(sidecar: Sidecar, state: list[Path]) -> None:
    """HOME and TMPDIR: a 0700 directory of the sidecar's, outside its state, gone after a clean stop."""
    private = Path(sidecar.wait_log(lambda e: e.get("msg") == "hooks.sandboxed")["home"])
    assert stat.S_IMODE(private.stat().st_mode) == 0o700
    assert not any(private.resolve().is_relative_to(s.resolve()) for s in state)
    assert sidecar.stop() == 0
    assert not private.exists()


def test_quick_start_under_tmp(tmp_path: Path, sidecars, web: int) -> None:
    """The clone under /tmp: /tmp is not granted (it would open the clone), hooks write their own $TMPDIR."""
    repo = make_clone(tmp_path, web)
    sidecar, got = run_quick_start(sidecars, repo, tmp_path)
    assert {k for k, v in got.items() if v == "ok"} == ORDINARY, got
    assert {k for k, v in got.items() if v == "denied"} == HOSTILE | {"write_tmp"}, got
    narrowed = sidecar.find_logs("hooks.narrowed")
    assert [e["path"] for e in narrowed] == ["/tmp"] and str(repo) in narrowed[0]["reason"], narrowed
    assert not sidecar.find_logs("hooks.state_exposed")
    assert "# x" not in (repo / "config.yaml").read_text() and not (repo / "added").exists()
    assert_private_home(sidecar, [repo])


def test_quick_start_under_a_home_directory(sidecars, web: int) -> None:
    """The clone under ~/src with HOME set to that home: the user's home is no longer writable by hooks."""
    home = outside_writable_dirs()  # stands in for /home/user: outside /tmp and /var/tmp
    try:
        repo = make_clone(home / "src", web, user_home=home)
        sidecar, got = run_quick_start(sidecars, repo, home)
        assert {k for k, v in got.items() if v == "ok"} == ORDINARY | {"write_tmp"}, got
        assert {k for k, v in got.items() if v == "denied"} == HOSTILE | {"write_user_home"}, got
        assert not sidecar.find_logs("hooks.narrowed") and not sidecar.find_logs("hooks.state_exposed")
        assert not (home / ".probe").exists()
        assert_private_home(sidecar, [repo, home])
    finally:
        shutil.rmtree(home, ignore_errors=True)


def test_a_private_home_is_given_without_landlock_too(tmp_path: Path, sidecars) -> None:
    """--sandbox off: nothing is enforced, but HOME and TMPDIR are still the hooks' own."""
    (tmp_path / "config.yaml").write_text(table("""
        - event: "*"
          run: [/bin/sh, -c, 'echo "$HOME $TMPDIR"; test -w "$HOME" && test -w "$TMPDIR"']
    """))
    sidecar = sidecars(tmp_path / "config.yaml", env={"SIDECAR_SANDBOX": "off", "HOME": str(tmp_path)})
    assert sidecar.deliver(b"{}").status == 200
    line = sidecar.wait_log(lambda e: e.get("msg") == "hook.finished", timeout=10)
    home, tmpdir = line["output_tail"].split()
    assert line["outcome"] == "ok" and Path(home).parent == Path(tmpdir).parent and home != str(tmp_path)
    assert os.stat(Path(home).parent).st_mode & 0o777 == 0o700
