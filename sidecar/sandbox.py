"""The hook sandbox: read the system, write the hooks' own directory, /dev and (where no state lies
beneath them) /tmp and /var/tmp; never see the sidecar's state; no capabilities, no signals to it.

What is granted is grants.py's walk. An entry created later in a directory the walk listed (a
ConfigMap's new `..<timestamp>` directory) is not in a ruleset built before it, so every spawn first
re-checks those directories (a few stat calls): a change rebuilds the rulesets before the hook
starts. A spawn refused with EACCES anyway (it raced the change) rebuilds once and is tried again.

How a hook gets into it: a Landlock domain, no_new_privs and capabilities belong to a thread.
Each policy has one thread that drops its capabilities and restricts itself once; hooks are
started from threads it starts (with scopes, one per spawn, one domain further down), so they
inherit all of it. subprocess keeps its cheap vfork path (a preexec_fn would force a full fork of
the sidecar, and run Python in the child of a threaded process); the cost per spawn is a hand-off
between threads. Network (TCP) is not restricted: hooks call APIs.
"""

from __future__ import annotations

import _thread
import errno
import functools
import os
import queue
import subprocess
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

from . import landlock, logs
from .grants import RECHECK, TEMP_DIRS, View, default_writes, exposed, walk
from .landlock import SYS_RESTRICT_SELF  # noqa: F401  (bench.spawn_cost applies a ruleset in a preexec_fn)
from .spawning import Forks, Process, plain, popen


class Options(Protocol):
    """A route's sandbox options (config.Route has them): none when `sandbox` is false, else the default
    policy widened by its read and write grants."""

    @property
    def sandbox(self) -> bool: ...
    @property
    def sandbox_read(self) -> tuple[str, ...]: ...
    @property
    def sandbox_write(self) -> tuple[str, ...]: ...


# A spawn handed to a policy's thread: (popen's arguments, where its result goes, a lock held until it is there)
_Args = tuple[Sequence[str], int, int, Mapping[str, str], "str | None", "int | None"]
_Job = tuple[_Args, list[Any], Any]

SANDBOX_DENIALS = ("Permission denied", "Read-only file system")  # what a denied write looks like in a hook's output
DENIED_REBUILD_S = 1.0  # an EACCES spawn rebuilds at most this often (a script that is simply not executable)


def abi() -> int:
    """The kernel's Landlock ABI version; 0 when it has none or it is disabled."""
    return landlock.probe()[0]


@dataclass(frozen=True)
class Grants:
    """What one policy allows: read+execute, full access, and what must stay out of reach."""

    read: tuple[str, ...] = ()  # besides everything under / that is not hidden
    write: tuple[str, ...] = ()
    hidden: tuple[str, ...] = ()


