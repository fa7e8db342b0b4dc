"""The chart's layout: config.yaml and hooks/ in a ConfigMap volume (reached through ..data), with a .env
beside them, so the config directory lies on the way to hidden state and its entries are granted one by
one. An update done the kubelet's way (a new ..<timestamp> directory, ..data swapped by rename) leaves
old and new routes runnable, as root and as a non-root uid, on both spool backends, with and without a
reload (a new hook script alone changes no table)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from sidecar import sandbox

from .conftest import SECRET, Sidecar, wait_for
from .pg import server
from .support import outside_writable_dirs, start_as

pytestmark = pytest.mark.skipif(sandbox.abi() == 0, reason="the kernel has no Landlock (or it is disabled)")

UID = 10001
TABLE = """\
{spool}
endpoints:
  - path: /webhook
    provider: github
    secret_env: WEBHOOK_SECRET
    routes:
{routes}
"""


def hook(text: str) -> str:
    return f"#!/bin/sh\ncat > /dev/null\necho {text}\n"


def route(name: str) -> str:
    return f"      - event: \"*\"\n        name: {name}\n        run: hooks/{name}.sh\n        retries: 0\n"


class ConfigMap:
    """A ConfigMap volume written as the kubelet's AtomicWriter does: the files in a new ..<timestamp>
    directory, ..data_tmp -> it renamed over ..data, top-level names as symlinks into ..data, the old
    directory removed."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(mode=0o755)
        self.n = 0

    def publish(self, files: dict[str, str]) -> None:
        self.n += 1
        stamp = self.root / f"..2026_12_07_19_00_{self.n:02d}.{os.getpid()}"
        for rel, text in files.items():
            path = stamp / rel
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
            path.write_text(text)
            path.chmod(0o755 if rel.endswith(".sh") else 0o644)
        data = self.root / "..data"
        old = os.readlink(data) if data.is_symlink() else None
        os.symlink(stamp.name, self.root / "..data_tmp")
        os.rename(self.root / "..data_tmp", data)
        for top in {rel.split("/")[0] for rel in files}:
            if not (self.root / top).is_symlink():
                os.symlink(f"..data/{top}", self.root / top)
        if old:
            shutil.rmtree(self.root / old)


def ran(sidecar: Sidecar, delivery: str, names: set[str]) -> dict[str, str]:
    """route -> output of the hook.finished lines of `delivery` (all of `names` must finish ok)."""
    def done() -> dict[str, dict[str, object]]:
        got = {e["route"]: e for e in sidecar.find_logs("hook.finished") if e.get("delivery") == delivery}
        return got if set(got) >= names else {}
    lines = wait_for(done, timeout=15)
    assert all(e["outcome"] == "ok" for e in lines.values()), lines
    return {name: str(e.get("output_tail", "")).strip() for name, e in lines.items()}


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
@pytest.mark.parametrize("user", ["root", "uid-10001"])
def test_a_configmap_update_leaves_old_and_new_routes_runnable(backend: str, user: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (to run the sidecar as root and as another uid); CI runs as root")
    url = server().create_database() if backend == "postgres" else ""
    base = outside_writable_dirs()  # as /etc/webhook: not under /tmp, which older sandboxes granted whole
    base.chmod(0o755)
    sidecar = None
    try:
        volume = ConfigMap(base / "config")
        spool = "spool_url_env: SPOOL_DATABASE_URL" if url else f"spool_dir: {base / 'spool'}"
        volume.publish({"config.yaml": TABLE.format(spool=spool, routes=route("first")),
                        "hooks/first.sh": hook("first-v1")})
        env_file = volume.root / ".env"  # beside config.yaml: the config directory is on the way to it
        env_file.write_text(f"WEBHOOK_SECRET={SECRET}\n")
        env_file.chmod(0o600)
        prefix: list[str] = []
        if user != "root":
            (base / "spool").mkdir(mode=0o700)
            for path in (base / "spool", env_file):
                os.chown(path, UID, UID)
            prefix = ["setpriv", f"--reuid={UID}", f"--regid={UID}", "--clear-groups"]
        sidecar = start_as(volume.root / "config.yaml", prefix,
                           env={"SIDECAR_ENV_FILE": str(env_file), "SIDECAR_SANDBOX": "on", "SPOOL_DATABASE_URL": url})
        assert sidecar.deliver(b"{}", delivery="d1").status == 200
        assert ran(sidecar, "d1", {"first"}) == {"first": "first-v1"}

        volume.publish({"config.yaml": TABLE.format(spool=spool, routes=route("first") + route("second")),
                        "hooks/first.sh": hook("first-v2"), "hooks/second.sh": hook("second-v2")})
        sidecar.wait_log(lambda e: e.get("msg") == "config.reloaded", timeout=10)
        assert sidecar.deliver(b"{}", delivery="d2").status == 200
        assert ran(sidecar, "d2", {"first", "second"}) == {"first": "first-v2", "second": "second-v2"}

        # Only a script changes: the table is the same (no reload), the files behind ..data are new.
        volume.publish({"config.yaml": TABLE.format(spool=spool, routes=route("first") + route("second")),
                        "hooks/first.sh": hook("first-v3"), "hooks/second.sh": hook("second-v3")})
        assert sidecar.deliver(b"{}", delivery="d3").status == 200
        assert ran(sidecar, "d3", {"first", "second"}) == {"first": "first-v3", "second": "second-v3"}
        line = sidecar.wait_log(lambda e: e.get("msg") == "hooks.sandboxed")
        assert str(env_file) in line["hidden"]
        if user != "root":  # it did run as that uid: no capability to drop the bounding set with
            assert line["capabilities"] == "all capabilities dropped, bounding set kept (no CAP_SETPCAP)", line
        assert sidecar.stop() == 0
    finally:
        if sidecar is not None:
            if sidecar.proc.poll() is None:
                sidecar.proc.kill()
            sidecar.proc.wait(10)
            if sidecar.proc.stdout:
                sidecar.proc.stdout.close()
        shutil.rmtree(base, ignore_errors=True)
