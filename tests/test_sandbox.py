"""The Landlock sandbox as a hostile hook meets it: the sidecar's config, spool, .env and secret files
are out of reach, while what ordinary hooks do (read the system, write their own HOME and TMPDIR and
/tmp, git, the network) keeps working; grants that would reach state are config errors; a denied write
gets a hint; the rulesets follow the files (a reload, a changed directory, an EACCES)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from sidecar import forkserver, grants, runner, sandbox, spawning
from sidecar.config import Route
from sidecar.launcher import Launcher

from .conftest import ROOT, SCRIPTS, Sidecar, wait_for
from .support import SecretVolume, job, outside_writable_dirs, table

pytestmark = pytest.mark.skipif(sandbox.abi() == 0, reason="the kernel has no Landlock (or it is disabled)")

FULL = {"write_config", "read_spool", "list_spool", "write_spool", "read_env", "read_secret", "write_tmp",
        "write_home", "read_etc", "git", "connect"}
ORDINARY = {"write_tmp", "write_home", "read_etc", "git", "connect"}
ON = {"SIDECAR_SANDBOX": "on"}


@pytest.fixture
def state() -> Iterator[Path]:
    directory = outside_writable_dirs()
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def elsewhere() -> Iterator[Path]:
    """A directory outside every default grant and every state path (as /srv/app)."""
    directory = outside_writable_dirs()
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def listener() -> Iterator[int]:
    """A local TCP socket a hook connects to (the network must stay open)."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        yield server.getsockname()[1]


def setup_state(state: Path, tmp_path: Path, port: int, route_extra: str = "") -> tuple[Path, dict[str, str]]:
    """config.yaml, .env and a secret file in `state`; the hook's report goes to tmp_path/out."""
    out = tmp_path / "out"
    out.mkdir()
    (state / ".env").write_text("ENV_SECRET=from-dotenv\n")
    (state / "secret").mkdir()
    (state / "secret" / "token").write_text("from-secret-file\n")
    config = state / "config.yaml"
    env = {"OUT": str(out), "CONFIG_FILE": str(config), "SPOOL_DIR": str(state / ".spool"),
           "ENV_FILE": str(state / ".env"), "SECRET_FILE": str(state / "secret" / "token"), "PORT": str(port)}
    env_yaml = ", ".join(f"{k}: {v}" for k, v in env.items())
    config.write_text(f"""\
endpoints:
  - path: /webhook
    provider: github
    secret_env: ENV_SECRET
    secret_file: secret/token
    routes:
      - event: "*"
        name: trespass
        run: {SCRIPTS}/trespass.sh
        env: {{{env_yaml}}}
{route_extra}""")
    return config, env


def report(out: Path) -> dict[str, str]:
    wait_for(lambda: (out / "report").exists() and (out / "report").read_text().endswith("done\n"), timeout=15)
    lines = (out / "report").read_text().splitlines()[:-1]
    return dict(line.split() for line in lines)


def run_trespass(sidecars, state: Path, tmp_path: Path, port: int, **env: str) -> tuple[Sidecar, dict[str, str]]:
    config, _ = setup_state(state, tmp_path, port)
    sidecar = sidecars(config, "--env-file", str(state / ".env"), env={**ON, **env})
    assert sidecar.deliver(b"{}", secret="from-secret-file").status == 200
    return sidecar, report(tmp_path / "out")


def test_a_sandboxed_hook_cannot_touch_config_spool_env_or_secrets_but_works(tmp_path: Path, sidecars, state: Path,
                                                                           listener: int) -> None:
    sidecar, got = run_trespass(sidecars, state, tmp_path, listener)
    assert set(got) == FULL
    assert {k for k, v in got.items() if v == "ok"} == ORDINARY, got
    line = sidecar.wait_log(lambda e: e.get("msg") == "hooks.sandboxed")
    assert str(state / ".spool") in line["hidden"] and str(state / ".env") in line["hidden"]
    assert str(state / "secret" / "token") in line["hidden"]
    assert "/tmp" in line["writable"] and line["home"] in line["writable"]  # no state under /tmp here
    assert not sidecar.find_logs("hooks.state_exposed") and not sidecar.find_logs("hooks.narrowed")
    assert "# x" not in (state / "config.yaml").read_text()


