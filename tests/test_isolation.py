"""Hook isolation as an operator sees it: nothing a run started outlives it (setsid included, kill -9
of the sidecar included), the sidecar's /proc is closed to hooks, secret files rotate without a restart.

Landlock itself is tested in test_sandbox.py.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from sidecar import journal, procs, proctree, runner
from sidecar.config import load
from sidecar.errors import ConfigError

from .conftest import ROOT, SECRET, Sidecar, wait_for, write_config
from .support import SecretVolume, alive, job, start_as, table


def start_tracked(tracker: procs.Tracker, argv: list[str], route: str | None = None,
                  delivery: str | None = None) -> procs.Hook:
    """A process started as the tracker starts a hook (marker, registration, journal), stdin and output
    /dev/null."""
    null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    try:
        return procs.start(argv, null, null, {}, None, tracker=tracker, route=route, delivery=delivery)
    finally:
        os.close(null)


def read_pid(path: Path) -> int:
    """A pid a hook wrote with `echo $$ > file` (created before it is written: wait for the digits)."""
    return int(wait_for(lambda: path.exists() and path.read_text().strip(), timeout=10))


def finished(sidecar: Sidecar, n: int = 1, timeout: float = 15) -> list[dict[str, object]]:
    wait_for(lambda: len(sidecar.find_logs("hook.finished")) >= n, timeout=timeout)
    return sidecar.find_logs("hook.finished")


ESCAPE = table("""
    - event: "*"
      run: {scripts}/escape.sh
      timeout_s: {timeout}
      retries: 0
      concurrency: 1
      env: {{OUT: {out}, SLEEP: "{sleep}"}}
""")


def test_a_setsid_child_that_outlives_the_timeout_is_gone_after_the_run(tmp_path: Path, sidecars) -> None:
    config = write_config(tmp_path, ESCAPE.replace("{timeout}", "0.5").replace("{sleep}", "300"))
    sidecar = sidecars(config)
    assert sidecar.deliver(b"{}", delivery="escapee").status == 200
    line = finished(sidecar)[0]
    assert line["outcome"] == "timeout"
    escaped = int((tmp_path / "out" / "escaped.pid").read_text())
    hook = int((tmp_path / "out" / "hook.pid").read_text())
    # Gone by the time the run is reported, not some time later.
    assert not alive(escaped) and not alive(hook)


def test_a_setsid_child_of_a_hook_that_succeeded_is_gone_too(tmp_path: Path, sidecars) -> None:
    """A later attempt or run of a concurrency: 1 route must not overlap what this one left running."""
    config = write_config(tmp_path, ESCAPE.replace("{timeout}", "30").replace("{sleep}", "0"))
    sidecar = sidecars(config)
    assert sidecar.deliver(b"{}", delivery="daemonizer").status == 200
    line = finished(sidecar)[0]
    assert line["outcome"] == "ok", line
    assert not alive(int((tmp_path / "out" / "escaped.pid").read_text()))


def test_kill_9_of_the_sidecar_then_restart_kills_the_old_run_before_the_rerun(tmp_path: Path, sidecars) -> None:
    """concurrency: 1 across a crash: the re-run never overlaps the old run or its setsid'd child."""
    config = write_config(tmp_path, ESCAPE.replace("{timeout}", "60").replace("{sleep}", "3"))
    out = tmp_path / "out"
    first = sidecars(config)
    assert first.deliver(b"{}", delivery="crash").status == 200
    old_hook, old_escaped = read_pid(out / "hook.pid"), read_pid(out / "escaped.pid")
    (out / "hook.pid").unlink()
    # Its watchdog first (test_watchdog.py: it would end them at once), as a kill of both would.
    os.kill(first.wait_log(lambda e: e.get("msg") == "hooks.watchdog")["pid"], signal.SIGKILL)
    first.proc.kill()
    first.proc.wait(10)
    assert alive(old_hook) and alive(old_escaped)  # what kill -9 of the sidecar and its watchdog leaves behind

    second = sidecars(config)
    killed = second.wait_log(lambda e: e.get("msg") == "hook.leftovers_killed")
    assert {old_hook, old_escaped} <= set(killed["pids"]) and killed["delivery"] == "crash"
    # Logged before listening, so before any worker could start the re-run.
    order = [e.get("msg") for e in second.logs]
    assert order.index("hook.leftovers_killed") < order.index("server.listening")
    assert not alive(old_hook) and not alive(old_escaped)
    line = finished(second)[0]
    assert line["outcome"] == "ok" and line["delivery"] == "crash"
    # The old run would have written its end 3 s after its start, inside the re-run: it never did.
    marks = [(kind, float(t)) for kind, t in (m.split() for m in (out / "marks").read_text().splitlines())]
    assert [k for k, _ in marks] == ["start", "start", "end"], marks
    assert marks[1][1] < marks[2][1]


