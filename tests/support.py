"""Helpers the test modules share; the fixtures that use them are in conftest.py.

The sidecar's command line as a subprocess (`cli`, `spool_cli`), a config table with the
usual GitHub endpoint (`table`), a free port for a server a test restarts, and small readers
of what hooks and the sidecar leave behind.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import pytest

from sidecar import config as config_mod
from sidecar.errors import ConfigError

if TYPE_CHECKING:
    from .conftest import Sidecar

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "tests" / "scripts"  # the hook scripts the tests' routes run
SECRET = "It's a Secret to Everybody"

# The endpoint most tests use: GitHub deliveries at /webhook, signed with $WEBHOOK_SECRET.
ENDPOINT = "endpoints:\n  - path: /webhook\n    provider: github\n    secret_env: WEBHOOK_SECRET\n    routes:\n"


def outside_writable_dirs() -> Path:
    """A directory for the sidecar's state that hooks are not granted: not under /tmp, /var/tmp or /dev."""
    for base in ("/var/lib", str(ROOT)):
        real = os.path.realpath(base)
        if os.access(base, os.W_OK) and not any(real == d or real.startswith(d + "/") for d in
                                                ("/tmp", "/var/tmp", "/dev")):
            return Path(tempfile.mkdtemp(prefix="webhook-sidecar-sandbox-", dir=base))
    pytest.skip("no writable directory outside /tmp for the sidecar's state")


def job(route: Any, delivery: str = "d", **facts: Any) -> Any:
    """A carry.Job of `route` for a launcher's carry (facts as in a stored job: endpoint, event, ...)."""
    from sidecar.carry import Job

    base = dict(delivery=delivery, endpoint="/webhook", provider="github", event="push", route=route,
                request_id="req", cwd="")
    return Job(**{**base, **facts})


def table(routes: str, top: str = "", more: str = "") -> str:
    """A config: the top-level lines `top`, the /webhook GitHub endpoint holding `routes` (a YAML
    list at any indentation), then the endpoints `more` (a YAML list too). For write_config:
    {scripts} and {out} are expanded there."""
    text = top + ENDPOINT + textwrap.indent(textwrap.dedent(routes).strip("\n"), "      ") + "\n"
    return text + textwrap.indent(textwrap.dedent(more).strip("\n") + "\n", "  ") if more.strip() else text


def recording_endpoint(path: str, provider: str, secret_env: str, route: str,
                       options: dict[str, Any] | None = None) -> str:
    """One endpoint (an item of `endpoints:`) at /`path` with `options`, whose route `route` records every
    event with tests/scripts/record.sh into {out}."""
    lines = "".join(f"    {k}: {json.dumps(v)}\n" for k, v in (options or {}).items())
    return (f"  - path: /{path}\n    provider: {provider}\n    secret_env: {secret_env}\n{lines}    routes:\n"
            f"      - event: \"*\"\n        name: {route}\n        run: {{scripts}}/record.sh\n"
            "        env: {{OUT: {out}}}\n")


def endpoint_config(directory: Path, endpoint: str, env: dict[str, str]) -> config_mod.Config:
    """config.yaml in `directory` with one endpoint at /hook (secret $S) given by the YAML lines `endpoint`,
    whose route records every event; loaded (ConfigError on a problem)."""
    (directory / "config.yaml").write_text(
        "endpoints:\n  - path: /hook\n    secret_env: S\n" + endpoint
        + f"    routes:\n      - event: '*'\n        run: {SCRIPTS}/record.sh\n")
    return config_mod.load(directory / "config.yaml", environ=env)


def endpoint_error(directory: Path, endpoint: str, env: dict[str, str]) -> str:
    """The ConfigError endpoint_config() raises for `endpoint`, as text ("" when the config loads)."""
    try:
        endpoint_config(directory, endpoint, env)
    except ConfigError as e:
        return str(e)
    return ""


