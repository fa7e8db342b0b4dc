"""Hooks as real processes: stdin, environment, exit codes, timeouts that kill the whole group."""

from __future__ import annotations

import json
import os
import re
import socket
import sys
import time
import uuid
from pathlib import Path

import pytest

from sidecar import runner, watch
from sidecar.config import Route
from sidecar.launcher import Launcher

from .conftest import SCRIPTS, Sidecar, wait_for, write_config
from .support import alive, job, table

PLAIN_ENV = {"PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin")}  # what a hook needs to find `sh`


def test_stdin_is_byte_identical_and_large_payloads_pass(tmp_path: Path) -> None:
    payload = os.urandom(3 * 1024 * 1024)  # more than any pipe buffer, binary
    env = {**PLAIN_ENV, "OUT": str(tmp_path), "WEBHOOK_DELIVERY": "d", "WEBHOOK_ROUTE": "r"}
    result = runner.run([str(SCRIPTS / "record.sh")], payload, env, timeout_s=20)
    assert result.ok, result
    assert (tmp_path / "d.r.body").read_bytes() == payload


def test_exit_code_and_output_tail() -> None:
    result = runner.run([str(SCRIPTS / "exit3.sh")], b"", PLAIN_ENV, timeout_s=5)
    assert (result.exit_code, result.timed_out, result.ok) == (3, False, False)
    assert result.output_tail == "going to fail\n"
    noisy = runner.run([str(SCRIPTS / "noisy.sh")], b"x" * 100, PLAIN_ENV, timeout_s=10)
    assert noisy.ok
    assert len(noisy.output_tail.encode()) == watch.TAIL_BYTES
    assert noisy.output_tail.endswith("line 1999 of noise\nTHE-END\n")


def test_script_that_does_not_read_stdin_still_succeeds() -> None:
    result = runner.run(["/bin/sh", "-c", "echo done"], b"x" * 2_000_000, PLAIN_ENV, timeout_s=5)
    assert result.ok and result.output_tail == "done\n"


def test_missing_program_is_an_error_not_an_exception(tmp_path: Path) -> None:
    result = runner.run([str(tmp_path / "gone.sh")], b"", PLAIN_ENV, timeout_s=5)
    assert not result.ok and result.exit_code is None and "cannot start" in result.error


def test_timeout_kills_a_group_that_ignores_sigterm(tmp_path: Path) -> None:
    start = time.monotonic()
    result = runner.run([str(SCRIPTS / "stubborn.sh")], b"", {**PLAIN_ENV, "OUT": str(tmp_path)},
                        timeout_s=0.5, kill_grace_s=0.5)
    elapsed = time.monotonic() - start
    assert result.timed_out and not result.ok and result.exit_code is None
    assert elapsed < 3
    for name in ("parent.pid", "child.pid"):
        pid = int((tmp_path / name).read_text())
        wait_for(lambda pid=pid: not alive(pid), timeout=2)


def test_background_child_does_not_hold_the_run(tmp_path: Path) -> None:
    start = time.monotonic()
    result = runner.run(["/bin/sh", "-c", "sleep 5 & echo started"], b"", PLAIN_ENV, timeout_s=10)
    assert result.ok and result.output_tail == "started\n"
    assert time.monotonic() - start < 2


def test_hook_env_holds_only_the_allowed_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {"PATH": "/bin", "HOME": "/h", "LANG": "C", "WEBHOOK_SECRET": "x",
                        "AWS_SECRET_ACCESS_KEY": "y"}.items():
        monkeypatch.setenv(name, value)
    route = Route(name="r", event="*", when=(), argv=("/bin/true",), env=(("A", "1"),))
    env = Launcher().env(job(route))
    assert {k: v for k, v in env.items() if not k.startswith("WEBHOOK_")} == {"PATH": "/bin", "HOME": "/h",
                                                                           "LANG": "C", "A": "1"}
    assert "WEBHOOK_SECRET" not in env and env["WEBHOOK_ROUTE"] == "r"
    private = Launcher(private={"HOME": "/hooks", "TMPDIR": "/hooks/tmp"}).env(job(route))
    assert (private["HOME"], private["TMPDIR"]) == ("/hooks", "/hooks/tmp")


