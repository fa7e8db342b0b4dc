"""A real sidecar in a subprocess (`python -m sidecar serve`) on an ephemeral port.

Tests talk HTTP to it and read its JSON log lines from stdout; hook scripts in
tests/scripts record what they received into a temp dir. Helpers that need no
running sidecar are in support.py.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from .pg import Postgres, server
from .support import ROOT, SCRIPTS, SECRET, table


def github_signature(body: bytes, secret: str = SECRET) -> str:
    """Computed here, independently of sidecar.providers, as GitHub documents it."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def wait_for(predicate: Callable[..., Any], timeout: float = 5.0, interval: float = 0.02) -> Any:
    """Poll until predicate() is truthy; return its value or fail after `timeout`. (Called with no
    arguments; `...` lets a lambda bind loop variables as defaults, which mypy cannot match to `[]`.)"""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Sidecar:
    proc: subprocess.Popen[str]
    port: int = 0
    logs: list[dict[str, Any]] = field(default_factory=list)
    raw: list[str] = field(default_factory=list)
    _lines: queue.Queue[str] = field(default_factory=queue.Queue)

    @classmethod
    def following(cls, proc: subprocess.Popen[str], ready_timeout: float = 15.0) -> Sidecar:
        """A Sidecar reading `proc`'s log lines, once its server.listening line has given the port."""
        sidecar = cls(proc)
        threading.Thread(target=sidecar._read, daemon=True).start()
        sidecar.port = wait_for(sidecar._listening, ready_timeout)["port"]
        return sidecar

    def _listening(self) -> dict[str, Any] | None:
        if self.proc.poll() is not None:
            raise AssertionError(f"sidecar exited {self.proc.returncode}:\n{''.join(self.raw)}")
        return next((e for e in list(self.logs) if e.get("msg") == "server.listening"), None)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.raw.append(line)
            try:
                self.logs.append(json.loads(line))
            except ValueError:
                self.logs.append({"msg": "(not json)", "line": line})
            self._lines.put(line)

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None, timeout: float = 10) -> Response:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
        finally:
            conn.close()

    def post(self, path: str, body: bytes, headers: dict[str, str] | None = None) -> Response:
        return self.request("POST", path, body, headers)

    def deliver(self, body: bytes, event: str = "push", delivery: str | None = None, path: str = "/webhook",
                secret: str = SECRET, extra: dict[str, str] | None = None) -> Response:
        """POST a correctly signed GitHub delivery."""
        headers = {"Content-Type": "application/json", "X-GitHub-Event": event,
                   "X-Hub-Signature-256": github_signature(body, secret)}
        if delivery:
            headers["X-GitHub-Delivery"] = delivery
        headers.update(extra or {})
        return self.post(path, body, headers)

    def wait_log(self, predicate: Callable[..., bool], timeout: float = 5.0) -> dict[str, Any]:
        """The first log line (seen so far or arriving within `timeout`) that satisfies predicate."""
        return wait_for(lambda: next((e for e in list(self.logs) if predicate(e)), None), timeout)

    def find_logs(self, msg: str) -> list[dict[str, Any]]:
        return [e for e in list(self.logs) if e.get("msg") == msg]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)

    def close(self) -> None:
        """Kill it if it still runs; release its output pipe."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if self.proc.stdout:
            self.proc.stdout.close()


def start_sidecar(config: Path, *args: str, env: dict[str, str] | None = None,
                  ready_timeout: float = 15.0) -> Sidecar:
    """Start `python -m sidecar serve` and wait for its server.listening line."""
    full_env = {**os.environ, "WEBHOOK_SECRET": SECRET, "PYTHONUNBUFFERED": "1", **(env or {})}
    cmd = [sys.executable, "-m", "sidecar", "serve", "--config", str(config),
           "--listen", "127.0.0.1:0", "--log-level", "debug", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=full_env, cwd=ROOT)
    return Sidecar.following(proc, ready_timeout)


@contextmanager
def serving(config: Path, *args: str, **kwargs: Any) -> Iterator[Sidecar]:
    """start_sidecar() for a with block (a module's shared sidecar): killed at its end."""
    sidecar = start_sidecar(config, *args, **kwargs)
    try:
        yield sidecar
    finally:
        sidecar.close()


_OUT_BASE: list[Path] = []


def hooks_out(directory: Path) -> Path:
    """`directory / "out"`, where hook scripts record what they got: a link to a directory that the
    default sandbox lets hooks write. The config directory is read-only to hooks, and /tmp (where
    pytest keeps it) is not granted while state lies beneath it; /var/tmp is, as on a user's machine."""
    link = directory / "out"
    if link.is_symlink() or link.is_dir():
        return link.resolve()
    if not _OUT_BASE:
        base = Path("/var/tmp") if os.access("/var/tmp", os.W_OK) else None
        if base is None:  # no /var/tmp to write: beside the config (read-only to sandboxed hooks)
            link.mkdir()
            return link
        _OUT_BASE.append(Path(tempfile.mkdtemp(prefix="webhook-sidecar-tests-", dir=base)))
    real = Path(tempfile.mkdtemp(prefix=f"{directory.name}-", dir=_OUT_BASE[0]))
    link.symlink_to(real)
    return real


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    for base in _OUT_BASE:
        shutil.rmtree(base, ignore_errors=True)


def write_config(directory: Path, text: str) -> Path:
    """Write config.yaml into `directory`; {scripts} and {out} expand to the test's paths."""
    out = hooks_out(directory)
    path = directory / "config.yaml"
    path.write_text(textwrap.dedent(text).format(scripts=SCRIPTS, out=out))
    return path


@pytest.fixture
def sidecars() -> Iterator[Callable[..., Sidecar]]:
    """Factory for sidecars that are all stopped (SIGKILL if need be) after the test."""
    started: list[Sidecar] = []

    def start(config: Path, *args: str, **kwargs: Any) -> Sidecar:
        s = start_sidecar(config, *args, **kwargs)
        started.append(s)
        return s

    yield start
    for s in started:
        s.close()


@pytest.fixture(name="pg")
def _pg() -> Postgres:
    """The suite's throwaway PostgreSQL (skips with the reason when it cannot start)."""
    return server()


@pytest.fixture
def pg_url(pg: Postgres) -> str:
    """A fresh, empty database on it."""
    return pg.create_database()


BASIC = table("""
    - event: push
      name: main_push
      if: {{ref: refs/heads/main}}
      run: {scripts}/record.sh
      env: {{OUT: {out}}}
    - event: "*"
      name: every
      run: {scripts}/record.sh
      env: {{OUT: {out}}}
    - event: release
      name: released
      if: {{action: published, release.draft: false}}
      run: {scripts}/record.sh
      env: {{OUT: {out}}}
""", "max_body_bytes: 4096\nrequest_timeout_s: 2\n")


@pytest.fixture(scope="module")
def basic(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Sidecar, Path]]:
    """One shared sidecar with the BASIC table; yields (sidecar, hook output dir)."""
    directory = tmp_path_factory.mktemp("basic")
    with serving(write_config(directory, BASIC)) as sidecar:
        yield sidecar, directory / "out"
