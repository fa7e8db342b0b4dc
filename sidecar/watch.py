"""One hook run's pipes and its watch: the payload fed as the pipe takes it, the output's tail kept, and
the stages of its end (run -> term -> kill at the deadline or a cancel, run -> drain once the script
exited). procs.run drives it between the start and the reap; nothing here knows a process but through
the three calls of `Watched`."""

from __future__ import annotations

import os
import select
import signal
import threading
import time
from dataclasses import dataclass
from typing import Protocol

TAIL_BYTES = 4096
# After the script exits, its background children may hold stdout open; read
# what they write for this long, then stop waiting for them.
DRAIN_S = 0.5


@dataclass(frozen=True)
class Ends:
    """When and how a run is ended: its deadline, the grace after its SIGTERM, and a cancel (a shutdown)
    with a grace of its own."""

    deadline: float  # time.monotonic()
    kill_grace_s: float
    cancel: threading.Event | None = None
    cancel_grace_s: float = 5.0
    reply_bytes: int = 0  # > 0: stdout kept apart, its first reply_bytes + 1 bytes (a sender waits for them)


class Watched(Protocol):
    """What the watch needs of a started hook (procs.Hook)."""

    def pidfd(self) -> int | None: ...
    def exited(self) -> bool: ...
    def signal_group(self, sig: int) -> None: ...


class Pipes:
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


class Watch:
    """One run's watch over its pipes and its exit: run -> term -> kill on a timeout or a cancel,
    run -> drain when the script exits (its background children may hold the output open)."""

    def __init__(self, hook: Watched, pipes: Pipes, ends: Ends) -> None:
        self.hook, self.pipes, self.deadline, self.kill_grace_s = hook, pipes, ends.deadline, ends.kill_grace_s
        self.cancel, self.cancel_grace_s = ends.cancel, ends.cancel_grace_s
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