def test_hook_gets_exactly_the_documented_environment(basic: tuple[Sidecar, Path]) -> None:
    sidecar, out = basic
    delivery = str(uuid.uuid4())
    body = json.dumps({"ref": "refs/heads/main"}).encode()
    resp = sidecar.deliver(body, delivery=delivery, extra={"X-Request-Id": "req-1"})
    assert resp.status == 200
    env_file = out / f"{delivery}.main_push.env"
    wait_for((out / f"{delivery}.main_push.body").exists)  # record.sh renames it into place after `env`
    env = dict(line.split("=", 1) for line in env_file.read_text().splitlines() if "=" in line)
    env.pop("PWD", None)  # the shell sets these itself
    env.pop("SHLVL", None)
    env.pop("_", None)
    # The run's marker, by which the sidecar finds the run's processes (procs.py): unique per run.
    assert re.fullmatch(r"[0-9a-f]{10}\.\d+-\d+\.\d+", env.pop("WEBHOOK_RUN_ID"))
    # PATH and LANG pass through as the sidecar has them (CI may not set them all); HOME and TMPDIR are the
    # hooks' own private directory (0700), never the sidecar's HOME.
    passed = {k: os.environ[k] for k in ("PATH", "LANG") if k in os.environ}
    passed.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    home, tmpdir = Path(env.pop("HOME")), Path(env.pop("TMPDIR"))
    assert home.parent == tmpdir.parent and home.parent.name.startswith("webhook-sidecar-hooks-")
    assert (home.name, tmpdir.name) == ("home", "tmp") and home.parent.stat().st_mode & 0o777 == 0o700
    assert env == {
        **passed,
        "OUT": str(out.resolve()), "WEBHOOK_EVENT": "push", "WEBHOOK_DELIVERY": delivery, "WEBHOOK_PROVIDER": "github",
        "WEBHOOK_ENDPOINT": "/webhook", "WEBHOOK_ROUTE": "main_push", "WEBHOOK_ATTEMPT": "1",
        "WEBHOOK_REQUEST_ID": "req-1", "WEBHOOK_REPLICA": os.environ.get("SIDECAR_REPLICA") or socket.gethostname(),
    }
    assert "It's a Secret" not in env_file.read_text()


def test_hooks_get_no_file_descriptor_but_stdin_stdout_and_stderr(tmp_path: Path, sidecars) -> None:
    """Not the spool's files, the listening socket, a watcher's inotify fd, nor what the sidecar inherited."""
    config = write_config(tmp_path, table(f"""
        - event: "*"
          run: [{sys.executable}, {{scripts}}/fds.py]
          env: {{{{OUT: {{out}}}}}}
    """))
    sidecar = sidecars(config)
    for i in range(3):  # several, so pipes of runs at the same time would show too
        assert sidecar.deliver(b"{}", delivery=f"fds-{i}").status == 200
    wait_for(lambda: len(sidecar.find_logs("hook.finished")) == 3, timeout=10)
    assert all(e["outcome"] == "ok" for e in sidecar.find_logs("hook.finished"))
    assert (tmp_path / "out" / "fds").read_text() == ""


