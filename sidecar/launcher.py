"""How the service starts a hook: one object made at start (isolation.start) and handed to the
scheduler, which carries each hook job through it (a carry.Carrier). It holds the process tracker
(with its watchdog), the sandbox, the hooks' own HOME and TMPDIR and the fork server when there is
one (forkserver.py); runner.InProcess starts each run through them. What a run needs comes in as values.

No module state: a launcher that is not handed over does nothing, and a test makes another.
`Launcher()` starts hooks unsandboxed and untracked.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field

from . import procs
from .carry import Job
from .config import Route
from .config_context import header_variable
from .forkserver import ForkServer
from .runner import InProcess, Request, Result
from .sandbox import SANDBOX_DENIALS, Sandbox
from .watchdog import Guard

PASSED_THROUGH = ("PATH", "HOME", "LANG")
STOP_KILL_GRACE_S = 3.0  # a run interrupted by a shutdown gets this long after its SIGTERM
CE_FACTS = ("id", "source", "type", "subject", "time")  # a CloudEvent's attributes hooks get as WEBHOOK_CE_*


@dataclass
class Launcher:
    """Starts the service's hooks: tracked, sandboxed by route, in their own HOME and TMPDIR."""

    tracker: procs.Tracker | None = None  # ends every process of a run (and a crashed sidecar's leftovers)
    sandbox: Sandbox | None = None  # None: hooks start as the sidecar's other children
    private: Mapping[str, str] = field(default_factory=dict)  # the hooks' HOME and TMPDIR
    guard: Guard | None = None  # the watchdog that ends the runs when the sidecar dies
    forks: ForkServer | None = None  # the process that forks hooks for this one (None: subprocess here)

    def __post_init__(self) -> None:
        self.starter = InProcess(self.tracker, self.sandbox, self.forks)
        # The sidecar's own PATH and LANG, read once: os.environ decodes at every lookup.
        self._passed = {k: os.environ[k] for k in PASSED_THROUGH if k in os.environ}
        self._passed.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")

    def grants(self, route: Route | None) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
        """What `route`'s policy is built from (the live table's route: its read and write grants), None for
        no policy (`sandbox: false`, or the sandbox off); a route the table lacks gets the default."""
        if self.sandbox is None or not self.sandbox.enabled or (route is not None and not route.sandbox):
            return None
        return (route.sandbox_read, route.sandbox_write) if route is not None else ((), ())

    def carry(self, job: Job, body: bytes, live: Route | None, cancel: threading.Event | None,
              reply_bytes: int = 0) -> Result:
        """Run the job's route's hook (its argv, within its timeout) with `body` on stdin, tracked, under the
        policy of `live`; a failure that looks like a denied write gets a hint.

        `live` is the live table's route of that name, whose sandbox options apply (a stored job carries
        none); None when the table has no such route: the default sandbox then. The route's name and the
        delivery name the run in the tracker's journal. `reply_bytes` > 0: the hook's stdout is kept apart
        (Result.stdout, at most reply_bytes + 1 bytes: one more says "too long"); stderr alone goes to the
        output tail then.
        """
        route, grants = job.route, self.grants(live)
        req = Request(route.argv, self.env(job), route.timeout_s, job.cwd or None, STOP_KILL_GRACE_S, grants,
                      route.name, job.delivery, reply_bytes)
        result = self.starter.launch(req, body, cancel)
        hint = None
        if not (result.ok or result.cancelled) and self.sandbox is not None and grants is not None and any(
                d in result.output_tail + result.error for d in SANDBOX_DENIALS):
            hint = self.sandbox.hint(live)  # now: a rebuild may have changed the default write grants it names
        result.hint = hint  # the starter's result, ours alone (dataclasses.replace costs more than the rest here)
        result.fields = dict(exit_code=result.exit_code, signal=result.signal,
                             duration_ms=round(result.duration_s * 1000, 1), output_tail=result.output_tail or None,
                             error=result.error or None, leftovers=result.leftovers or None, hint=hint)
        return result

    def env(self, job: Job) -> dict[str, str]:
        """A hook's whole environment: PATH and LANG from the sidecar, its own HOME and TMPDIR, the route's
        env and env_from values, then the WEBHOOK_* facts and the request's passed headers and query (no
        secrets)."""
        env = dict(self._passed)
        env.update(self.private)
        env.update(job.route.env)
        ctx, name = job.context, job.route.name
        env.update(ctx.route_env(name))
        env.update(WEBHOOK_EVENT=job.event, WEBHOOK_DELIVERY=job.delivery, WEBHOOK_PROVIDER=job.provider,
                   WEBHOOK_ENDPOINT=job.endpoint, WEBHOOK_ROUTE=name, WEBHOOK_ATTEMPT=str(job.attempt),
                   WEBHOOK_REQUEST_ID=job.request_id)
        if job.replica:
            env["WEBHOOK_REPLICA"] = job.replica
        if job.reply:
            env["WEBHOOK_REPLY"] = "1"
        env.update((header_variable(header), value) for header, value in ctx.headers)
        if ctx.query is not None:
            env["WEBHOOK_QUERY"] = ctx.query
        if job.route.lane is not None:
            env["WEBHOOK_LANE"] = ctx.lane(name)
        env.update((f"WEBHOOK_CE_{key.upper()}", value) for key, value in ctx.cloudevent if key in CE_FACTS and value)
        return env

    def close(self) -> None:
        """At shutdown, after the last run ended: nothing left to recover from."""
        if self.forks is not None:
            self.forks.close()
        if self.tracker is not None:
            self.tracker.close()
