"""A host install as docs/host.md describes it: the wheel in a fresh virtual environment (runtime
dependencies from the package index, nothing of the developer's), `check` and `serve` with `tls:` from
that environment, and the systemd unit checked offline by systemd-analyze."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest

from sidecar.service import DEFAULT_GRACE_S

from .conftest import BASIC, ROOT, SECRET, Sidecar, github_signature, wait_for, write_config
from .test_tls import PKI

UNIT = ROOT / "deploy" / "systemd" / "webhook-sidecar.service"
COMMAND = "/usr/local/bin/webhook-sidecar"


def _run(*cmd: str | Path, timeout: float = 300, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, **kwargs)
    assert done.returncode == 0, f"{cmd}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built wheel installed into a new venv, as `pip install webhook_sidecar-*.whl` on a host does."""
    base = tmp_path_factory.mktemp("host")
    # What the wheel is built from (as the Dockerfile copies it): no tests, no build/ left in the checkout.
    src = base / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "sidecar", src / "sidecar", ignore=shutil.ignore_patterns("__pycache__"))
    _run(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", base / "wheels", src)
    wheels = list((base / "wheels").glob("webhook_sidecar-*.whl"))
    assert len(wheels) == 1, wheels
    env = base / "venv"
    _run(sys.executable, "-m", "venv", "--without-pip", env)
    try:
        _run(sys.executable, "-m", "pip", "--python", env / "bin" / "python", "install", "--quiet",
             "--disable-pip-version-check", wheels[0])
    except AssertionError as e:
        if "Could not find a version" in str(e) or "connection" in str(e).lower():
            pytest.skip(f"the runtime dependencies cannot be had from the package index here: {e}")
        raise
    return env


def test_wheel_installs_runtime_dependencies_only(venv: Path) -> None:
    listing = _run(venv / "bin" / "python", "-c",
                   "import importlib.metadata as m; print('\\n'.join(sorted(d.metadata['Name'].lower()"
                   " for d in m.distributions())))").stdout.split()
    assert "webhook-sidecar" in listing and "pyyaml" in listing and "watchdog" in listing
    for tool in ("pytest", "ruff", "hypothesis", "twilio", "psycopg", "psycopg-pool"):
        assert tool not in listing, f"{tool} is installed by the plain wheel: {listing}"
    assert "webhook-sidecar 0.1.0" in _run(venv / "bin" / "webhook-sidecar", "--version").stdout


def test_a_shared_spool_without_the_postgres_extra_is_a_config_error(venv: Path, tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("spool_url_env: DB\nendpoints:\n  - {path: /x, provider: github, secret_env: S, routes: []}\n")
    env = {"PATH": "/usr/bin:/bin", "S": "x", "DB": "postgresql://u@127.0.0.1/db"}
    done = subprocess.run([str(venv / "bin" / "webhook-sidecar"), "check", "--config", str(config)],
                          capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert (f"{config}:1: spool_url_env: the shared spool needs the PostgreSQL driver:"
            " pip install 'webhook-sidecar[postgres]'") in done.stdout


def test_installed_command_checks_and_serves_https(venv: Path, tmp_path: Path) -> None:
    (tmp_path / "pki").mkdir()
    pki = PKI(tmp_path / "pki")
    cert, key = pki.leaf("host", 31)
    config = write_config(tmp_path, f"tls: {{{{cert_file: {cert}, key_file: {key}}}}}\n" + BASIC)
    env = {**os.environ, "WEBHOOK_SECRET": SECRET, "PYTHONUNBUFFERED": "1"}
    env.pop("PYTHONPATH", None)
    command = venv / "bin" / "webhook-sidecar"
    checked = _run(command, "check", "--config", config, env=env, cwd=tmp_path)
    assert "ok (1 endpoint(s), 3 route(s)" in checked.stdout

    proc = subprocess.Popen([str(command), "serve", "--config", str(config), "--listen", "127.0.0.1:0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path)
    sidecar = Sidecar(proc)
    threading.Thread(target=sidecar._read, daemon=True).start()
    try:
        listening = sidecar.wait_log(lambda e: e.get("msg") == "server.listening", timeout=15)
        body = json.dumps({"ref": "refs/heads/main"}).encode()
        delivery = str(uuid.uuid4())
        conn = http.client.HTTPSConnection("127.0.0.1", listening["port"], context=pki.client(), timeout=10)
        conn.request("POST", "/webhook", body=body, headers={
            "Content-Type": "application/json", "X-GitHub-Event": "push", "X-GitHub-Delivery": delivery,
            "X-Hub-Signature-256": github_signature(body)})
        resp = conn.getresponse()
        assert resp.status == 200, resp.read()
        conn.close()
        wait_for((tmp_path / "out" / f"{delivery}.main_push.body").exists)
        # The installed package, not this checkout, answered.
        assert str(venv) in _run(venv / "bin" / "python", "-c", "import sidecar; print(sidecar.__file__)",
                                 cwd=tmp_path).stdout
    finally:
        sidecar.stop(signal.SIGTERM)
        if proc.stdout:
            proc.stdout.close()


def test_systemd_unit_is_clean_for_systemd_analyze(tmp_path: Path) -> None:
    text = UNIT.read_text()
    for setting in ("DynamicUser=yes", "StateDirectory=webhook-sidecar", "ConfigurationDirectory=webhook-sidecar",
                    "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes", "NoNewPrivileges=yes",
                    "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX", "KillMode=mixed", "Restart=on-failure",
                    f"ExecStart={COMMAND} serve --config /etc/webhook-sidecar/config.yaml"):
        assert f"\n{setting}\n" in text, setting
    stop = int(text.split("\nTimeoutStopSec=")[1].split()[0])
    assert stop > DEFAULT_GRACE_S + 5, "TimeoutStopSec must leave the drain its grace"
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is missing (Debian package systemd)")
    # verify wants the command to exist: the same unit with an executable that does (no install needed).
    unit = tmp_path / UNIT.name
    unit.write_text(text.replace(COMMAND, sys.executable))
    done = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    # It exits 0 even for unknown keys and values it ignores: every line it prints is a finding.
    assert done.returncode == 0 and not done.stdout.strip() and not done.stderr.strip(), done.stdout + done.stderr