def serve_once(config: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`webhook-sidecar serve` that is expected to stop at start (a config or spool error): its output."""
    return cli_text("serve", "--config", str(config), "--listen", "127.0.0.1:0", env=env)


def cli(*args: str, stdin: bytes = b"", env: dict[str, str] | None = None, cwd: Path = ROOT,
        timeout: float = 30) -> subprocess.CompletedProcess[bytes]:
    """`python -m sidecar ARGS` with $WEBHOOK_SECRET set (and `env` over the environment); output as bytes."""
    return subprocess.run([sys.executable, "-m", "sidecar", *args], input=stdin, capture_output=True,
                          timeout=timeout, env={**os.environ, "WEBHOOK_SECRET": SECRET, **(env or {})}, cwd=cwd)


def cli_text(*args: str, env: dict[str, str] | None = None, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """`python -m sidecar ARGS` like cli(), its output decoded."""
    result = cli(*args, env=env, timeout=timeout)
    return subprocess.CompletedProcess(result.args, result.returncode, result.stdout.decode(), result.stderr.decode())


def spool_cli(config: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`webhook-sidecar spool --config CONFIG ARGS`: list, show, retry, purge, check."""
    return cli_text("spool", "--config", str(config), *args, env=env)


def spool_jobs(config: Path, *args: str, env: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """The jobs `spool list --json ARGS` prints, one dict each."""
    listing = spool_cli(config, "list", "--json", *args, env=env)
    assert listing.returncode == 0, listing.stderr
    return [json.loads(line) for line in listing.stdout.splitlines()]


def load_tool(name: str) -> ModuleType:
    """tools/`name`.py (a script directory, not a package) as a module."""
    spec = importlib.util.spec_from_file_location(f"tools_{name}", ROOT / "tools" / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    """A free port below the ephemeral range: a server restarted on it (an outage test) must not find
    it taken by some client's outgoing connection, which an ephemeral port may be meanwhile."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(100):
        port = random.randrange(max(1024, low - 12000), low)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise OSError("no free port below the ephemeral range")


def exchange(port: int, data: bytes, half_close: bool = True, timeout: float = 4.0) -> tuple[bytes, float]:
    """Send `data` (then EOF unless half_close is False); read until the server closes. (answer, seconds)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        start = time.monotonic()
        try:
            sock.sendall(data)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        except OSError:  # the server may answer and close before it has read everything
            pass
        chunks: list[bytes] = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except (TimeoutError, ConnectionResetError):
            pass
        return b"".join(chunks), time.monotonic() - start


def lines(path: Path) -> list[str]:
    """The lines of a file hooks append to; none while it does not exist."""
    return path.read_text().splitlines() if path.exists() else []


def ran(out: Path) -> list[str]:
    """The words hooks appended to `out`/ran (a delivery or route each, by the scripts that write it)."""
    return (out / "ran").read_text().split() if (out / "ran").exists() else []


def metric(sidecar: Sidecar, name: str) -> float:
    """The sum of a metric's samples (every label set) on the sidecar's /metrics."""
    text = sidecar.request("GET", "/metrics").body.decode()
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.split(" ")[0].split("{")[0] == name)


# --- the shared spool ---------------------------------------------------------------------------
SPOOL_URL_VAR = "SPOOL_DATABASE_URL"  # where the tests' configs take the database URL from


def shared_table(routes: str, top: str = "") -> str:
    """table() on the shared spool ($SPOOL_DATABASE_URL) with short leases (lease_s: 2)."""
    return table(routes, f"spool_url_env: {SPOOL_URL_VAR}\nlease_s: 2\n{top}")


def start_replicas(sidecars: Callable[..., Sidecar], config: Path, url: str, names: list[str],
                   *args: str) -> list[Sidecar]:
    """One sidecar per name (--replica NAME) on the database `url`."""
    return [sidecars(config, "--replica", name, *args, env={SPOOL_URL_VAR: url}) for name in names]


# A route that appends "<delivery> <route> <replica>" to $OUT/ran (one short line: atomic with O_APPEND).
WHERE = """
- event: push
  name: NAME
  run: [sh, -c, 'cat >/dev/null; SLEEPecho "$WEBHOOK_DELIVERY $WEBHOOK_ROUTE $WEBHOOK_REPLICA" >> "$OUT/ran"']
  env: {{OUT: {out}}}
"""


def where(name: str, sleep: float = 0, broadcast: bool = False) -> str:
    """The WHERE route named `name`, sleeping `sleep` s first, optionally a broadcast route."""
    text = WHERE.replace("NAME", name).replace("SLEEP", f"sleep {sleep}; " if sleep else "")
    return text.replace("  env:", "  broadcast: true\n  env:") if broadcast else text


def alive(pid: int) -> bool:
    """Whether process `pid` runs (a zombie is dead: only its parent's wait is missing)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
    except OSError:
        return False


def start_as(config: Path, prefix: list[str], env: dict[str, str] | None = None) -> Sidecar:
    """start_sidecar with a command in front (setpriv), for what depends on the sidecar's privileges."""
    from .conftest import Sidecar, wait_for  # conftest imports this module

    full_env = {**os.environ, "WEBHOOK_SECRET": SECRET, "PYTHONUNBUFFERED": "1", **(env or {})}
    cmd = [*prefix, sys.executable, "-m", "sidecar", "serve", "--config", str(config),
           "--listen", "127.0.0.1:0", "--log-level", "debug"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=full_env, cwd=ROOT)
    sidecar = Sidecar(proc)
    threading.Thread(target=sidecar._read, daemon=True).start()

    def listening() -> dict[str, object] | None:
        if proc.poll() is not None:
            raise AssertionError(f"sidecar exited {proc.returncode}:\n{''.join(sidecar.raw)}")
        return next((e for e in list(sidecar.logs) if e.get("msg") == "server.listening"), None)

    sidecar.port = wait_for(listening, 15)["port"]
    return sidecar


class SecretVolume:
    """A Kubernetes Secret volume: key -> ..data/key, ..data -> ..<timestamp>, swapped by rename."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir()
        self.n = 0

    def publish(self, value: str) -> None:
        self.n += 1
        new = self.root / f"..2026_12_02_{self.n}"
        new.mkdir()
        (new / "token").write_text(value + "\n")
        old = os.readlink(self.root / "..data") if (self.root / "..data").is_symlink() else None
        os.symlink(new.name, self.root / "..data_tmp")
        os.rename(self.root / "..data_tmp", self.root / "..data")
        if not (self.root / "token").is_symlink():
            os.symlink("..data/token", self.root / "token")
        if old:
            shutil.rmtree(self.root / old)
