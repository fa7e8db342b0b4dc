"""Hooks cannot signal or trace their sidecar: Landlock's scopes (ABI 6+) refuse `kill -STOP $PPID` and
abstract unix sockets outside the domain, and root hooks run with no capabilities (an empty bounding set:
nothing regained on exec), so /proc/<sidecar>/environ and root-owned files stay closed."""

from __future__ import annotations

import json
import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecar import landlock, sandbox

from .conftest import SCRIPTS, SECRET, Sidecar, wait_for
from .support import outside_writable_dirs, table

pytestmark = pytest.mark.skipif(sandbox.abi() < 6, reason="Landlock ABI 6+ (signal scoping, Linux 6.12) needed")
ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="what root hooks lose needs a root sidecar; CI runs as root")


@pytest.fixture
def victim() -> Iterator[Path]:
    """A root-owned 0644 file outside every grant."""
    directory = outside_writable_dirs()
    directory.chmod(0o755)
    file = directory / "victim"
    file.write_text("untouched\n")
    file.chmod(0o644)
    yield file
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def abstract() -> Iterator[str]:
    """An abstract unix socket of a process outside the hooks' domain (as the sidecar's would be)."""
    name = f"webhook-sidecar-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX) as server:
        server.bind("\0" + name)
        server.listen()
        yield name


def start(tmp_path: Path, sidecars, victim: Path, abstract: str) -> Sidecar:
    env = {"VICTIM": str(victim), "ABSTRACT": abstract}
    (tmp_path / "config.yaml").write_text(table(f"""
        - event: "*"
          name: attack
          run: {SCRIPTS}/sandbox_signals.sh
          env: {json.dumps(env)}
    """))
    return sidecars(tmp_path / "config.yaml", env={"SIDECAR_SANDBOX": "on"})


def attack(sidecar: Sidecar, delivery: str) -> dict[str, str]:
    assert sidecar.deliver(b"{}", delivery=delivery).status == 200
    try:
        line = sidecar.wait_log(lambda e: e.get("msg") == "hook.finished" and e.get("delivery") == delivery, 15)
    finally:
        if sidecar.proc.poll() is None:
            os.kill(sidecar.proc.pid, 18)  # SIGCONT: a stopped sidecar would hang the rest of the suite
    return dict(row.split(" ", 1) for row in line["output_tail"].splitlines() if " " in row)


def state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def test_a_hook_cannot_stop_or_kill_its_sidecar_nor_reach_its_sockets(tmp_path: Path, sidecars, victim: Path,
                                                                      abstract: str) -> None:
    sidecar = start(tmp_path, sidecars, victim, abstract)
    line = sidecar.wait_log(lambda e: e.get("msg") == "hooks.sandboxed")
    assert line["scoped"] == ["signal", "abstract_unix_socket"]
    got = attack(sidecar, "first")
    assert got["stop_parent"] == "denied" and got["kill_parent"] == "denied", got
    assert got["abstract_socket"] == "denied", got
    assert got["threads_reachable"] == "0", got  # nor through a thread's id: not the one that spawned it
    assert state(sidecar.proc.pid) in ("S", "R") and sidecar.proc.poll() is None
    assert sidecar.request("GET", "/healthz").status == 200
    assert attack(sidecar, "second")["stop_parent"] == "denied"  # and it still runs hooks


@ROOT_ONLY
def test_root_hooks_have_no_capabilities_nor_the_sidecars_environ(tmp_path: Path, sidecars, victim: Path,
                                                                  abstract: str) -> None:
    sidecar = start(tmp_path, sidecars, victim, abstract)
    line = sidecar.wait_log(lambda e: e.get("msg") == "hooks.sandboxed")
    assert line["capabilities"] == "all capabilities dropped, bounding set emptied"
    # The control: the sidecar itself is root with capabilities, and its environment holds a secret.
    assert landlock.capabilities(sidecar.proc.pid)["CapEff"] != 0
    assert SECRET.encode() in Path(f"/proc/{sidecar.proc.pid}/environ").read_bytes()
    got = attack(sidecar, "root")
    assert got["read_environ"] == "denied", got
    assert got["write_root_file"] == "denied" and victim.read_text() == "untouched\n", got
    for cap in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(got[cap], 16) == 0, (cap, got)
    # Only the spawning thread dropped them: the sidecar keeps its own.
    wait_for(lambda: landlock.capabilities(sidecar.proc.pid)["CapEff"] != 0)
