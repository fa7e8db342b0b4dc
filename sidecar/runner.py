"""Run one hook: payload on stdin, a clean environment, a deadline for the whole group.

The runner turns a run's request into its Result: procs.run opens the pipes, starts the hook
(tracked, then spawning.spawn under the route's policy), watches it (watch.py) until it ends or its
deadline or a cancel ends it, and reaps what is left of it. Nothing below calls back into it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import procs
from .forkserver import ForkServer
from .sandbox import Ruled, Sandbox
from .spawning import Spawns
from .watch import Ends

KILL_GRACE_S = 5.0
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
        ruled = Ruled(self.sandbox, req.policy, self.forks)
        return run(req.argv, stdin, req.env, req.timeout_s, cwd=req.cwd, cancel=cancel,
                   cancel_grace_s=req.cancel_grace_s, tracker=self.tracker, sandbox=ruled, route=req.route,
                   delivery=req.delivery, reply_bytes=req.reply_bytes)


def not_started(e: OSError, duration_s: float) -> Result:
    """The result of a run whose hook could not be started."""
    return Result(None, False, duration_s, "", error=f"cannot start: {e.strerror}", transient=procs.transient(e))


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
        code, leftovers, watch = procs.run(argv, stdin, env, cwd, Ends(start + timeout_s, kill_grace_s, cancel,
                                                                       cancel_grace_s, reply_bytes),
                                           policy=sandbox, tracker=tracker, route=route, delivery=delivery)
    except OSError as e:
        return not_started(e, time.monotonic() - start)
    return Result(exit_code=code if code >= 0 else None, timed_out=watch.timed_out,
                  duration_s=time.monotonic() - start, output_tail=watch.pipes.output(), cancelled=watch.cancelled,
                  signal=-code if code < 0 else None, leftovers=leftovers, stdout=bytes(watch.pipes.reply))
