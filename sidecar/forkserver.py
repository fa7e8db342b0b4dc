"""The hook fork server (native/forkserver.c): a small single-threaded process that forks and execs the
sidecar's hooks, so this interpreter neither runs subprocess's Python nor starts a thread per spawn.

The fork server only starts and reaps. Each child puts itself in a session of its own, takes the pipes
it was handed, and, for a sandboxed route, drops every capability, sets no_new_privs and enters the
route's Landlock ruleset as a domain of its own (it can signal neither the fork server nor another hook);
every other descriptor closes at the exec. Feeding, reading, deadlines, the run's journal and what it
leaves behind stay here (runner, procs): this process is the subreaper, so a hook's orphans come here.

Each thread that starts hooks gets a connection of its own (a socketpair whose far end goes over the
control socket), so a start and the exit status that follows are read by the thread that asked. A fork
server that ends is started again by the next spawn; a run it was reaping is waited for here (it is
ours now, as the subreaper's).

Used when the binary is there (`make native` builds it beside its source; `SIDECAR_FORKSERVER=PATH` names
another, `off` turns it off); else hooks start through subprocess in this process.
"""

from __future__ import annotations

import array
import errno
import os
import signal
import socket
import struct
import subprocess
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

from . import logs

DEFAULT = Path(__file__).parent / "native" / "forkserver"
READY_S = 10.0
HEADER = struct.Struct("=5I")  # version, flags, argc, envc, cwd length
ANSWER = struct.Struct("=3i")  # kind, pid, errno or wait status
STARTED, EXITED = 1, 2
F_SANDBOX, F_RULESET, F_STDOUT = 1, 2, 4


def find(environ: Mapping[str, str] | None = None) -> str | None:
    """The fork server's binary: SIDECAR_FORKSERVER (a path, or off), else the one `make native` built."""
    setting = (environ if environ is not None else os.environ).get("SIDECAR_FORKSERVER", "")
    if setting.lower() in ("off", "0", "no", "false"):
        return None
    path = os.path.abspath(setting) if setting else str(DEFAULT)
    return path if os.path.isfile(path) and os.access(path, os.X_OK) else None


class Forked:
    """A hook the fork server started: what procs.Hook needs of a subprocess.Popen."""

    def __init__(self, pid: int, conn: socket.socket) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._conn = conn

    def poll(self) -> int | None:
        if self.returncode is None:
            self._read(block=False)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        while self.returncode is None:
            self._read(block=True)
        return self.returncode

    def kill(self) -> None:
        if self.returncode is None:
            os.kill(self.pid, signal.SIGKILL)

    def _read(self, block: bool) -> None:
        try:
            data = self._conn.recv(ANSWER.size, 0 if block else socket.MSG_DONTWAIT)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if len(data) != ANSWER.size:  # the fork server ended: the hook was re-parented to us, the subreaper
            self.returncode = _wait_orphan(self.pid)
            return
        kind, pid, status = ANSWER.unpack(data)
        if kind == EXITED and pid == self.pid:
            self.returncode = os.waitstatus_to_exitcode(status)


def _wait_orphan(pid: int) -> int:
    try:
        return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    except ChildProcessError:
        return -signal.SIGKILL  # not ours to wait for: gone, or never re-parented here