class Policy:
    """A built ruleset, applied by its own thread to itself; spawn() starts a process from that thread.

    `level` 0: no Landlock, the thread only drops capabilities and sets no_new_privs.
    """

    def __init__(self, grants: Grants, level: int, view: View | None = None, owner: Sandbox | None = None) -> None:
        self.grants = grants
        self.rules = 0
        self.dropped = ""  # what the thread did to its capabilities
        self.fd = -1  # the ruleset (kept for the fork server, whose children enter it themselves)
        self._owner = owner  # checked before each spawn, asked again after an EACCES
        fd = self._build(grants, level, view) if level else -1
        # With scopes, each spawn gets a thread of its own one domain below this policy's: a hook may
        # signal only its own domain, so not this thread, and its own spawner only until it ends.
        self._layer = landlock.create_layer(level) if level and landlock.scopes(level) else -1
        if self._layer >= 0:
            weakref.finalize(self, os.close, self._layer)
        if fd >= 0:
            self.fd = fd
            weakref.finalize(self, os.close, fd)
        self._jobs: queue.SimpleQueue[_Job | None]
        self._jobs = queue.SimpleQueue()
        self._state = threading.Lock()
        self._replacement: Callable[[], Policy | None] | None = None  # set when retired
        ready: list[BaseException | None] = []
        applied = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(fd, ready, applied), name="sandbox-spawn",
                                        daemon=True)
        self._thread.start()
        applied.wait()
        if ready[0] is not None:
            raise ready[0]

    def _build(self, grants: Grants, level: int, view: View | None = None) -> int:
        handled = landlock.handled(level)
        fd = landlock.create_ruleset(level)
        try:
            view = walk(grants.hidden) if view is None else view
            for path in view.paths:
                self.rules += landlock.add_rule(fd, path, landlock.READ & handled)
            for path in grants.read:  # a route's own widening: granted as asked
                self.rules += landlock.add_rule(fd, path, landlock.READ & handled)
            for path in grants.write:
                self.rules += landlock.add_rule(fd, path, handled)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _serve(self, fd: int, ready: list[BaseException | None], applied: threading.Event) -> None:
        try:
            # This thread only: the sidecar's other threads keep their capabilities and no domain.
            self.dropped = landlock.drop_capabilities()
            if fd >= 0:
                landlock.restrict_self(fd)
            else:
                landlock.no_new_privs()
            ready.append(None)
        except OSError as e:
            ready.append(e)
            return
        finally:
            applied.set()
        while (job := self._jobs.get()) is not None:
            if self._layer < 0:
                _serve_one(job)
                continue
            try:
                _thread.start_new_thread(self._layered, (job,))
            except RuntimeError:  # no thread to be had: as a spawn that found no process (retried)
                job[1].append((False, OSError(errno.EAGAIN, "cannot start a thread to spawn from")))
                job[2].release()

    def _layered(self, job: _Job) -> None:
        try:
            landlock.restrict_self(self._layer, first=False)
        except OSError as e:
            job[1].append((False, e))
            job[2].release()
            return
        _serve_one(job)

    def spawn(self, argv: Sequence[str], stdin: int, output: int, env: Mapping[str, str], cwd: str | None,
              retry_denied: bool = True, stdout: int | None = None, forks: Forks | None = None) -> Process:
        """Start a hook (popen's arguments) under this policy: from the sandboxed thread, whose domain it
        inherits, or by `forks`, whose child enters this ruleset itself.

        Refused with EACCES (the script, or the directory it runs in, is not in this ruleset): the
        sandbox rebuilds once and the hook is started again under the new ruleset.
        """
        if self._owner is not None:
            self._owner.check()  # a changed directory retires this policy: the spawn goes to its successor
        args: _Args = (argv, stdin, output, env, cwd, stdout)
        job: _Job | None = None
        if forks is None:  # handed to this policy's thread
            done = _thread.allocate_lock()  # a one-shot signal, lighter than an Event's condition
            done.acquire()
            job = (args, [], done)
        with self._state:
            replacement = self._replacement
            if replacement is None and job is not None:
                self._jobs.put(job)  # before a retire()'s end mark: it is served
        if replacement is not None:
            # Retired by a rebuild between the caller's lookup and now: the rebuilt policy spawns it.
            successor = replacement()
            if successor is None:
                return plain(forks, *args)
            return successor.spawn(*args[:5], retry_denied=retry_denied, stdout=stdout, forks=forks)
        try:
            if job is None:
                assert forks is not None
                return forks.spawn(*args, ruleset=self.fd, sandboxed=True)
            job[2].acquire()
            ok, value = job[1][0]
            if not ok:
                raise value
            return cast("subprocess.Popen[bytes]", value)
        except PermissionError:
            successor = self._owner.denied(self) if retry_denied and self._owner is not None else None
            if successor is None:
                raise
            return successor.spawn(*args[:5], retry_denied=False, stdout=stdout, forks=forks)

    def retire(self, replacement: Callable[[], Policy | None]) -> None:
        """Let the thread end once the spawns handed to it are done; later ones go to `replacement()`."""
        with self._state:
            self._replacement = replacement
            self._jobs.put(None)


def _serve_one(job: _Job) -> None:
    args, box, done = job
    try:
        box.append((True, popen(*args)))
    except BaseException as e:  # handed to the caller's thread
        box.append((False, e))
    done.release()


Key = tuple[tuple[str, ...], tuple[str, ...]]


