"""The hook fork server (sidecar/forkserver.py, native/forkserver.c): hooks start through it when it is
built, with the same environment, descriptors, sandbox and end as through subprocess; a fork server that
is killed costs no run and is started again; SIDECAR_FORKSERVER=off starts hooks through subprocess.

The rest of the suite runs its sidecars with the fork server (make test builds it first); the tests that
call runner.run directly cover the subprocess path."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecar import forkserver, landlock, runner, sandbox

from .conftest import wait_for, write_config
from .support import alive, table

BINARY = forkserver.find()
pytestmark = pytest.mark.skipif(BINARY is None, reason="the fork server is not built (make native needs a C compiler)")
ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}

PARENT = table("""
    - event: "*"
      run: ["/bin/sh", "-c", "cat > /dev/null; grep -E '^(PPid|CapEff|NoNewPrivs)' /proc/$$/status"]
""")


def status(line: dict[str, object]) -> dict[str, str]:
    tail = str(line["output_tail"])
    return dict((k, v.strip()) for k, _, v in (row.partition(":") for row in tail.splitlines()))


def test_a_hook_is_the_fork_servers_child_and_sandboxed_there(tmp_path: Path, sidecars) -> None:
    sidecar = sidecars(write_config(tmp_path, PARENT))
    on = sidecar.wait_log(lambda e: e.get("msg") == "hooks.forkserver")
    assert on["state"] == "on" and on["binary"] == BINARY, on
    assert sidecar.deliver(b"{}").status == 200
    got = status(sidecar.wait_log(lambda e: e.get("msg") == "hook.finished", timeout=10))
    assert int(got["PPid"]) == on["pid"] != sidecar.proc.pid
    if landlock.probe()[0] and os.geteuid() == 0:
        assert (got["CapEff"], got["NoNewPrivs"]) == ("0000000000000000", "1")


def test_off_starts_hooks_through_subprocess(tmp_path: Path, sidecars) -> None:
    sidecar = sidecars(write_config(tmp_path, PARENT), env={"SIDECAR_FORKSERVER": "off"})
    assert sidecar.wait_log(lambda e: e.get("msg") == "hooks.forkserver")["state"] == "off"
    assert sidecar.deliver(b"{}").status == 200
    got = status(sidecar.wait_log(lambda e: e.get("msg") == "hook.finished", timeout=10))
    assert int(got["PPid"]) == sidecar.proc.pid  # the subreaper sidecar itself (its spawning thread's group)


def test_a_killed_fork_server_costs_no_run_and_is_started_again(tmp_path: Path, sidecars) -> None:
    """kill -9 of the fork server while a hook runs: the hook (re-parented to the sidecar, its subreaper)
    finishes and is recorded as it ended; the next hook starts through a new fork server."""
    config = write_config(tmp_path, table("""
        - event: "*"
          run: {scripts}/hold.sh
          env: {{OUT: {out}}}
    """))
    out = tmp_path / "out"
    sidecar = sidecars(config)
    first = sidecar.wait_log(lambda e: e.get("msg") == "hooks.forkserver")["pid"]
    assert sidecar.deliver(b"{}", delivery="one").status == 200
    wait_for(lambda: (out / "one.started").exists(), timeout=10)
    os.kill(first, signal.SIGKILL)
    wait_for(lambda: not alive(first), timeout=5)
    (out / "release").touch()
    done = sidecar.wait_log(lambda e: e.get("msg") == "hook.finished" and e.get("delivery") == "one", timeout=15)
    assert done["outcome"] == "ok" and done["state"] == "done", done
    assert sidecar.deliver(b"{}", delivery="two").status == 200
    again = sidecar.wait_log(lambda e: e.get("msg") == "hook.finished" and e.get("delivery") == "two", timeout=15)
    assert again["outcome"] == "ok", again
    restarted = sidecar.wait_log(lambda e: e.get("msg") == "hooks.forkserver_restarted")
    assert restarted["pid"] != first and alive(restarted["pid"])


def test_spawns_as_subprocess_does(tmp_path: Path) -> None:
    """Through runner.run: stdin, PATH lookup in the hook's own PATH, cwd, exit status, errors, no
    inherited descriptor, SIGPIPE at its default, and a signal's end."""
    assert BINARY is not None
    server = forkserver.ForkServer(BINARY)
    server.start()
    via = sandbox.Ruled(None, None, server)
    leaky = os.open("/dev/null", os.O_RDONLY)
    os.set_inheritable(leaky, True)
    try:
        ran = runner.run(["sh", "-c", f"cat; pwd; [ -e /proc/$$/fd/{leaky} ] && echo leaked; grep SigIgn "
                                      "/proc/$$/status; exit 3"], b"payload\n", ENV, 5, cwd=str(tmp_path), sandbox=via)
        assert ran.exit_code == 3 and ran.output_tail.startswith(f"payload\n{tmp_path}\n"), ran
        assert "leaked" not in ran.output_tail and not int(ran.output_tail.split()[-1], 16) & (1 << 12)
        gone = runner.run([str(tmp_path / "nope")], b"", ENV, 5, sandbox=via)
        assert gone.error == "cannot start: No such file or directory" and not gone.transient
        nowhere = runner.run(["/bin/true"], b"", ENV, 5, cwd=str(tmp_path / "gone"), sandbox=via)
        assert nowhere.error == "cannot start: No such file or directory"
        killed = runner.run(["/bin/sh", "-c", "kill -TERM $$"], b"", ENV, 5, sandbox=via)
        assert killed.signal == signal.SIGTERM and killed.exit_code is None
        replied = runner.run(["/bin/sh", "-c", "echo out; echo err >&2"], b"", ENV, 5, sandbox=via, reply_bytes=10)
        assert (replied.stdout, replied.output_tail) == (b"out\n", "err\n")
        with pytest.raises(ValueError):
            server.spawn(["/bin/true"], 0, 1, {"A": "x\0y"}, None)
    finally:
        os.close(leaky)
        server.close()
    assert server.proc is not None and server.proc.returncode == 0  # ends when its control socket closes