def test_server_times_out_a_stubborn_hook_and_logs_it(tmp_path: Path, sidecars) -> None:
    """Through the server with the real 5 s SIGTERM->SIGKILL grace."""
    config = write_config(tmp_path, table("""
        - event: "*"
          run: {scripts}/stubborn.sh
          timeout_s: 0.5
          retries: 0
          env: {{OUT: {out}}}
        - event: "*"
          run: {scripts}/exit3.sh
    """))
    sidecar = sidecars(config)
    assert sidecar.deliver(b"{}", delivery="stuck").status == 200
    failed = sidecar.wait_log(lambda e: e.get("msg") == "hook.finished" and e.get("route") == "exit3")
    assert (failed["outcome"], failed["exit_code"], failed["level"]) == ("failed", 3, "error")
    assert failed["dead_letter"] is True and failed["state"] == "failed"
    assert failed["output_tail"] == "going to fail\n"
    line = sidecar.wait_log(lambda e: e.get("msg") == "hook.finished" and e.get("route") == "stubborn", timeout=10)
    assert line["outcome"] == "timeout" and line["delivery"] == "stuck"
    assert 5000 <= line["duration_ms"] < 8000
    for name in ("parent.pid", "child.pid"):
        assert not alive(int((tmp_path / "out" / name).read_text()))


def test_a_hook_starts_in_its_directory_without_moving_the_sidecar(tmp_path: Path) -> None:
    here = os.getcwd()
    for argv0 in ("/bin/sh", "sh"):  # a path, and a name looked up in PATH
        result = runner.run([argv0, "-c", "pwd"], b"", PLAIN_ENV, timeout_s=5, cwd=str(tmp_path),
                            tracker=None, sandbox=None)
        assert result.ok and result.output_tail == f"{tmp_path}\n", (argv0, result)
        assert os.getcwd() == here
    missing = runner.run(["/bin/true"], b"", PLAIN_ENV, timeout_s=5, cwd=str(tmp_path / "gone"),
                         tracker=None, sandbox=None)
    assert missing.error == "cannot start: No such file or directory" and os.getcwd() == here


def test_a_hook_gets_no_inherited_descriptor_and_no_ignored_signal(tmp_path: Path) -> None:
    """A descriptor a library opened without O_CLOEXEC stays out of the hook, and SIGPIPE
    (ignored by Python) is at its default there."""
    leaky = os.open("/dev/null", os.O_RDONLY)
    os.set_inheritable(leaky, True)
    try:
        script = f"ls /proc/self/fd >/dev/null; [ -e /proc/$$/fd/{leaky} ] && echo leaked; grep SigIgn /proc/$$/status"
        result = runner.run(["/bin/sh", "-c", script], b"", PLAIN_ENV, timeout_s=5, tracker=None,
                            sandbox=None)
        assert result.ok, result
        assert "leaked" not in result.output_tail
        ignored = int(result.output_tail.split()[-1], 16)
        assert not ignored & (1 << (13 - 1)), result.output_tail  # SIGPIPE is 13
    finally:
        os.close(leaky)
    gone = runner.run([str(tmp_path / "nope")], b"", PLAIN_ENV, timeout_s=5, tracker=None, sandbox=None)
    assert gone.error == "cannot start: No such file or directory" and not gone.transient


def test_reply_bytes_keeps_stdout_apart_from_the_tail() -> None:
    script = "cat; echo oops >&2"
    result = runner.run(["/bin/sh", "-c", script], b'{"ok":1}', PLAIN_ENV, timeout_s=5, reply_bytes=100)
    assert result.ok and result.stdout == b'{"ok":1}' and result.output_tail == "oops\n", result
    plain = runner.run(["/bin/sh", "-c", script], b"out", PLAIN_ENV, timeout_s=5)
    assert plain.stdout == b"" and plain.output_tail == "outoops\n"


def test_reply_bytes_keeps_one_byte_more_and_the_hook_never_blocks_on_stdout() -> None:
    # 1 MiB on stdout (more than a pipe holds): read to its end, only the first 11 bytes kept.
    result = runner.run(["/bin/sh", "-c", "head -c 1048576 /dev/zero; echo done >&2"], b"", PLAIN_ENV,
                        timeout_s=5, reply_bytes=10)
    assert result.ok and result.stdout == b"\0" * 11 and result.output_tail == "done\n", result