@dataclass
class Sandbox:
    """The service's sandbox: default grants, per-route widenings, what was narrowed or cannot be hidden."""

    level: int
    reason: str  # why Landlock is not applied ("" when it is)
    hidden: tuple[str, ...] = ()
    write: tuple[str, ...] = ()
    config_dir: str = ""
    private: str = ""  # the hooks' own HOME and TMPDIR live here (write-granted)
    enabled: bool = True  # False: --sandbox off, hooks start as the sidecar's other children
    narrowed: list[tuple[str, str]] = field(default_factory=list)  # (default grant left out, why)
    exposed: list[str] = field(default_factory=list)
    dropped: str = ""  # what the spawn threads did to their capabilities
    denied_rebuild_s: float = DENIED_REBUILD_S
    _view: View | None = None
    _built_at: float = 0.0
    _policies: dict[Key, Policy | None] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def active(self) -> bool:
        """Landlock applies (else hooks at most lose their capabilities)."""
        return not self.reason

    @property
    def scoped(self) -> tuple[str, ...]:
        """What hooks may not reach outside their domain (signals, abstract sockets): ABI 6+."""
        bits = landlock.scopes(self.level) if self.active else 0
        return tuple(name for name, bit in landlock.SCOPES.items() if bits & bit)

    def policy(self, read: Iterable[str] = (), write: Iterable[str] = ()) -> Policy | None:
        """The policy for the default grants plus `read`/`write` (built once, then cached)."""
        if not self.enabled:
            return None
        key = (tuple(sorted(read)), tuple(sorted(write)))
        with self._lock:
            return self._policy(key)

    def _policy(self, key: Key) -> Policy | None:
        if key not in self._policies:
            if self.active and self._view is None:
                self._view, self._built_at = walk(self.hidden), time.monotonic()
            grants = Grants(read=key[0], write=(*self.write, *key[1]), hidden=self.hidden)
            self._policies[key] = Policy(grants, self.level if self.active else 0, self._view, self)
        return self._policies[key]

    def hint(self, route: Options | None) -> str | None:
        """For a run of `route` whose output looks like a denied write (SANDBOX_DENIALS): why, and the fix;
        None where the sandbox did not apply."""
        if not self.active or (route is not None and not route.sandbox):
            return None
        temp = ", ".join(w for w in self.write if w in TEMP_DIRS)
        return (f"the hook runs in the sandbox (Landlock), which lets it write only its own $HOME and $TMPDIR,"
                f" /dev{', ' + temp if temp else ''} and the route's sandbox.write paths: grant the directory it"
                " writes with `sandbox: {write: [/path]}` on the route (see README, Hooks)")

    def check(self) -> str:
        """Before a spawn: rebuild when a directory the walk listed has changed; what changed ("" if none)."""
        view = self._view
        changed = view.changed() if view is not None else ""
        if changed == RECHECK and view is not None and (settled := view.settled()) is not None:
            with self._lock:
                if self._view is view:
                    self._view = settled  # what the walk listed is all there is: its policies hold
            return ""
        if changed:
            with self._lock:
                if self._view is view:
                    logs.debug("hooks.sandbox_rebuilt", changed=changed)
                    self._rebuild()
        return changed

    def denied(self, failed: Policy) -> Policy | None:
        """A spawn under `failed` got EACCES: its successor after a rebuild (None: none, or just rebuilt)."""
        with self._lock:
            key = next((k for k, p in self._policies.items() if p is failed), None)
            if key is None:  # already replaced by a rebuild since
                return None
            if time.monotonic() - self._built_at < self.denied_rebuild_s:
                return None
            logs.debug("hooks.sandbox_rebuilt", changed="(a spawn was refused: EACCES)")
            self._rebuild()
            return self._policy(key)

    def rebuild(self, hidden: Iterable[str | os.PathLike[str]] | None = None) -> bool:
        """Walk again and rebuild the policies (a reload: secret files may have moved); True if the
        hidden paths changed."""
        new = tuple(sorted({os.path.abspath(h) for h in hidden})) if hidden is not None else self.hidden
        with self._lock:
            changed, self.hidden = new != self.hidden, new
            self._rebuild()
            if self.enabled:
                self._policy(((), ()))  # the default now, not in the next hook's spawn
        return changed

    def _rebuild(self) -> None:
        """Under the lock: new default grants and view; the old policies retire into rebuilt ones."""
        self.write, self.narrowed = default_writes(self.state(), self.private)
        self.exposed = exposed(self.hidden, self.write)
        self._view, self._built_at = None, time.monotonic()
        old, self._policies = self._policies, {}
        for key, p in old.items():
            if p is not None:
                p.retire(functools.partial(self.policy, *key))

    def state(self) -> tuple[str, ...]:
        """Everything hooks may not write: the hidden paths and the config directory."""
        return (*((self.config_dir,) if self.config_dir else ()), *self.hidden)


@dataclass(frozen=True)
class Ruled:
    """A run's policy by its grants: the sandbox builds it (or finds it built) when the hook is spawned, so
    a failure to build fails that spawn (never a hook started unsandboxed). No sandbox or no grants (a
    route's `sandbox: false`): started as the sidecar's other children. `forks`: started by the fork server."""

    box: Sandbox | None
    grants: tuple[Sequence[str], Sequence[str]] | None  # the route's (read, write)
    forks: Forks | None = None

    def spawn(self, argv: Sequence[str], stdin: int, output: int, env: Mapping[str, str], cwd: str | None,
              retry_denied: bool = True, stdout: int | None = None) -> Process:
        policy = self.box.policy(*self.grants) if self.box is not None and self.grants is not None else None
        if policy is None:  # no sandbox for this run, or the sandbox is off
            return plain(self.forks, argv, stdin, output, env, cwd, stdout)
        return policy.spawn(argv, stdin, output, env, cwd, retry_denied, stdout=stdout, forks=self.forks)


def create(hidden: Iterable[str | os.PathLike[str]], config_dir: str | os.PathLike[str], enabled: bool = True,
           private: str | os.PathLike[str] = "") -> Sandbox:
    """The sandbox for this kernel: without Landlock (with the reason) where it is missing or disabled."""
    level, missing = landlock.probe()
    reason = "disabled (--sandbox off, SIDECAR_SANDBOX=off)" if not enabled else missing
    hidden_t = tuple(sorted({os.path.abspath(h) for h in hidden}))
    box = Sandbox(level=level, reason=reason, hidden=hidden_t, config_dir=os.path.abspath(config_dir),
                  private=os.fspath(private), enabled=enabled)
    box.write, box.narrowed = default_writes(box.state(), box.private)
    box.exposed = exposed(hidden_t, box.write)
    if enabled:
        try:
            default = box.policy()  # build the default now: a failure is reported at start, not at the first hook
            box.dropped = default.dropped if default is not None else ""
        except OSError as e:
            box.reason = f"cannot build the Landlock ruleset: {e}"
            box._policies.clear()
    return box