def test_sandboxed_spawn_enters_the_policy_and_a_denied_exec_rebuilds(tmp_path: Path, state: Path) -> None:
    if not landlock.probe()[0]:
        pytest.skip("no Landlock in this kernel")
    assert BINARY is not None
    secret = state / "secret.txt"
    secret.write_text("s3cret")
    box = sandbox.create([str(secret)], state)
    assert box.active, box.reason
    server = forkserver.ForkServer(BINARY)
    server.start()
    try:
        boxed = sandbox.Ruled(box, ((), ()), server)
        denied = runner.run(["/bin/cat", str(secret)], b"", ENV, 5, sandbox=boxed)
        assert not denied.ok and "Permission denied" in denied.output_tail
        free = runner.run(["/bin/cat", str(secret)], b"", ENV, 5, sandbox=sandbox.Ruled(None, None, server))
        assert free.output_tail == "s3cret"
        # A hook may signal neither the fork server nor another hook's domain (Landlock scopes, ABI 6+).
        if landlock.scopes(box.level):
            poke = runner.run(["/bin/sh", "-c", f"kill -0 {server.proc.pid if server.proc else 0} || echo refused"],
                              b"", ENV, 5, sandbox=boxed)
            assert "refused" in poke.output_tail, poke
    finally:
        server.close()


@pytest.fixture
def state() -> Iterator[Path]:
    """A state directory outside /tmp (the default sandbox grants /tmp only while no state lies beneath)."""
    path = Path(tempfile.mkdtemp(prefix="fs-state-", dir="/var/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_a_request_it_cannot_parse_is_refused_not_run() -> None:
    assert BINARY is not None
    server = forkserver.ForkServer(BINARY)
    server.start()
    try:
        _, conn = server._connection()
        conn.sendmsg([b"nonsense"], [])
        kind, pid, err = forkserver.ANSWER.unpack(conn.recv(forkserver.ANSWER.size))
        assert (kind, pid) == (forkserver.STARTED, 0) and err > 0
        assert runner.run(["/bin/echo", "still"], b"", ENV, 5,
                          sandbox=sandbox.Ruled(None, None, server)).output_tail == "still\n"
    finally:
        server.close()