def test_without_the_sandbox_the_same_hook_reaches_everything(tmp_path: Path, sidecars, state: Path,
                                                              listener: int) -> None:
    """The control: what the sandbox takes away (and what operators on old kernels are told)."""
    sidecar, got = run_trespass(sidecars, state, tmp_path, listener, SIDECAR_SANDBOX="off")
    assert {k for k, v in got.items() if v == "ok"} == FULL, got
    line = sidecar.wait_log(lambda e: e.get("msg") == "hooks.unsandboxed")
    assert line["reason"] == "disabled (--sandbox off, SIDECAR_SANDBOX=off)" and line["level"] == "warning"


def test_a_route_can_opt_out_or_widen_and_it_is_logged(tmp_path: Path, sidecars, state: Path, elsewhere: Path,
                                                       listener: int) -> None:
    out = tmp_path / "out"
    config, _ = setup_state(state, tmp_path, listener, route_extra=f"""\
      - event: "*"
        name: free
        run: [/bin/sh, -c, 'cat {state / "secret" / "token"} > {out}/free.txt']
        sandbox: false
      - event: "*"
        name: wider
        run: [/bin/sh, -c, 'echo w > {elsewhere}/w && cat {state / "secret" / "token"} > {out}/wider.txt']
        sandbox: {{write: [{elsewhere}]}}
""")
    sidecar = sidecars(config, "--env-file", str(state / ".env"), env=ON)
    line = sidecar.wait_log(lambda e: e.get("msg") == "hooks.sandboxed")
    assert line["unsandboxed_routes"] == ["free"]
    assert line["widened_routes"] == {"wider": {"read": [], "write": [str(elsewhere)]}}
    assert not sidecar.find_logs("hooks.state_exposed")
    assert sidecar.deliver(b"{}", secret="from-secret-file").status == 200
    got = report(out)
    wait_for(lambda: len(sidecar.find_logs("hook.finished")) == 3, timeout=15)
    outcomes = {e["route"]: e["outcome"] for e in sidecar.find_logs("hook.finished")}
    assert outcomes == {"trespass": "ok", "free": "ok", "wider": "failed"}, outcomes
    assert got["read_secret"] == "denied"  # the default route stays sandboxed
    assert (out / "free.txt").read_text() == "from-secret-file\n"
    assert (elsewhere / "w").read_text() == "w\n"  # granted: written
    assert (out / "wider.txt").read_text() == ""  # still hidden: the secret itself


def test_a_denied_write_gets_a_hint_naming_sandbox_write(tmp_path: Path, sidecars, elsewhere: Path) -> None:
    """A deploy hook writing /srv/app without the grant: the log says where to grant it; other failures do not."""
    (tmp_path / "config.yaml").write_text(table(f"""
        - event: push
          name: deploy
          run: [/bin/sh, -c, 'echo pulled > {elsewhere}/HEAD']
          retries: 0
        - event: push
          name: broken
          run: {SCRIPTS}/exit3.sh
          retries: 0
    """))
    sidecar = sidecars(tmp_path / "config.yaml", env=ON)
    assert sidecar.deliver(b"{}").status == 200
    wait_for(lambda: len(sidecar.find_logs("hook.finished")) == 2, timeout=10)
    lines = {e["route"]: e for e in sidecar.find_logs("hook.finished")}
    assert "Permission denied" in lines["deploy"]["output_tail"] and lines["deploy"]["outcome"] == "failed"
    hint = lines["deploy"]["hint"]
    assert "sandbox" in hint and "sandbox: {write: [/path]}" in hint and "$TMPDIR" in hint, hint
    assert "hint" not in lines["broken"]
    assert not (elsewhere / "HEAD").exists()


