"""Run one hook: payload on stdin, a clean environment, a deadline for the whole group."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import procs

if TYPE_CHECKING:
    from .sandbox import Policy

TAIL_BYTES = 4096
KILL_GRACE_S = 5.0
# After the script exits, its background children may hold stdout open; read
# what they write for this long, then stop waiting for them.
DRAIN_S = 0.5
PASSED_THROUGH = ("PATH", "HOME", "LANG")


@dataclass(frozen=True)
class Result:
    exit_code: int | None  # None when killed by a signal
    timed_out: bool
    duration_s: float
    output_tail: str
    error: str = ""  # the script could not be started
    cancelled: bool = False  # stopped by cancel (a shutdown), not by its own doing
    signal: int | None = None  # the signal that ended the script (ours on a timeout, or anyone's)
    transient: bool = False  # could not start for lack of processes, memory or fds: worth a retry
    leftovers: int = 0  # processes of the run still alive after the script ended, killed then
    hint: str | None = None  # for a failure that looks like a denied write: why, and the fix (the launcher's)

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out


def hook_env(extra: Mapping[str, str], base: Mapping[str, str] | None = None,
             private: Mapping[str, str] | None = None) -> dict[str, str]:
    """PATH and LANG from the sidecar, HOME and TMPDIR the hooks' own (`private`, else the sidecar's
    HOME), then `extra`; nothing else leaks (no secrets)."""
    base = os.environ if base is None else base
    env = {k: base[k] for k in PASSED_THROUGH if k in base}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    if private:
        env.update(private)
    env.update(extra)
    return env


def not_started(e: OSError, duration_s: float) -> Result:
    """The result of a run whose hook could not be started."""
    return Result(None, False, duration_s, "", error=f"cannot start: {e.strerror}", transient=procs.transient(e))


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    # Kill the process group, not just the shell: scripts start children
    # (curl, git) that would outlive the timeout and hold the stdout pipe open.
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _spawn(argv: tuple[str, ...] | list[str], env: Mapping[str, str], cwd: str | None,
           tracker: procs.Tracker | None, box: Policy | None, facts: tuple[str | None, str | None]
           ) -> tuple[subprocess.Popen[bytes], int, int, procs.Run | None]:
    """Start the hook (sandboxed and tracked when given): (process, stdin fd, output fd, run)."""
    # Our own pipes, given to Popen as plain fds: Popen's PIPE would wrap each end in a
    # buffered file object we never use (about a fifth of the parent's cost of a spawn).
    child_in, in_fd = os.pipe2(os.O_CLOEXEC)
    try:
        out_fd, child_out = os.pipe2(os.O_CLOEXEC)
    except OSError:
        os.close(child_in)
        os.close(in_fd)
        raise
    try:
        run_rec = tracker.begin(*facts) if tracker is not None else None
    except OSError:
        for fd in (child_in, in_fd, out_fd, child_out):
            os.close(fd)
        raise
    if run_rec is not None:
        env = {**env, procs.MARKER_VAR: run_rec.marker}

    def popen() -> subprocess.Popen[bytes]:
        return subprocess.Popen(list(argv), stdin=child_in, stdout=child_out, stderr=child_out,
                                env=dict(env), cwd=cwd, start_new_session=True, close_fds=True)

    launch: Callable[[], subprocess.Popen[bytes]] = popen if box is None else lambda: box.spawn(popen)
    try:
        if tracker is None or run_rec is None:
            proc = launch()
        else:
            with tracker.spawning(run_rec):
                proc = launch()
                tracker.spawned(run_rec, proc.pid)
    except BaseException:
        os.close(in_fd)
        os.close(out_fd)
        if tracker is not None and run_rec is not None:
            tracker.end(run_rec)
        raise
    finally:
        os.close(child_in)
        os.close(child_out)
    return proc, in_fd, out_fd, run_rec


def run(argv: tuple[str, ...] | list[str], stdin: bytes, env: Mapping[str, str], timeout_s: float,
        cwd: str | None = None, kill_grace_s: float = KILL_GRACE_S, cancel: threading.Event | None = None,
        cancel_grace_s: float = KILL_GRACE_S, *, tracker: procs.Tracker | None = None,
        sandbox: Policy | None = None, route: str | None = None, delivery: str | None = None) -> Result:
    """Run argv with `stdin` as input; on timeout SIGTERM the group, then SIGKILL after the grace.

    Setting `cancel` ends the run the same way (with `cancel_grace_s`) and marks it cancelled.
    Nothing the script started outlives the run: its group is killed when it ends, and with a
    `tracker` so are its children that left the group (setsid); `route` and `delivery` name the
    run in the tracker's journal. `sandbox` is the Landlock policy to start it under (None: none).
    The service's hooks run through its launcher (launcher.py), which passes all of these.
    """
    start = time.monotonic()
    try:
        proc, in_fd, out_fd, run_rec = _spawn(argv, env, cwd, tracker, sandbox, (route, delivery))
    except OSError as e:
        return not_started(e, time.monotonic() - start)
    tail = bytearray()
    timed_out = cancelled = False
    # select.poll on the plain fds: selectors' key objects, a dict and an epoll fd per run cost more
    # than the three fds watched here. The exit comes from the pidfd, not from a waitpid every turn.
    poller = select.poll()
    poller.register(out_fd, select.POLLIN)
    out_open = in_open = True
    view, sent = memoryview(stdin), 0
    if stdin:
        # The payload in one write, before any wait, when the pipe takes it whole (it holds 64 KiB).
        os.set_blocking(in_fd, False)
        try:
            sent = os.write(in_fd, view)
        except BlockingIOError:
            pass
        except BrokenPipeError:
            sent = len(view)  # the script closed stdin early: its choice
    if sent >= len(view):
        os.close(in_fd)
        in_open = False
    else:
        poller.register(in_fd, select.POLLOUT)
    pidfd = _pidfd(proc.pid)
    if pidfd is not None:
        poller.register(pidfd, select.POLLIN)
    exited = False

    deadline = start + timeout_s
    stage = "run"  # run -> term -> kill on timeout; run -> drain when the script exits
    try:
        while True:
            now = time.monotonic()
            if not exited and pidfd is None:
                exited = proc.poll() is not None
            if exited and not out_open:
                break
            if exited and stage == "run":
                stage, deadline = "drain", now + DRAIN_S
            if cancel is not None and cancel.is_set() and stage in ("run", "drain") and not exited:
                cancelled, stage, deadline = True, "term", now + cancel_grace_s
                _signal_group(proc, signal.SIGTERM)
            if now >= deadline:
                if stage == "run":
                    timed_out, stage, deadline = True, "term", now + kill_grace_s
                    _signal_group(proc, signal.SIGTERM)
                elif stage == "term":
                    stage, deadline = "kill", now + 1.0
                    _signal_group(proc, signal.SIGKILL)
                else:
                    break  # drained, or killed and a setsid'd grandchild still holds stdout
                continue
            wait = deadline - now
            if pidfd is None:
                wait = min(wait, 0.05)
            if cancel is not None:
                wait = min(wait, 0.1)  # notice a cancel within 0.1 s
            for fd, _ in poller.poll(max(0.0, wait) * 1000):
                if fd == out_fd:
                    # Readable or hung up: a read does not block, b"" is the end.
                    chunk = os.read(out_fd, 65536)
                    if chunk:
                        tail += chunk
                        del tail[:-TAIL_BYTES]
                    else:
                        poller.unregister(out_fd)
                        out_open = False
                elif fd == pidfd:
                    poller.unregister(pidfd)  # the script exited
                    exited = True
                elif in_open:
                    try:
                        sent += os.write(in_fd, view[sent:sent + 65536])
                    except BlockingIOError:
                        pass
                    except BrokenPipeError:
                        sent = len(view)  # the script closed stdin early: its choice
                    if sent >= len(view):
                        poller.unregister(in_fd)
                        os.close(in_fd)
                        in_open = False
    finally:
        if pidfd is not None:
            os.close(pidfd)
        if in_open:
            os.close(in_fd)
        os.close(out_fd)
        # Nothing of the group may survive the run: not children that ignored SIGTERM
        # after their shell died, nor background ones a later attempt would overlap.
        _signal_group(proc, signal.SIGKILL)
        proc.wait()
        leftovers = tracker.end(run_rec) if tracker is not None and run_rec is not None else []
    code = proc.returncode
    return Result(
        exit_code=code if code >= 0 else None,
        timed_out=timed_out,
        duration_s=time.monotonic() - start,
        output_tail=bytes(tail).decode("utf-8", "replace"),
        cancelled=cancelled,
        signal=-code if code < 0 else None,
        leftovers=len(leftovers),
    )


def _pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None