class ForkServer:
    """A running fork server: start() it, spawn() hooks through it, close() it after the last run."""

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.proc: subprocess.Popen[bytes] | None = None
        self.generation = 0
        self.spared: set[int] = set()  # the pids it ran as: the tracker's, which never takes them for leftovers
        self._ctl: socket.socket | None = None
        self._lock = threading.Lock()
        self._local = threading.local()
        self._conns: list[socket.socket] = []

    def start(self) -> None:
        """Start the process and wait until it is ready (OSError when it cannot be)."""
        with self._lock:
            self._start()

    def _start(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.proc = subprocess.Popen([self.binary, str(theirs.fileno())], pass_fds=(theirs.fileno(),),
                                         stdin=subprocess.DEVNULL, env={}, cwd="/", start_new_session=True)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.settimeout(READY_S)
        try:
            ready = ours.recv(1)
        except OSError:
            ready = b""
        if ready != b"R":
            ours.close()
            self.proc.kill()
            self.proc.wait()
            raise OSError(f"the hook fork server {self.binary} did not start")
        ours.settimeout(None)
        self._ctl = ours
        self.generation += 1
        self.spared.add(self.proc.pid)

    def _connection(self) -> tuple[int, socket.socket]:
        local = self._local
        conn: socket.socket | None = getattr(local, "conn", None)
        if self.proc is not None and self.proc.poll() is not None:  # it ended since: start another first
            self._lost(self.generation)
        if conn is not None and local.generation == self.generation and self._ctl is not None:
            return local.generation, conn
        with self._lock:
            if self._ctl is None:
                self._start()
                logs.warning("hooks.forkserver_restarted", pid=self.proc.pid if self.proc else None)
            assert self._ctl is not None
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            try:
                self._ctl.sendmsg([b"C"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [theirs.fileno()]))])
            except OSError:
                ours.close()
                raise
            finally:
                theirs.close()
            if conn is not None:  # this thread's connection to an ended fork server
                conn.close()
                if conn in self._conns:  # not after close(), which closed and forgot them all
                    self._conns.remove(conn)
            self._conns.append(ours)
            local.conn, local.generation = ours, self.generation
            return self.generation, ours

    def spawn(self, argv: Sequence[str], stdin: int, output: int, env: Mapping[str, str], cwd: str | None,
              stdout: int | None = None, ruleset: int = -1, sandboxed: bool = False) -> Forked:
        """Start `argv` (popen's arguments); `sandboxed`: no capabilities, no_new_privs and the Landlock
        `ruleset` (-1: none). OSError as subprocess raises it; EAGAIN when the fork server ended."""
        data, fds = _request(argv, env, cwd, stdin, output, stdout, ruleset, sandboxed)
        generation, conn = self._connection()
        try:
            conn.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
            answer = conn.recv(ANSWER.size)
        except OSError as e:
            if e.errno == errno.EMSGSIZE:
                raise OSError(errno.E2BIG, os.strerror(errno.E2BIG)) from None  # what an exec of it would say
            answer = b""
        if len(answer) != ANSWER.size:
            self._lost(generation)
            raise OSError(errno.EAGAIN, "the hook fork server ended")  # a transient failure: retried
        _, pid, err = ANSWER.unpack(answer)
        if pid <= 0:
            raise OSError(err, os.strerror(err))
        return Forked(pid, conn)

    def _lost(self, generation: int) -> None:
        with self._lock:
            if generation != self.generation or self._ctl is None:
                return
            self._ctl.close()
            self._ctl = None
            if self.proc is not None and self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            logs.warning("hooks.forkserver_ended", pid=self.proc.pid if self.proc else None,
                         detail="started again by the next hook; its runs are waited for here")

    def close(self) -> None:
        """After the last run: the fork server ends when its control socket closes."""
        with self._lock:
            if self._ctl is not None:
                self._ctl.close()
                self._ctl = None
            for conn in self._conns:
                conn.close()
            self._conns.clear()
            if self.proc is not None:
                try:
                    self.proc.wait(5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()


def _request(argv: Sequence[str], env: Mapping[str, str], cwd: str | None, stdin: int, output: int,
             stdout: int | None, ruleset: int, sandboxed: bool) -> tuple[bytes, list[int]]:
    """The request's bytes (its strings joined and encoded at once: this is per hook) and descriptors."""
    if any(not key or "=" in key for key in env):
        raise ValueError("illegal environment variable name")
    parts = [*argv, *[f"{key}={value}" for key, value in env.items()], *([cwd] if cwd else [])]
    joined = "\0".join(parts)
    if joined.count("\0") != len(parts) - 1:
        raise ValueError("embedded null byte")
    flags = (F_SANDBOX if sandboxed else 0) | (F_RULESET if ruleset >= 0 else 0)
    flags |= F_STDOUT if stdout is not None else 0
    head = HEADER.pack(1, flags, len(argv), len(env), len(os.fsencode(cwd)) if cwd else 0)
    fds = [stdin, output, *([stdout] if stdout is not None else []), *([ruleset] if ruleset >= 0 else [])]
    return head + os.fsencode(joined) + b"\0", fds
