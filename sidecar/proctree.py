"""The process tree as /proc shows it to the sidecar: who is whose child, which run a process
belongs to (its marker), when a process started. With nothing but os, like watchdog.py's readers."""

from __future__ import annotations

import os
import signal

from .watchdog import MARKER_VAR, start_time


def started_near(pid: int, when: float, slack_s: float = 2.0) -> bool:
    """Whether process `pid` started within `slack_s` of the wall-clock time `when` (btime is whole seconds)."""
    ticks = start_time(pid)
    if ticks is None:
        return False
    try:
        with open("/proc/stat", "rb") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith(b"btime "))
    except (OSError, StopIteration):
        return False
    return abs(boot + ticks / os.sysconf("SC_CLK_TCK") - when) <= slack_s


def marker(pid: int) -> str | None:
    """The run marker in a process's environment; None when absent or unreadable."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = f.read()
    except OSError:
        return None
    key = MARKER_VAR.encode() + b"="
    for item in env.split(b"\0"):
        if item.startswith(key):
            return item[len(key):].decode("ascii", "replace")
    return None


def children(pid: int) -> list[int]:
    """Direct children of every thread of `pid` (orphans go to one thread, hooks to the spawning one)."""
    out: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
                out.extend(int(p) for p in f.read().split())
        except OSError:
            continue
    return out


def orphans() -> list[int]:
    """Children of the sidecar's main thread: where the kernel re-parents orphans to a subreaper
    (the first live thread of its group). One read instead of one per thread."""
    me = os.getpid()
    try:
        fd = os.open(f"/proc/{me}/task/{me}/children", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return children(me)
    try:
        return [int(p) for p in os.read(fd, 65536).split()]
    finally:
        os.close(fd)


def subtree(roots: list[int]) -> list[int]:
    seen: list[int] = []
    todo = list(roots)
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.append(pid)
        todo.extend(children(pid))
    return seen


def kill(pid: int, sig: int = signal.SIGKILL) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
