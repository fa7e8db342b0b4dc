"""The Landlock sandbox as a hostile hook meets it: the sidecar's config, spool, .env and secret files
are out of reach, while what ordinary hooks do (read the system, write /tmp and $HOME, git, the
network) keeps working."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecar import runner, sandbox
from sidecar.config import Route

from .conftest import ROOT, SCRIPTS, Sidecar, wait_for

pytestmark = pytest.mark.skipif(sandbox.abi() == 0, reason="the kernel has no Landlock (or it is disabled)")

FULL = {"write_config", "read_spool", "list_spool", "write_spool", "read_env", "read_secret", "write_tmp",
        "write_home", "read_etc", "git", "connect"}
ORDINARY = {"write_tmp", "write_home", "read_etc", "git", "connect"}


def outside_writable_dirs() -> Path:
    """A directory for the sidecar's state that hooks are not granted: not under /tmp, /var/tmp or /dev."""
    for base in ("/var/lib", str(ROOT)):
        real = os.path.realpath(base)
        if os.access(base, os.W_OK) and not any(real == d or real.startswith(d + "/") for d in
                                                ("/tmp", "/var/tmp", "/dev")):
            return Path(tempfile.mkdtemp(prefix="webhook-sidecar-sandbox-", dir=base))
    pytest.skip("no writable directory outside /tmp for the sidecar's state")


@pytest.fixture
def state() -> Iterator[Path]:
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
    home = tmp_path / "home"
    home.mkdir()
    sidecar = sidecars(config, "--env-file", str(state / ".env"), env={"HOME": str(home), **env})
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
    assert not sidecar.find_logs("hooks.state_exposed")  # this layout is fully covered
    assert "# x" not in (state / "config.yaml").read_text()


def test_without_the_sandbox_the_same_hook_reaches_everything(tmp_path: Path, sidecars, state: Path,
                                                              listener: int) -> None:
    """The control: what the sandbox takes away (and what operators on old kernels are told)."""
    sidecar, got = run_trespass(sidecars, state, tmp_path, listener, SIDECAR_SANDBOX="off")
    assert {k for k, v in got.items() if v == "ok"} == FULL, got
    line = sidecar.wait_log(lambda e: e.get("msg") == "hooks.unsandboxed")
    assert line["reason"] == "disabled (--sandbox off, SIDECAR_SANDBOX=off)" and line["level"] == "warning"


def test_state_under_a_writable_directory_is_reported_as_not_hideable(tmp_path: Path, sidecars) -> None:
    """tmp_path is under /tmp, which hooks may write: config and spool there cannot be hidden."""
    config = tmp_path / "config.yaml"
    config.write_text("endpoints:\n  - path: /webhook\n    provider: github\n    secret_env: WEBHOOK_SECRET\n"
                      "    routes:\n      - event: '*'\n        run: [/bin/true]\n")
    sidecar = sidecars(config)
    problems = [e["problem"] for e in sidecar.find_logs("hooks.state_exposed")]
    assert f"{tmp_path / '.spool'} is inside /tmp (writable by hooks)" in problems
    assert f"{tmp_path} (the config directory) is inside /tmp (writable by hooks)" in problems


def test_a_route_can_opt_out_or_widen_and_it_is_logged(tmp_path: Path, sidecars, state: Path,
                                                       listener: int) -> None:
    extra = state / "extra"
    extra.mkdir()
    out = tmp_path / "out"
    config, _ = setup_state(state, tmp_path, listener, route_extra=f"""\
      - event: "*"
        name: free
        run: [/bin/sh, -c, 'cat {state / "secret" / "token"} > {out}/free.txt']
        sandbox: false
      - event: "*"
        name: wider
        run: [/bin/sh, -c, 'echo w > {extra}/w && cat {state / "secret" / "token"} > {out}/wider.txt']
        sandbox: {{write: [extra]}}
""")
    home = tmp_path / "home"
    home.mkdir()
    sidecar = sidecars(config, "--env-file", str(state / ".env"), env={"HOME": str(home)})
    line = sidecar.wait_log(lambda e: e.get("msg") == "hooks.sandboxed")
    assert line["unsandboxed_routes"] == ["free"]
    assert line["widened_routes"] == {"wider": {"read": [], "write": [str(extra)]}}
    assert not sidecar.find_logs("hooks.state_exposed")  # extra/ holds no state
    assert sidecar.deliver(b"{}", secret="from-secret-file").status == 200
    got = report(out)
    wait_for(lambda: len(sidecar.find_logs("hook.finished")) == 3, timeout=15)
    outcomes = {e["route"]: e["outcome"] for e in sidecar.find_logs("hook.finished")}
    assert outcomes == {"trespass": "ok", "free": "ok", "wider": "failed"}, outcomes
    assert got["read_secret"] == "denied"  # the default route stays sandboxed
    assert (out / "free.txt").read_text() == "from-secret-file\n"
    assert (extra / "w").read_text() == "w\n"  # granted: written
    assert (out / "wider.txt").read_text() == ""  # still hidden: the secret itself