def test_a_write_grant_that_reaches_state_is_a_config_error(tmp_path: Path) -> None:
    """`check` names each such grant with its line; a grant beside the state is fine."""
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "token").write_text("t\n")
    (tmp_path / "app").mkdir()
    (tmp_path / "etc").mkdir()
    config = tmp_path / "etc" / "config.yaml"
    config.write_text(f"""\
spool_dir: {tmp_path / "spool"}
endpoints:
  - path: /webhook
    provider: github
    secret_file: {tmp_path / "secrets" / "token"}
    routes:
      - event: "*"
        run: [/bin/true]
        sandbox: {{write: [{tmp_path / "app"}, {tmp_path}, hooks, /]}}
""")
    (tmp_path / "spool").mkdir()
    (tmp_path / "etc" / "hooks").mkdir()
    result = subprocess.run([sys.executable, "-m", "sidecar", "check", "--config", str(config)], cwd=ROOT,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 1, result.stdout + result.stderr
    where = f"{config}:9: endpoints[0].routes[0].sandbox.write"
    assert f"{where}[1]: {tmp_path} contains the config directory ({tmp_path / 'etc'})" in result.stdout
    assert f"{where}[2]: {tmp_path / 'etc' / 'hooks'} lies inside the config directory" in result.stdout
    assert f"{where}[3]: / contains the config directory" in result.stdout
    assert f"{where}[0]" not in result.stdout and "3 error(s)" in result.stdout, result.stdout


def test_route_option_opts_out_or_widens(tmp_path: Path, state: Path, elsewhere: Path) -> None:
    """The policy a launcher starts a hook under is the live table's route's: none for `sandbox: false`,
    wider for `write:`; the route run (a stored job's, which carries no sandbox options) only names it."""
    secret = state / "secret.txt"
    secret.write_text("s3cret")
    box = sandbox.create([str(secret)], state)
    assert box.active, box.reason
    launch = Launcher(sandbox=box)
    read = Route(name="r", event="*", when=(), argv=("/bin/sh", "-c", f"cat {secret}"))
    write = Route(name="r", event="*", when=(), argv=("/bin/sh", "-c", f"echo x > {elsewhere}/f && echo wrote"))
    grants = launch.grants(read)
    assert grants is not None
    default = box.policy(*grants)
    for run in (read, write):
        assert not launch.carry(job(run), b"", read, None).ok
        assert not launch.carry(job(run), b"", None, None).ok  # a route the table lacks: the default
    assert launch.carry(job(write), b"", read, None).hint  # a denied write: why, and the fix
    free = replace(read, sandbox=False)
    assert launch.grants(free) is None  # no policy: started as the sidecar's other children
    assert launch.carry(job(read), b"", free, None).output_tail == "s3cret"
    denied = replace(read, argv=("/bin/sh", "-c", "echo Permission denied; exit 1"))
    assert launch.carry(job(denied), b"", free, None).hint is None  # not sandboxed: not the sandbox's doing
    wider = replace(read, sandbox_write=(str(elsewhere),))
    assert launch.carry(job(write), b"", wider, None).output_tail == "wrote\n"
    assert not launch.carry(job(read), b"", wider, None).ok
    assert box.policy(*grants) is default  # built once per set of grants
    # A reply route's stdout comes apart from the output tail, under the route's policy all the same.
    replied = launch.carry(job(replace(write, argv=("/bin/sh", "-c", f"echo answer; cat {secret}"))), b"", read,
                           None, reply_bytes=64)
    assert replied.stdout == b"answer\n" and "Permission denied" in replied.output_tail and not replied.ok


def test_hooks_under_the_sandbox_run_curl_and_write_dev_null(state: Path, listener: int) -> None:
    if not shutil.which("curl"):
        pytest.skip("curl is not installed")
    box = sandbox.create([str(state)], state)
    cmd = ["/bin/sh", "-c", f"curl -s -m 2 -o /dev/null telnet://127.0.0.1:{listener} </dev/null; "
                            "echo rc=$?; echo hi > /dev/stdout; ls /usr/bin >/dev/null && echo listed"]
    result = runner.run(cmd, b"", {}, 10, sandbox=box.policy(), tracker=None)
    assert result.output_tail in ("rc=0\nhi\nlisted\n", "rc=28\nhi\nlisted\n"), result


def test_a_secret_file_added_by_a_reload_is_hidden_too(state: Path) -> None:
    """rebuild() (every reload) hides what the new table names."""
    secret = state / "new-secret"
    secret.write_text("late")
    box = sandbox.create([], state)
    cat = ["/bin/cat", str(secret)]
    assert runner.run(cat, b"", {}, 5, sandbox=box.policy(), tracker=None).output_tail == "late"
    before = box.policy()  # as a worker holds it between its lookup and its spawn
    assert box.rebuild([str(secret)])
    assert not runner.run(cat, b"", {}, 5, sandbox=box.policy(), tracker=None).ok
    # Retired, not stranded: its spawns go to the rebuilt policy (the new secret hidden there too).
    assert not runner.run(cat, b"", {}, 5, sandbox=before, tracker=None).ok
    assert runner.run(["/bin/echo", "ran"], b"", {}, 5, sandbox=before, tracker=None).output_tail == "ran\n"
    assert not box.rebuild([str(secret)])


def test_a_secret_volume_stays_hidden_through_every_path_and_a_rotation(state: Path) -> None:
    """The chart's layout: token -> ..data/token -> ..<stamp>/token; the kubelet swaps ..data. The next
    ..<stamp> directory exists before the swap: a rebuild then must not grant the new secret."""

    volume = SecretVolume(state / "secrets")
    volume.publish("first")
    token = volume.root / "token"
    box = sandbox.create([str(token)], state)

    def readable(sandboxed: bool = True) -> list[str]:
        paths = [token, volume.root / "..data" / "token", *volume.root.glob("..2026*/token")]
        cmd = ["/bin/sh", "-c", " ".join(f"cat {p} 2>/dev/null;" for p in paths)]
        policy = box.policy() if sandboxed else None
        return runner.run(cmd, b"", {}, 5, sandbox=policy, tracker=None).output_tail.split()

    assert readable(sandboxed=False) == ["first"] * 3  # the control: three ways to the one secret
    assert readable() == []
    half = volume.root / "..2026_12_02_9"  # the kubelet's next directory, written before ..data moves
    half.mkdir()
    (half / "token").write_text("next\n")
    assert box.check()  # the volume's directory changed: the next spawn rebuilds first
    assert readable() == []
    shutil.rmtree(half)
    volume.publish("second")
    assert readable() == []
    assert not box.rebuild([str(token)])  # the reload that follows the swap: same path, walked again
    assert readable() == []
    assert (volume.root / "..data" / "token").read_text() == "second\n"


def script(path: Path, says: str) -> list[str]:
    path.write_text(f"#!/bin/sh\necho {says}\n")
    path.chmod(0o755)
    return [str(path)]


@pytest.fixture(params=["thread", "forkserver"])
def forks(request: pytest.FixtureRequest) -> Iterator[forkserver.ForkServer | None]:
    """How hooks start: from the policy's thread, or by the fork server (when built)."""
    if request.param == "thread":
        yield None
        return
    binary = forkserver.find()
    if binary is None:
        pytest.skip("the fork server is not built (make native needs a C compiler)")
    server = forkserver.ForkServer(binary)
    server.start()
    yield server
    server.close()


def test_a_hook_in_a_directory_that_changed_runs_after_a_rebuild(state: Path,
                                                                   forks: forkserver.ForkServer | None) -> None:
    """A directory on the way to hidden state is granted entry by entry: a new entry (a ConfigMap's next
    ..<stamp>) is looked for before each spawn; a spawn that raced the change and got EACCES rebuilds
    and is tried once more. The same whether the policy's thread or the fork server starts the hook."""
    config_dir = state / "config"
    config_dir.mkdir()
    (config_dir / ".env").write_text("X=1\n")  # hidden: the config directory is on the way to it
    box = sandbox.create([str(config_dir / ".env")], config_dir)

    def under(policy: sandbox.Policy | None) -> spawning.Spawns | None:
        return policy if forks is None else sandbox.Ruled(box, ((), ()), forks)  # the box's current policy

    policy = box.policy()
    new = script(config_dir / "new.sh", "new")
    assert runner.run(new, b"", {}, 5, sandbox=under(policy), tracker=None).output_tail == "new\n"
    assert box.policy() is not policy  # rebuilt before the spawn; the old one handed it on

    # A spawn that raced the change: the check already saw the directory as it is, the ruleset did not.
    policy = box.policy()
    racing = script(config_dir / "racing.sh", "racing")
    box._view = grants.walk(box.hidden)
    box.denied_rebuild_s = 3600.0  # the control: no rebuild, no second try
    assert runner.run(racing, b"", {}, 5, sandbox=under(policy), tracker=None).error == \
        "cannot start: Permission denied"
    box.denied_rebuild_s = 0.0
    assert runner.run(racing, b"", {}, 5, sandbox=under(policy), tracker=None).output_tail == "racing\n"
    assert not runner.run(["/bin/cat", str(config_dir / ".env")], b"", {}, 5, sandbox=box.policy(), tracker=None).ok


def test_a_directory_changing_at_the_walk_is_listed_again_not_walked_again(state: Path) -> None:
    """A listed directory modified within a second of the walk (a coarse clock could hide a change in the
    same tick) is looked at again after that second: the same entries (names and inodes) keep the
    policies; one more, or one replaced, rebuilds them."""
    config_dir = state / "config"
    config_dir.mkdir()
    (config_dir / ".env").write_text("X=1\n")
    box = sandbox.create([str(config_dir / ".env")], config_dir)
    policy = box.policy()
    view = box._view
    assert view is not None and view.recheck_at and str(config_dir) in dict(view.young)  # just made
    wait_for(lambda: view.changed() == grants.RECHECK, timeout=3)
    assert box.check() == "" and box.policy() is policy  # listed again: as it was, no rebuild
    assert box._view is not None and not box._view.recheck_at and box._view.listed == view.listed

    # The same names but another inode (a file replaced by rename in the walk's tick): not settled.
    young = dict(view.young)
    entries = {name for name, _ in young[str(config_dir)]}
    stale = replace(view, young=((str(config_dir), frozenset((n, 1) for n in entries)),))
    assert stale.settled() is None
    missing = replace(view, young=((str(config_dir), frozenset()),))
    assert missing.settled() is None


def test_without_landlock_hooks_still_lose_their_capabilities() -> None:
    """The policy of a kernel without Landlock (level 0): only no_new_privs and no capabilities."""
    policy = sandbox.Policy(sandbox.Grants(), 0)
    result = runner.run(["/bin/grep", "-E", "^Cap(Prm|Eff|Bnd)|NoNewPrivs", "/proc/self/status"], b"", {}, 5,
                        sandbox=policy, tracker=None)
    got = dict(line.split(":") for line in result.output_tail.splitlines())
    assert int(got["NoNewPrivs"]) == 1 and int(got["CapEff"], 16) == int(got["CapPrm"], 16) == 0, got
    if os.geteuid() == 0:
        assert int(got["CapBnd"], 16) == 0 and policy.dropped == "all capabilities dropped, bounding set emptied"
    assert runner.run(["/bin/cat", "/etc/hostname"], b"", {}, 5, sandbox=policy, tracker=None).ok  # no Landlock
