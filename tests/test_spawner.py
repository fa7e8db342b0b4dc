"""The hook spawner process (spawner.py, spawner_main.py): a real sidecar's hooks start there; a killed
spawner is restarted, and its runs' processes are gone before their jobs run again; routes keep their
sandbox policies there; a cancel ends a run; the spawner holds no secret and is closed to hooks."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from sidecar import runner, sandbox, spawner

from .conftest import wait_for, write_config
from .support import alive, outside_writable_dirs, table
from .test_isolation import ESCAPE, finished, read_pid


def test_a_killed_spawner_is_restarted_and_its_run_ends_before_the_job_runs_again(tmp_path: Path, sidecars) -> None:
    """concurrency: 1 across a kill -9 of the spawner (and of its watchdog, so the restart alone ends
    the old run): the retry starts only once the old hook and its setsid'd child are gone."""
    config = write_config(tmp_path, "retry_backoff_s: 0.1\n" + ESCAPE.replace("{timeout}", "60")
                          .replace("{sleep}", "3").replace("retries: 0", "retries: 1"))
    out = tmp_path / "out"
    sidecar = sidecars(config, env={"SIDECAR_SPAWNER": "on"})  # opt-in
    first = sidecar.wait_log(lambda e: e.get("msg") == "hooks.spawner")["pid"]
    assert sidecar.deliver(b"{}", delivery="spawned").status == 200
    old_hook, old_escaped = read_pid(out / "hook.pid"), read_pid(out / "escaped.pid")
    (out / "hook.pid").unlink()
    os.kill(sidecar.wait_log(lambda e: e.get("msg") == "hooks.watchdog")["pid"], signal.SIGKILL)
    os.kill(first, signal.SIGKILL)
    died = sidecar.wait_log(lambda e: e.get("msg") == "hooks.spawner_died")
    assert died["pid"] == first
    again = sidecar.wait_log(lambda e: e.get("msg") == "hooks.spawner" and e.get("restarted"))
    assert again["pid"] != first
    killed = sidecar.wait_log(lambda e: e.get("msg") == "hook.leftovers_killed")
    assert {old_hook, old_escaped} <= set(killed["pids"]) and killed["delivery"] == "spawned"
    lines = finished(sidecar, 2)
    assert (lines[0]["outcome"], lines[0]["error"]) == ("error", spawner.DIED)
    assert lines[1]["outcome"] == "ok" and lines[1]["attempt"] == 2
    assert not alive(old_hook) and not alive(old_escaped)
    # The old run would have written its end 3 s after its start, inside the re-run: it never did.
    marks = [kind for kind, _ in (m.split() for m in (out / "marks").read_text().splitlines())]
    assert marks == ["start", "start", "end"], marks


def test_the_spawner_holds_no_secret_and_is_closed_to_hooks(tmp_path: Path, sidecars) -> None:
    config = write_config(tmp_path, table("""
        - event: "*"
          run: [/bin/sh, -c, 'cat /proc/$PPID/environ; echo "rc=$?"']
    """))
    sidecar = sidecars(config, env={"SIDECAR_SPAWNER": "on"})  # opt-in
    pid = sidecar.wait_log(lambda e: e.get("msg") == "hooks.spawner")["pid"]
    with open(f"/proc/{pid}/environ", "rb") as f:
        assert f.read() == b""  # nothing of the sidecar's environment: no secret, no database URL
    assert sidecar.deliver(b'{"payload": "never on a command line"}', delivery="peek").status == 200
    line = finished(sidecar)[0]
    # Not dumpable, and the hook has no capability to read it anyway (the payloads it holds stay its own).
    tail = str(line["output_tail"])
    assert "Permission denied" in tail and "rc=1" in tail, line


def test_routes_keep_their_sandbox_policy_in_the_spawner(tmp_path: Path) -> None:
    if sandbox.abi() == 0:
        pytest.skip("the kernel has no Landlock (or it is disabled)")
    state = outside_writable_dirs()
    try:
        secret = state / "secret.txt"
        secret.write_text("s3cret")
        helper = spawner.start({"run_dir": str(tmp_path / "runs"), "key": str(tmp_path / "k"), "private": "",
                                "sandbox": {"hidden": [str(secret)], "config_dir": str(state), "enabled": True,
                                            "private": ""}})
        assert helper is not None
        try:
            def run(grants: tuple[tuple[str, ...], tuple[str, ...]] | None, script: str) -> runner.Result:
                req = runner.Request(("/bin/sh", "-c", script), {"A": "1"}, 5, None, 5, grants,
                                      "r", "d", reply_bytes=64)
                return helper.launch(req, b"payload", None)

            denied = run(((), ()), f"cat; echo $A; cat {secret}")
            assert denied.stdout == b"payload1\n" and "Permission denied" in denied.output_tail and not denied.ok
            assert run(None, f"cat {secret}").stdout == b"s3cret"  # sandbox: false
            assert not run(((), ()), f"echo x > {state}/f").ok
            assert run(((), (str(state),)), f"echo x > {state}/f && echo wrote").stdout == b"wrote\n"  # widened
        finally:
            helper.close()
        assert helper.proc is not None and helper.proc.returncode == 0
        assert not list((tmp_path / "runs").iterdir())  # a clean close leaves no journal
    finally:
        import shutil

        shutil.rmtree(state, ignore_errors=True)


def test_a_cancel_ends_a_run_in_the_spawner(tmp_path: Path) -> None:
    helper = spawner.start({"run_dir": None, "key": str(tmp_path / "k"), "private": "", "sandbox": None})
    assert helper is not None
    try:
        cancel = threading.Event()
        pid_file = tmp_path / "pid"
        req = runner.Request(("/bin/sh", "-c", f"echo $$ > {pid_file}; exec sleep 30"), {}, 30,
                              None, 0.5, None, "r", "d")
        threading.Timer(0.5, cancel.set).start()
        start = time.monotonic()
        result = helper.launch(req, b"", cancel)
        assert result.cancelled and result.signal == signal.SIGTERM and time.monotonic() - start < 3, result
        assert not alive(int(wait_for(lambda: pid_file.read_text().strip())))
        quick = helper.launch(runner.Request(("/bin/echo", "next"), {}, 5, None, 5, None, "r", "d"), b"", None)
        assert quick.output_tail == "next\n"  # the connection goes on after a cancel
    finally:
        helper.close()