def test_shutdown_ends_a_running_hook_and_its_setsid_child(tmp_path: Path, sidecars) -> None:
    config = write_config(tmp_path, ESCAPE.replace("{timeout}", "60").replace("{sleep}", "300"))
    out = tmp_path / "out"
    sidecar = sidecars(config, "--grace", "0.5")
    assert sidecar.deliver(b"{}", delivery="stopped").status == 200
    pids = [read_pid(out / name) for name in ("hook.pid", "escaped.pid")]
    assert sidecar.stop() == 0
    assert not any(alive(p) for p in pids)
    assert not any((tmp_path / ".spool" / "runs").iterdir())  # no record left: nothing to recover


def test_a_hook_killed_by_a_signal_reports_it() -> None:
    result = runner.run(["/bin/sh", "-c", "kill -KILL $$"], b"", {}, timeout_s=5)
    assert (result.exit_code, result.signal, result.timed_out, result.transient) == (None, 9, False, False)
    assert runner.run(["/bin/true"], b"", {}, timeout_s=5).signal is None


def test_a_fork_that_fails_for_lack_of_processes_is_transient(tmp_path: Path) -> None:
    """RLIMIT_NPROC makes fork fail with EAGAIN; root ignores the limit, so drop to nobody first."""
    code = ("import resource, sys\n"
            "from sidecar import runner\n"
            "resource.setrlimit(resource.RLIMIT_NPROC, (1, 1))\n"
            "r = runner.run(['/bin/true'], b'', {}, timeout_s=5)\n"
            "print(r.transient, r.error)\n")
    prefix: list[str] = []
    if os.geteuid() == 0:
        if not shutil.which("setpriv"):
            pytest.skip("needs setpriv to drop root (root ignores RLIMIT_NPROC)")
        prefix = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    done = subprocess.run([*prefix, sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("True cannot start: Resource temporarily unavailable"), done.stdout


def test_a_hook_cannot_read_the_sidecars_environment_through_proc(tmp_path: Path) -> None:
    """The secret is in the sidecar's real environment, as with a Kubernetes Secret in `env:`.

    The sidecar runs as a non-root user, as restricted pods do (root with CAP_SYS_PTRACE
    reads any /proc). The sandbox is off here: this is PR_SET_DUMPABLE's doing alone.
    """
    prefix: list[str] = []
    directory = tmp_path
    if os.geteuid() == 0:
        prefix = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
        probe = subprocess.run([*prefix, sys.executable, "-c", "import sidecar"], cwd=ROOT, capture_output=True)
        if not shutil.which("setpriv") or probe.returncode:
            pytest.skip("needs setpriv, and the repository readable by nobody, to run the sidecar as non-root")
        directory = Path(tempfile.mkdtemp(prefix="webhook-sidecar-peek-", dir="/tmp"))
        os.chown(directory, 65534, 65534)
    try:
        config = write_config(directory, table("""
            - event: "*"
              run: {scripts}/peek.sh
              env: {{OUT: {out}}}
        """))
        if prefix:
            os.chown(directory / "out", 65534, 65534)
        sidecar = start_as(config, prefix, env={"SIDECAR_SANDBOX": "off"})
        try:
            assert sidecar.deliver(b"{}").status == 200
            line = finished(sidecar)[0]
        finally:
            sidecar.stop(signal.SIGKILL)
            if sidecar.proc.stdout:
                sidecar.proc.stdout.close()
        tail = line["output_tail"]
        assert isinstance(tail, str) and tail.endswith("Permission denied\ndenied\n"), line
        peeked = directory / "out" / "peek.env"
        assert not peeked.exists() or SECRET not in peeked.read_text()
    finally:
        if directory != tmp_path:
            shutil.rmtree(directory)


# --- secret_file -------------------------------------------------------------------------

SECRET_FILE_TABLE = """
    endpoints:
      - path: /webhook
        provider: github
        secret_file: {secret}
        routes:
          - event: "*"
            run: [/bin/true]
"""


def test_secret_file_rotation_by_a_secret_volume_swap_needs_no_restart(tmp_path: Path, sidecars) -> None:
    volume = SecretVolume(tmp_path / "secret")
    volume.publish("old-secret")
    sidecar = sidecars(write_config(tmp_path, SECRET_FILE_TABLE.replace("{secret}", str(volume.root / "token"))),
                       env={"WEBHOOK_SECRET": ""})
    assert sidecar.deliver(b"{}", secret="old-secret").status == 200
    volume.publish("new-secret")
    wait_for(lambda: sidecar.deliver(b"{}", secret="new-secret").status == 200, timeout=3)
    assert sidecar.deliver(b"{}", secret="old-secret").status == 401
    wait_for(lambda: sidecar.find_logs("config.reloaded"), timeout=2)  # logged after the swap


def test_secret_file_rewritten_in_place_rotates_and_trailing_newline_is_not_part_of_it(tmp_path: Path,
                                                                                      sidecars) -> None:
    secret = tmp_path / "token"
    secret.write_text("first\n")
    sidecar = sidecars(write_config(tmp_path, SECRET_FILE_TABLE.replace("{secret}", "token")),
                       env={"WEBHOOK_SECRET": ""})
    assert sidecar.deliver(b"{}", secret="first").status == 200
    with open(secret, "w") as f:  # in place: same inode
        f.write("second\n")
    wait_for(lambda: sidecar.deliver(b"{}", secret="second").status == 200, timeout=3)
    assert sidecar.deliver(b"{}", secret="first").status == 401


def test_a_missing_or_empty_secret_file_is_a_config_error_with_line_and_key(tmp_path: Path) -> None:
    (tmp_path / "empty").write_text("\n")
    path = write_config(tmp_path, SECRET_FILE_TABLE.replace("{secret}", "[empty, missing]"))
    with pytest.raises(ConfigError) as e:
        load(path, environ={})
    assert e.value.errors == [
        f"{path}:5: endpoints[0].secret_file[0]: secret file {tmp_path / 'empty'} is empty",
        f"{path}:5: endpoints[0].secret_file[1]: cannot read secret file {tmp_path / 'missing'}:"
        " No such file or directory",
    ]


def test_secret_file_and_secret_env_together_accept_either(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("from-file")
    path = write_config(tmp_path, SECRET_FILE_TABLE.replace("{secret}", "token\n        secret_env: WEBHOOK_SECRET"))
    ep = load(path, environ={"WEBHOOK_SECRET": "from-env"}).endpoints["/webhook"]
    assert ep.secrets == (b"from-env", b"from-file")
    assert ep.secret_files == (str(tmp_path / "token"),)


def test_prometheus_process_metrics_still_work_when_not_dumpable() -> None:
    """The process collector reads /proc/self, which PR_SET_DUMPABLE 0 makes root-owned: as non-root too."""
    code = ("from sidecar import procs\n"
            "from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest\n"
            "procs.harden()\n"
            "r = CollectorRegistry(); ProcessCollector(registry=r)\n"
            "print(generate_latest(r).decode())\n")
    prefix = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] if os.geteuid() == 0 else []
    if prefix and not shutil.which("setpriv"):
        pytest.skip("needs setpriv to run as non-root")
    done = subprocess.run([*prefix, sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=30)
    assert done.returncode == 0, done.stderr
    samples = {line.split()[0]: float(line.split()[1]) for line in done.stdout.splitlines()
               if line and not line.startswith("#")}
    assert samples["process_open_fds"] > 2 and samples["process_resident_memory_bytes"] > 0
    assert samples["process_max_fds"] > 0


def test_a_launcher_tracks_a_run_by_the_route_and_delivery_it_is_given(tmp_path: Path) -> None:
    """The journal names a run by the values the launcher was handed, not by what the hook's env says;
    the hook carries its marker and HOME/TMPDIR are the launcher's."""
    from sidecar.config import Route
    from sidecar.launcher import Launcher

    tracker = procs.Tracker(tmp_path / "runs")
    launch = Launcher(tracker=tracker, private={"HOME": str(tmp_path), "TMPDIR": str(tmp_path)})
    assert tracker.journal.path is not None
    route = Route(name="deploy", event="*", when=(), argv=("/bin/sh", "-c", 'echo "$HOME $WEBHOOK_RUN_ID"; cat "$J"'),
                  env=(("J", str(tracker.journal.path)), ("WEBHOOK_ROUTE", "other")))
    result = launch.carry(job(route, "d1"), b"", None, None)
    assert result.ok, result
    first, written = result.output_tail.split("\n", 1)
    home, marker = first.split()
    assert home == str(tmp_path) and marker.startswith(tracker.instance + ".")
    started = json.loads(written.splitlines()[-1])
    assert (started["route"], started["delivery"]) == ("deploy", "d1")
    assert journal.open_runs(tracker.journal.path) == {}  # ended with the run
    tracker.close()


def test_leftovers_of_a_live_sidecar_sharing_the_directory_are_left_alone(tmp_path: Path) -> None:
    """Records and markers name their sidecar: only a dead one's runs are leftovers."""
    tracker = procs.Tracker(tmp_path / "runs")
    hook = start_tracked(tracker, ["sleep", "30"], route="r", delivery="d")
    try:
        assert procs.Tracker(tmp_path / "runs").reap_leftovers() == []  # this process is alive
        assert hook.proc.poll() is None and hook.run is not None
        assert tracker.journal.path is not None
        started = json.loads(tracker.journal.path.read_text().splitlines()[0])
        assert (started["pid"], started["run"], started["delivery"]) == (hook.proc.pid, hook.run.seq, "d")
    finally:
        hook.reap()
    assert journal.open_runs(tracker.journal.path) == {}  # nothing runs: nothing to recover
    tracker.close()
    assert not any((tmp_path / "runs").iterdir())


def test_without_records_a_dead_sidecars_leftovers_are_found_by_their_marker(tmp_path: Path) -> None:
    """A shared spool keeps no run directory: the marker (deployment, sidecar pid and start) is enough."""
    tracker = procs.Tracker(None, key=str(tmp_path / "config.yaml"))
    dead = f"{tracker.prefix}.{os.getpid()}-1.7"  # this pid, another start time: a sidecar that is gone
    other = f"{'0' * 10}.{os.getpid()}-1.7"  # another deployment's: not ours to touch
    leftover = subprocess.Popen(["sleep", "30"], env={procs.MARKER_VAR: dead})
    stranger = subprocess.Popen(["sleep", "30"], env={procs.MARKER_VAR: other})
    try:
        wait_for(lambda: proctree.marker(leftover.pid) == dead and proctree.marker(stranger.pid) == other)
        killed = tracker.reap_leftovers()
        assert killed == [{"marker": dead, "pids": [leftover.pid]}]
        assert leftover.wait(5) == -9
        assert stranger.poll() is None
    finally:
        for p in (leftover, stranger):
            p.kill()
            p.wait()


def test_a_hook_killed_by_a_signal_is_logged_with_it(tmp_path: Path, sidecars) -> None:
    config = write_config(tmp_path, table("""
        - event: "*"
          name: oom
          run: [/bin/sh, -c, 'kill -KILL $$']
          retries: 0
    """))
    sidecar = sidecars(config)
    assert sidecar.deliver(b"{}", delivery="killed").status == 200
    line = finished(sidecar)[0]
    assert (line.get("exit_code"), line.get("signal"), line["outcome"]) == (None, 9, "signal"), line


def test_a_dead_sidecars_journal_gives_its_open_runs_and_only_those(tmp_path: Path) -> None:
    """A hook that cleared its environment has no marker: the journal's pid still finds it."""
    tracker = procs.Tracker(tmp_path / "runs")
    running, ended = (start_tracked(tracker, ["env", "-i", "sleep", "30"], delivery=d) for d in "ab")
    try:
        assert running.run is not None and ended.run is not None
        ended.proc.kill()
        ended.proc.wait()
        assert tracker.end(ended.run) == []
        assert tracker.journal.path is not None
        dead = f"{tracker.prefix}.{os.getpid()}-1"  # this pid, another start time: a sidecar that is gone
        tracker.journal.path.rename(tracker.journal.path.with_name(dead + journal.SUFFIX))
        assert procs.Tracker(tmp_path / "runs").reap_leftovers() == [
            {"marker": f"{dead}.{running.run.seq}", "pids": [running.proc.pid], "route": None, "delivery": "a"}]
        assert running.proc.wait(5) == -9
        assert not any((tmp_path / "runs").iterdir())
    finally:
        for hook in (running, ended):
            hook.proc.kill()
            hook.proc.wait()


def test_the_journal_stays_small_under_endless_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(journal, "COMPACT_BYTES", 4096)
    runs = journal.Journal(tmp_path / ("sidecar" + journal.SUFFIX))
    runs.write_start(1, os.getpid(), None, "held")  # a run that stays open
    for seq in range(2, 502):
        runs.write_start(seq, 1 << 22, "r", f"d{seq}")
        runs.write_end(seq)
    assert runs.path is not None
    assert 0 < runs.path.stat().st_size <= 4096 + 200
    assert set(journal.open_runs(runs.path)) == {1}
    runs.close()
    assert runs.path.exists()  # a run is open: kept for the next start
