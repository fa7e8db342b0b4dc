"""Run one hook: payload on stdin, a clean environment, a deadline for the whole group.

The runner feeds the payload, keeps the output's tail and ends the run at its deadline or a
cancel; it starts the hook through procs.start (tracked, then sandbox.spawn under the policy)
and ends what is left of it with procs.Hook.reap. Nothing below calls back into it.
"""

from __future__ import annotations

import os
import select
import signal
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import procs
from .forkserver import Forking, ForkServer
from .sandbox import Ruled, Sandbox, Spawns

TAIL_BYTES = 4096
KILL_GRACE_S = 5.0
# After the script exits, its background children may hold stdout open; read
# what they write for this long, then stop waiting for them.
DRAIN_S = 0.5
EX_TEMPFAIL = 75  # a hook's "try again later" (sysexits.h)


@dataclass
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
    stdout: bytes = b""  # with reply_bytes: the hook's stdout apart, at most reply_bytes + 1 of its first bytes
    retry_after_s: float = 0.0  # a retry waits at least this long (a forward target's Retry-After)
    fields: Mapping[str, Any] = field(default_factory=dict)  # what hook.finished logs of the run (the carrier's)

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out

    @property
    def outcome(self) -> str:
        """ok | timeout | error (not started) | signal | failed."""
        if self.ok:
            return "ok"
        if self.timed_out:
            return "timeout"
        if self.error:
            return "error"
        return "signal" if self.signal else "failed"

    @property
    def retryable(self) -> bool:
        """Worth another attempt: timed out, EX_TEMPFAIL, or could not start for want of resources."""
        return self.timed_out or self.exit_code == EX_TEMPFAIL or self.transient


@dataclass(frozen=True)
class Request:
    """One run of a hook, as values: what InProcess is handed."""

    argv: Sequence[str]
    env: Mapping[str, str]
    timeout_s: float
    cwd: str | None
    cancel_grace_s: float
    policy: tuple[Sequence[str], Sequence[str]] | None  # the route's (read, write) grants; None: no sandbox
    route: str | None
    delivery: str | None
    reply_bytes: int = 0


@dataclass
class InProcess:
    """Starts hooks for this process, tracked by `tracker`, each under the policy `sandbox` builds from its
    request's grants; forked by the fork server `forks` when there is one, else by subprocess here."""

    tracker: procs.Tracker | None = None
    sandbox: Sandbox | None = None
    forks: ForkServer | None = None

    def launch(self, req: Request, stdin: bytes, cancel: threading.Event | None) -> Result:
        ruled: Spawns | None = None
        if self.forks is not None:
            ruled = Forking(self.forks, self.sandbox, req.policy)
        elif self.sandbox is not None and req.policy is not None:
            ruled = Ruled(self.sandbox, req.policy)
        return run(req.argv, stdin, req.env, req.timeout_s, cwd=req.cwd, cancel=cancel,
                   cancel_grace_s=req.cancel_grace_s, tracker=self.tracker, sandbox=ruled, route=req.route,
                   delivery=req.delivery, reply_bytes=req.reply_bytes)


def not_started(e: OSError, duration_s: float) -> Result:
    """The result of a run whose hook could not be started."""
    return Result(None, False, duration_s, "", error=f"cannot start: {e.strerror}", transient=procs.transient(e))


