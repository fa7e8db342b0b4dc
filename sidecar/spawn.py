"""Start a hook process with os.posix_spawn: what subprocess.Popen does for us, at about half the cost.

Popen's Python side (argument checks, an error pipe, building the environment list)
costs the sidecar about as much again as the spawn itself. posix_spawn (glibc's
clone(CLONE_VM|CLONE_VFORK), no copy of the interpreter's page tables either) does
the same work for a hook, given three things Popen did:

- Close every other descriptor. Our own are close-on-exec (Python's, sqlite's,
  libpq's), but not all a library opens (watchdog's inotify descriptors) or that
  the sidecar inherited. seal() marks every descriptor close-on-exec: at the first
  spawn, after the config watcher adds a watch, and again when a spawn comes more
  than SEAL_EVERY_S after the last sweep (listing /proc/self/fd costs about 60 us
  with 50 descriptors open, more than the rest of a spawn). The one gap: a
  descriptor a C library opens without O_CLOEXEC less than a second before a spawn.
- Start in the route's directory. glibc has posix_spawn_file_actions_addchdir_np,
  Python does not offer it. Where the sidecar already runs in that directory (the
  image's WORKDIR is the config directory) nothing is needed; elsewhere the spawning
  thread gets a working directory of its own (unshare(CLONE_FS), which a container's
  seccomp profile may refuse: then Popen), enters the route's directory and leaves it.
- Signals at their defaults (Python ignores SIGPIPE and SIGXFSZ), none blocked,
  and a session of its own (setsid), so the group kill reaches all it starts.

Where any of that is not possible (no /proc, unshare refused, a program name to look
up in PATH), the caller falls back to Popen.
"""

from __future__ import annotations

import ctypes
import os
import signal
import threading
import time

CLONE_FS = 0x00000200
_DEFAULT_SIGNALS = tuple(s for s in (signal.SIGPIPE, getattr(signal, "SIGXFSZ", None)) if s is not None)
_libc = ctypes.CDLL(None, use_errno=True)
_local = threading.local()


class Child:
    """The started hook: what runner.run uses of a Popen (pid, poll, wait, returncode)."""

    __slots__ = ("pid", "returncode")

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                return self.returncode
            if pid == self.pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self) -> int:
        while self.returncode is None:
            try:
                _, status = os.waitpid(self.pid, 0)
            except ChildProcessError:
                self.returncode = -signal.SIGKILL  # reaped by someone else: its status is lost
                break
            self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode


def _own_directory() -> bool:
    """Give the calling thread a working directory of its own (once); False if the kernel refuses."""
    own = getattr(_local, "own_cwd", None)
    if own is None:
        own = _local.own_cwd = _libc.unshare(CLONE_FS) == 0
    return bool(own)


SEAL_EVERY_S = 1.0
_sealed_at = 0.0  # monotonic time of the last seal(); 0: never


def seal() -> int:
    """Mark every descriptor above 2 close-on-exec; the number that were not. OSError without /proc."""
    global _sealed_at
    _sealed_at = time.monotonic()
    count = 0
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd <= 2:
            continue
        try:
            if os.get_inheritable(fd):
                os.set_inheritable(fd, False)
                count += 1
        except OSError:
            continue  # the listing's own descriptor, or closed since
    return count


def start(argv: list[str], env: dict[str, str], cwd: str | None, stdin: int, output: int) -> Child | None:
    """Start argv in its own session with stdin and stdout+stderr on the given descriptors.

    None when this way cannot start it (the caller uses Popen); OSError when the program
    cannot be started at all, as Popen raises it.
    """
    if cwd is not None and cwd == os.getcwd():
        cwd = None  # the image's case: the sidecar runs in the config directory, where hooks start
    if "/" not in argv[0] or (cwd is not None and not _own_directory()):
        return None
    if time.monotonic() - _sealed_at > SEAL_EVERY_S:
        try:
            seal()
        except OSError:
            return None  # no /proc: Popen closes what it cannot list
    actions = [(os.POSIX_SPAWN_DUP2, stdin, 0), (os.POSIX_SPAWN_DUP2, output, 1), (os.POSIX_SPAWN_DUP2, output, 2)]
    here = None
    if cwd is not None:
        here = os.open(".", os.O_PATH | os.O_CLOEXEC)
        try:
            os.chdir(cwd)
        except OSError:
            os.close(here)
            raise
    try:
        pid = os.posix_spawn(argv[0], argv, env, file_actions=actions, setsid=True,
                             setsigdef=_DEFAULT_SIGNALS, setsigmask=())
    finally:
        if here is not None:
            os.fchdir(here)
            os.close(here)
    return Child(pid)
