"""How the service starts a hook: one object made at start (isolation.start) and handed to whoever
runs hooks (the workers, then attempts.run). It holds the process tracker (with its watchdog), the
sandbox and the hooks' own HOME and TMPDIR; what a run needs of its route comes in as values.

No module state: a launcher that is not handed over does nothing, and a test (or a spawner process
of its own) makes another. `Launcher()` starts hooks unsandboxed and untracked, as runner.run does.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from . import procs, runner
from .config import Route
from .sandbox import SANDBOX_DENIALS, Policy, Sandbox
from .spawner import Request, Spawner
from .watchdog import Guard


@dataclass
class Launcher:
    """Starts the service's hooks: tracked, sandboxed by route, in their own HOME and TMPDIR."""

    tracker: procs.Tracker | None = None  # ends every process of a run (and a crashed sidecar's leftovers)
    sandbox: Sandbox | None = None  # None: hooks start as the sidecar's other children
    private: Mapping[str, str] = field(default_factory=dict)  # the hooks' HOME and TMPDIR
    guard: Guard | None = None  # the watchdog that ends the runs when the sidecar dies
    spawner: Spawner | None = None  # the process that starts and watches hooks (None: this one does)

    def env(self, extra: Mapping[str, str]) -> dict[str, str]:
        """A hook's whole environment: PATH and LANG from the sidecar, its own HOME and TMPDIR, then `extra`."""
        return runner.hook_env(extra, private=self.private)

    def policy(self, route: Route | None) -> Policy | None:
        """The sandbox policy for `route` of the live table (None: a route it does not have, the default)."""
        return self.sandbox.for_route(route) if self.sandbox is not None else None

    def grants(self, route: Route | None) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
        """What the spawner builds `route`'s policy from (Sandbox.for_route's choice as values): its read
        and write grants, None for no policy (`sandbox: false`, or the sandbox off)."""
        if self.sandbox is None or not self.sandbox.enabled or (route is not None and not route.sandbox):
            return None
        return (route.sandbox_read, route.sandbox_write) if route is not None else ((), ())

    def run(self, route: Route, stdin: bytes, extra: Mapping[str, str], *, live: Route | None, delivery: str,
            cwd: str | None = None, cancel: threading.Event | None = None,
            cancel_grace_s: float = runner.KILL_GRACE_S, reply_bytes: int = 0) -> runner.Result:
        """Run `route`'s hook (its argv, within its timeout) with `extra` added to the hooks' environment,
        tracked, under the policy of `live`; a failure that looks like a denied write gets a hint.

        `live` is the live table's route of that name, whose sandbox options apply (a stored job carries
        none); None when the table has no such route: the default sandbox then. The route's name and
        `delivery` name the run in the tracker's journal. `reply_bytes` > 0: the hook's stdout is kept
        apart (Result.stdout, at most reply_bytes + 1 bytes: one more says "too long"); stderr alone
        goes to the output tail then.
        """
        if self.spawner is not None:
            grants = self.grants(live)
            result = self.spawner.run(Request(route.argv, self.env(extra), route.timeout_s, cwd, cancel_grace_s, grants,
                                              route.name, delivery, reply_bytes), stdin, cancel)
            sandboxed = grants is not None
        else:
            start = time.monotonic()
            try:
                # A route's policy is built at its first run: a failure there fails the run, never unsandboxed.
                box = self.policy(live)
            except OSError as e:
                return runner.not_started(e, time.monotonic() - start)
            result = runner.run(route.argv, stdin, self.env(extra), route.timeout_s, cwd=cwd, cancel=cancel,
                                cancel_grace_s=cancel_grace_s, tracker=self.tracker, sandbox=box, route=route.name,
                                delivery=delivery, reply_bytes=reply_bytes)
            sandboxed = box is not None
        if result.ok or result.cancelled or not sandboxed or self.sandbox is None:
            return result
        said = result.output_tail + result.error
        if not any(d in said for d in SANDBOX_DENIALS):  # not what a denied write looks like
            return result
        return replace(result, hint=self.sandbox.hint(live))

    def close(self) -> None:
        """At shutdown, after the last run ended: nothing left to recover from."""
        if self.spawner is not None:
            self.spawner.close()
        if self.tracker is not None:
            self.tracker.close()