class _Pipes:
    """The hook's stdin and output as two plain pipes: the payload fed as the pipe takes it, the last
    TAIL_BYTES of the output kept. Popen gets the child's ends as fds: its PIPE would wrap each end in a
    buffered file object never used (about a fifth of the parent's cost of a spawn).

    `reply_bytes` > 0: stdout gets a third pipe of its own, whose first reply_bytes + 1 bytes are kept
    (the rest read and dropped, so the hook never blocks on it); stderr alone goes to the tail then."""

    def __init__(self, payload: bytes, reply_bytes: int = 0) -> None:
        fds: list[int] = []
        try:
            for _ in range(2 if reply_bytes > 0 else 1):
                fds.extend(os.pipe2(os.O_CLOEXEC))
            fds.extend(os.pipe2(os.O_CLOEXEC))
        except OSError:
            for fd in fds:
                os.close(fd)
            raise
        self.child_in, self.in_fd = fds[-2:]
        self.out_fd, self.child_out = fds[:2]
        self.reply_fd = fds[2] if reply_bytes > 0 else -1
        self.child_reply: int | None = fds[3] if reply_bytes > 0 else None
        self.view, self.sent = memoryview(payload), 0
        self.tail = bytearray()
        self.reply, self.reply_bytes = bytearray(), reply_bytes
        self.in_open = self.out_open = True
        self.reply_open = reply_bytes > 0

    def handed_over(self) -> None:
        """The hook holds its ends now (or never will): ours are closed."""
        os.close(self.child_in)
        os.close(self.child_out)
        if self.child_reply is not None:
            os.close(self.child_reply)

    @property
    def open(self) -> bool:
        """Some output of the hook's may still come."""
        return self.out_open or self.reply_open

    def read_reply(self) -> bool:
        """Read the hook's stdout (with reply_bytes): False at its end."""
        chunk = os.read(self.reply_fd, 65536)
        if not chunk:
            self.reply_open = False
            return False
        room = self.reply_bytes + 1 - len(self.reply)
        if room > 0:
            self.reply += chunk[:room]
        return True

    def feed(self) -> bool:
        """Write what the pipe takes of the payload without blocking; True once all of it is written
        (or the script closed its stdin: its choice), stdin closed then. The first call writes it
        whole when it fits (the pipe holds 64 KiB), before any wait."""
        if self.sent < len(self.view):
            if self.sent == 0:
                os.set_blocking(self.in_fd, False)
            try:
                self.sent += os.write(self.in_fd, self.view[self.sent:self.sent + 65536])
            except BlockingIOError:
                pass
            except BrokenPipeError:
                self.sent = len(self.view)
        if self.sent >= len(self.view) and self.in_open:
            os.close(self.in_fd)
            self.in_open = False
        return not self.in_open

    def read(self) -> bool:
        """Read the output (readable or hung up: a read does not block); False at its end."""
        chunk = os.read(self.out_fd, 65536)
        if not chunk:
            self.out_open = False
            return False
        self.tail += chunk
        del self.tail[:-TAIL_BYTES]
        return True

    def close(self) -> None:
        if self.in_open:
            os.close(self.in_fd)
            self.in_open = False
        os.close(self.out_fd)
        if self.reply_fd >= 0:
            os.close(self.reply_fd)

    def output(self) -> str:
        return bytes(self.tail).decode("utf-8", "replace")


