"""A throwaway PostgreSQL for the shared-spool tests: Debian's binaries, a temp dir, a free port.

Started once per test process (the first test that asks), stopped at exit; each test gets a
fresh database. Run as root, initdb and the server run as the `postgres` user (initdb refuses
root). Password auth over TCP, so tests can check that a wrong or leaked password is handled.
"""

from __future__ import annotations

import atexit
import glob
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from .support import free_port

PASSWORD = "pg-Secret-4711"
_counter = itertools.count()


def _bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(p.split("/")[4]))
    return Path(found[-1]).parent if found else None


class Postgres:
    """One server: start(), stop(mode), url(db), create_database()."""

    def __init__(self, fsync: bool = False) -> None:
        bindir = _bin()
        if bindir is None:
            raise RuntimeError("no PostgreSQL binaries in /usr/lib/postgresql/*/bin (Debian package postgresql)")
        self.bin = bindir
        self.root = Path(tempfile.mkdtemp(prefix="sidecar-pg-"))
        self.data, self.sock = self.root / "data", self.root / "sock"
        self.sock.mkdir()
        self.port = free_port()
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            for p in (self.root, self.sock):
                os.chown(p, pw.pw_uid, pw.pw_gid)
            self.as_user = ["runuser", "-u", "postgres", "--"]
        pwfile = self.root / "pw"
        pwfile.write_text(PASSWORD + "\n")
        if self.as_user:
            os.chown(pwfile, pwd.getpwnam("postgres").pw_uid, -1)
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--pwfile", str(pwfile), "--auth-local=trust",
                  "--auth-host=scram-sha-256", "-N", "-E", "UTF8", "--locale=C")
        pwfile.unlink()
        # fsync off for the suite's speed: an immediate stop is a crash of the server, not of the OS.
        conf = f"fsync = {'on' if fsync else 'off'}\nmax_connections = 300\nshared_buffers = 32MB\n"
        with open(self.data / "postgresql.conf", "a") as f:
            f.write(conf)
        self.start()

    def _run(self, tool: str, *args: str) -> None:
        result = subprocess.run([*self.as_user, str(self.bin / tool), *args], capture_output=True, text=True,
                                timeout=120, cwd=self.root)
        if result.returncode != 0:
            raise RuntimeError(f"{tool} failed: {result.stdout}{result.stderr}")

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-w", "-t", "60", "-l", str(self.root / "log"), "-o",
                  f"-p {self.port} -k {self.sock} -c listen_addresses=127.0.0.1", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-w", "-m", mode, "stop")

    def url(self, db: str = "postgres", password: str = PASSWORD) -> str:
        return f"postgresql://postgres:{password}@127.0.0.1:{self.port}/{db}"

    def create_database(self) -> str:
        import psycopg
        name = f"t{os.getpid()}_{next(_counter)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def destroy(self) -> None:
        try:
            self.stop("immediate")
        except (RuntimeError, subprocess.SubprocessError):
            pass
        shutil.rmtree(self.root, ignore_errors=True)


_server: Postgres | None = None
_failed: str | None = None


def server() -> Postgres:
    """The process's one server (started on first use, stopped at exit); skips the test when impossible."""
    global _server, _failed
    if _failed:
        pytest.skip(_failed)
    if _server is None:
        try:
            import psycopg  # noqa: F401
        except ImportError:
            _failed = "psycopg is not installed (pip install -e .)"
            pytest.skip(_failed)
        try:
            _server = Postgres()
        except (RuntimeError, OSError, KeyError, subprocess.SubprocessError) as e:
            _failed = f"cannot start a throwaway PostgreSQL: {e}"
            pytest.skip(_failed)
        atexit.register(_server.destroy)
    return _server