def test_route_option_opts_out_or_widens(tmp_path: Path, state: Path) -> None:
    """The policies runner.run gets for a route: none for `sandbox: false`, wider for `write:`."""
    secret = state / "secret.txt"
    secret.write_text("s3cret")
    extra = state / "extra"
    extra.mkdir()
    box = sandbox.create([str(secret)], state, environ={"HOME": str(tmp_path)})
    assert box.active, box.reason
    base = Route(name="r", event="*", when=(), argv=("/bin/sh",))
    read = ["/bin/sh", "-c", f"cat {secret}"]
    write = ["/bin/sh", "-c", f"echo x > {extra}/f && echo wrote"]
    env = runner.hook_env({})
    default = box.for_route(base)
    assert not runner.run(read, b"", env, 5, sandbox=default, tracker=None).ok
    assert not runner.run(write, b"", env, 5, sandbox=default, tracker=None).ok
    free = box.for_route(Route(name="r", event="*", when=(), argv=("/bin/sh",), sandbox=False))
    assert free is None
    assert runner.run(read, b"", env, 5, sandbox=free, tracker=None).output_tail == "s3cret"
    wider = box.for_route(Route(name="r", event="*", when=(), argv=("/bin/sh",), sandbox_write=(str(extra),)))
    assert runner.run(write, b"", env, 5, sandbox=wider, tracker=None).output_tail == "wrote\n"
    assert not runner.run(read, b"", env, 5, sandbox=wider, tracker=None).ok
    assert box.for_route(base) is default  # built once per set of grants


def test_hooks_under_the_sandbox_run_curl_and_write_dev_null(tmp_path: Path, state: Path, listener: int) -> None:
    if not shutil.which("curl"):
        pytest.skip("curl is not installed")
    box = sandbox.create([str(state)], state, environ={"HOME": str(tmp_path)})
    cmd = ["/bin/sh", "-c", f"curl -s -m 2 -o /dev/null telnet://127.0.0.1:{listener} </dev/null; "
                            "echo rc=$?; echo hi > /dev/stdout; ls /usr/bin >/dev/null && echo listed"]
    result = runner.run(cmd, b"", runner.hook_env({}), 10, sandbox=box.policy(), tracker=None)
    assert result.output_tail in ("rc=0\nhi\nlisted\n", "rc=28\nhi\nlisted\n"), result


def test_a_secret_file_added_by_a_reload_is_hidden_too(tmp_path: Path, state: Path) -> None:
    """refresh() rebuilds the policies when what must be hidden changes."""
    secret = state / "new-secret"
    secret.write_text("late")
    box = sandbox.create([], state, environ={"HOME": str(tmp_path)})
    cat = ["/bin/cat", str(secret)]
    assert runner.run(cat, b"", {}, 5, sandbox=box.policy(), tracker=None).output_tail == "late"
    before = box.policy()  # as a worker holds it between its lookup and its spawn
    assert box.refresh([str(secret)])
    assert not runner.run(cat, b"", {}, 5, sandbox=box.policy(), tracker=None).ok
    # Retired, not stranded: its spawns go to the rebuilt policy (the new secret hidden there too).
    assert not runner.run(cat, b"", {}, 5, sandbox=before, tracker=None).ok
    assert runner.run(["/bin/echo", "ran"], b"", {}, 5, sandbox=before, tracker=None).output_tail == "ran\n"
    assert not box.refresh([str(secret)])



def test_a_secret_volume_stays_hidden_through_every_path_and_a_rotation(tmp_path: Path, state: Path) -> None:
    """The chart's layout: token -> ..data/token -> ..<stamp>/token; the kubelet swaps ..data."""
    from .test_isolation import SecretVolume

    volume = SecretVolume(state / "secrets")
    volume.publish("first")
    token = volume.root / "token"
    box = sandbox.create([str(token)], state, environ={"HOME": str(tmp_path)})

    def readable(sandboxed: bool = True) -> list[str]:
        paths = [token, volume.root / "..data" / "token", *volume.root.glob("..2026*/token")]
        cmd = ["/bin/sh", "-c", " ".join(f"cat {p} 2>/dev/null;" for p in paths)]
        policy = box.policy() if sandboxed else None
        return runner.run(cmd, b"", {}, 5, sandbox=policy, tracker=None).output_tail.split()

    assert readable(sandboxed=False) == ["first"] * 3  # the control: three ways to the one secret
    assert readable() == []
    volume.publish("second")  # a new ..<stamp> directory: not granted, as it was not there at the build
    assert readable() == []
    assert box.refresh([str(token)])  # the reload that follows the swap: the new target is hidden by name
    assert readable() == []
    assert (volume.root / "..data" / "token").read_text() == "second\n"