class _Watch:
    """One run's watch over its pipes and its exit: run -> term -> kill on a timeout or a cancel,
    run -> drain when the script exits (its background children may hold the output open)."""

    def __init__(self, hook: procs.Hook, pipes: _Pipes, deadline: float, kill_grace_s: float,
                 cancel: threading.Event | None, cancel_grace_s: float) -> None:
        self.hook, self.pipes, self.deadline, self.kill_grace_s = hook, pipes, deadline, kill_grace_s
        self.cancel, self.cancel_grace_s = cancel, cancel_grace_s
        self.stage = "run"
        self.timed_out = self.cancelled = self.exited = False
        self.pidfd: int | None = None

    def watch(self) -> None:
        """Feed, read and end the run until the script exited and its output closed, or the stages ran out.

        select.poll on the plain fds: selectors' key objects, a dict and an epoll fd per run cost more
        than the three fds watched here. The exit comes from the pidfd, not from a waitpid every turn.
        """
        pipes, poller = self.pipes, select.poll()
        poller.register(pipes.out_fd, select.POLLIN)
        if pipes.reply_open:
            poller.register(pipes.reply_fd, select.POLLIN)
        if not pipes.feed():
            poller.register(pipes.in_fd, select.POLLOUT)
        self.pidfd = self.hook.pidfd()
        if self.pidfd is not None:
            poller.register(self.pidfd, select.POLLIN)
        try:
            while (wait := self._turn(time.monotonic())) is not None:
                for fd, _ in poller.poll(wait * 1000):
                    if fd == pipes.out_fd:
                        if not pipes.read():
                            poller.unregister(fd)
                    elif fd == self.pidfd:
                        poller.unregister(fd)  # the script exited
                        self.exited = True
                    elif fd == pipes.reply_fd:
                        if not pipes.read_reply():
                            poller.unregister(fd)
                    elif pipes.in_open and pipes.feed():
                        poller.unregister(fd)
        finally:
            if self.pidfd is not None:
                os.close(self.pidfd)

    def _turn(self, now: float) -> float | None:
        """Move the stages on at `now`: how long to wait for the pipes next, None when the watch is over."""
        if not self.exited and self.pidfd is None:
            self.exited = self.hook.exited()
        if self.exited and not self.pipes.open:
            return None
        if self.exited and self.stage == "run":
            self.stage, self.deadline = "drain", now + DRAIN_S
        if self.cancel is not None and self.cancel.is_set() and self.stage in ("run", "drain") and not self.exited:
            self.cancelled = True
            self._stage("term", now + self.cancel_grace_s, signal.SIGTERM)
        if now >= self.deadline:
            if self.stage == "run":
                self.timed_out = True
                self._stage("term", now + self.kill_grace_s, signal.SIGTERM)
            elif self.stage == "term":
                self._stage("kill", now + 1.0, signal.SIGKILL)
            else:
                return None  # drained, or killed and a setsid'd grandchild still holds stdout
            return 0.0
        wait = self.deadline - now
        if self.pidfd is None:
            wait = min(wait, 0.05)
        if self.cancel is not None:
            wait = min(wait, 0.1)  # notice a cancel within 0.1 s
        return max(0.0, wait)

    def _stage(self, stage: str, deadline: float, sig: int) -> None:
        self.stage, self.deadline = stage, deadline
        self.hook.signal_group(sig)


def run(argv: Sequence[str], stdin: bytes, env: Mapping[str, str], timeout_s: float,
        cwd: str | None = None, kill_grace_s: float = KILL_GRACE_S, cancel: threading.Event | None = None,
        cancel_grace_s: float = KILL_GRACE_S, *, tracker: procs.Tracker | None = None,
        sandbox: Spawns | None = None, route: str | None = None, delivery: str | None = None,
        reply_bytes: int = 0) -> Result:
    """Run argv with `stdin` as input; on timeout SIGTERM the group, then SIGKILL after the grace.

    Setting `cancel` ends the run the same way (with `cancel_grace_s`) and marks it cancelled.
    Nothing the script started outlives the run: its group is killed when it ends, and with a
    `tracker` so are its children that left the group (setsid); `route` and `delivery` name the
    run in the tracker's journal. `sandbox` is the Landlock policy to start it under (None: none); one
    that cannot be built fails the run as not started.
    The service's hooks run through its launcher (launcher.py), which passes all of these.
    `reply_bytes` > 0: stdout apart from the tail, its first reply_bytes + 1 bytes in Result.stdout.
    """
    start = time.monotonic()
    try:
        pipes = _Pipes(stdin, reply_bytes)
    except OSError as e:
        return not_started(e, time.monotonic() - start)
    try:
        hook = procs.start(argv, pipes.child_in, pipes.child_out, env, cwd, policy=sandbox, tracker=tracker,
                           route=route, delivery=delivery, stdout=pipes.child_reply)
    except BaseException as e:
        pipes.close()
        if isinstance(e, OSError):
            return not_started(e, time.monotonic() - start)
        raise
    finally:
        pipes.handed_over()
    watch = _Watch(hook, pipes, start + timeout_s, kill_grace_s, cancel, cancel_grace_s)
    try:
        watch.watch()
    finally:
        pipes.close()
        code, leftovers = hook.reap()
    return Result(exit_code=code if code >= 0 else None, timed_out=watch.timed_out,
                  duration_s=time.monotonic() - start, output_tail=pipes.output(), cancelled=watch.cancelled,
                  signal=-code if code < 0 else None, leftovers=leftovers, stdout=bytes(pipes.reply))
