"""Landlock for hooks: read the system, write /tmp, $HOME and /dev, never see the sidecar's state.

Landlock is an allow-list that a process applies to itself and passes on to all it
starts. Nothing can be carved out of a grant, so "read everything but the spool,
.env and the secret files" is built as: walk from / down the directories that lead
to hidden state, grant every other entry on the way whole, and grant nothing on
the way itself. Entries created later in those directories are not granted until
the ruleset is rebuilt (at a reload that changes what is hidden).

How a hook gets into it: a Landlock domain and no_new_privs belong to a thread.
Each policy has one thread that restricts itself once, and hooks are started
from that thread, so they inherit the domain. subprocess keeps its cheap
vfork path (a preexec_fn would force a full fork of the sidecar, and run Python
in the child of a threaded process); the cost per spawn is a hand-off between
two threads. Network (TCP) is not restricted: hooks call APIs.
"""

from __future__ import annotations

import _thread
import ctypes
import errno
import os
import queue
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from . import procs

T = TypeVar("T")

SYS_CREATE_RULESET, SYS_ADD_RULE, SYS_RESTRICT_SELF = 444, 445, 446
CREATE_RULESET_VERSION = 1
RULE_PATH_BENEATH = 1

EXECUTE, WRITE_FILE, READ_FILE, READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
REMOVE_DIR, REMOVE_FILE, MAKE_CHAR, MAKE_DIR, MAKE_REG = 1 << 4, 1 << 5, 1 << 6, 1 << 7, 1 << 8
MAKE_SOCK, MAKE_FIFO, MAKE_BLOCK, MAKE_SYM = 1 << 9, 1 << 10, 1 << 11, 1 << 12
REFER, TRUNCATE, IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15
FILE_RIGHTS = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV
READ = EXECUTE | READ_FILE | READ_DIR


def _handled(abi: int) -> int:
    """Every filesystem right the kernel's ABI knows: all of them are denied unless granted."""
    rights = (1 << 13) - 1
    if abi >= 2:
        rights |= REFER
    if abi >= 3:
        rights |= TRUNCATE
    if abi >= 5:
        rights |= IOCTL_DEV
    return rights


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long


def _call(*args: Any) -> int:
    ret = int(_syscall(*args))
    if ret < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return ret


def abi() -> int:
    """The kernel's Landlock ABI version; 0 when it has none or it is disabled."""
    return _probe()[0]


def _probe() -> tuple[int, str]:
    """(ABI version, why there is none)."""
    try:
        return _call(ctypes.c_long(SYS_CREATE_RULESET), None, ctypes.c_size_t(0),
                     ctypes.c_uint32(CREATE_RULESET_VERSION)), ""
    except OSError as e:
        if e.errno == errno.EOPNOTSUPP:
            return 0, "Landlock is built into the kernel but not enabled (add landlock to the lsm= boot parameter)"
        if e.errno == errno.ENOSYS:
            return 0, "the kernel has no Landlock (needs Linux 5.13+), or a seccomp profile blocks its system calls"
        return 0, f"Landlock is not available: {e.strerror}"


def _real(path: str | os.PathLike[str]) -> str:
    return os.path.realpath(os.fspath(path))


def _within(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


@dataclass(frozen=True)
class Grants:
    """What one policy allows: read+execute, full access, and what must stay out of reach."""

    read: tuple[str, ...] = ()  # besides everything under / that is not hidden
    write: tuple[str, ...] = ()
    hidden: tuple[str, ...] = ()


class Policy:
    """A built ruleset, applied by its own thread to itself; spawn() starts a process from that thread."""

    def __init__(self, grants: Grants, level: int) -> None:
        self.grants = grants
        self.rules = 0
        fd = self._build(grants, level)
        # (what to run, where its result goes, a lock held until it is there)
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], list[Any], Any] | None]
        self._jobs = queue.SimpleQueue()
        self._state = threading.Lock()
        self._replacement: Callable[[], Policy | None] | None = None  # set when retired
        ready: list[BaseException | None] = []
        applied = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(fd, ready, applied), name="sandbox-spawn",
                                        daemon=True)
        self._thread.start()
        applied.wait()
        os.close(fd)
        if ready[0] is not None:
            raise ready[0]

    def _build(self, grants: Grants, level: int) -> int:
        handled = _handled(level)
        attr = ctypes.c_uint64(handled)  # only filesystem rights: network and scopes stay unrestricted
        fd = _call(ctypes.c_long(SYS_CREATE_RULESET), ctypes.byref(attr), ctypes.c_size_t(8), ctypes.c_uint32(0))
        try:
            self._grant_all_but(fd, "/", {_real(h) for h in grants.hidden}, READ & handled)
            for path in grants.read:  # a route's own widening: granted as asked
                self._rule(fd, path, READ & handled)
            for path in grants.write:
                self._rule(fd, path, handled)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _rule(self, ruleset: int, path: str, access: int) -> None:
        try:
            target = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except OSError:
            return  # gone, or not ours to open: nothing to grant
        try:
            if not os.path.isdir(f"/proc/self/fd/{target}"):
                access &= FILE_RIGHTS
            rule = _PathBeneath(access, target)
            _call(ctypes.c_long(SYS_ADD_RULE), ctypes.c_int(ruleset), ctypes.c_int(RULE_PATH_BENEATH),
                  ctypes.byref(rule), ctypes.c_uint32(0))
            self.rules += 1
        except OSError:
            pass  # a kind of file Landlock has no rule for: it stays denied
        finally:
            os.close(target)

    def _grant_all_but(self, ruleset: int, top: str, hidden: set[str], access: int) -> None:
        real_top = _real(top)
        if real_top in hidden or any(_within(real_top, h) for h in hidden):
            return
        if not any(_within(h, real_top) for h in hidden):
            self._rule(ruleset, top, access)
            return
        # A directory on the way to hidden state: grant its other entries, not itself.
        try:
            entries = list(os.scandir(top))
        except OSError:
            return
        for entry in entries:
            real = _real(entry.path)
            if real in hidden:
                continue
            if any(_within(h, real) for h in hidden):
                if entry.is_dir(follow_symlinks=False):
                    self._grant_all_but(ruleset, entry.path, hidden, access)
                continue  # a symlink to a directory on the way: reached through its real path
            self._rule(ruleset, entry.path, access)

    def _serve(self, fd: int, ready: list[BaseException | None], applied: threading.Event) -> None:
        try:
            procs.prctl(procs.PR_SET_NO_NEW_PRIVS, 1)  # this thread only, as the domain below
            _call(ctypes.c_long(SYS_RESTRICT_SELF), ctypes.c_int(fd), ctypes.c_uint32(0))
            ready.append(None)
        except OSError as e:
            ready.append(e)
            return
        finally:
            applied.set()
        while (job := self._jobs.get()) is not None:
            fn, box, done = job
            try:
                box.append((True, fn()))
            except BaseException as e:  # handed to the caller's thread
                box.append((False, e))
            done.release()

    def spawn(self, fn: Callable[[], T]) -> T:
        """Run `fn` (a Popen) on the sandboxed thread: what it starts inherits the domain."""
        box: list[Any] = []
        done = _thread.allocate_lock()  # a one-shot signal, lighter than an Event's condition
        done.acquire()
        with self._state:
            replacement = self._replacement
            if replacement is None:
                self._jobs.put((fn, box, done))  # before a retire()'s end mark: it is served
        if replacement is not None:
            # Retired by a rebuild between the caller's lookup and now: the rebuilt policy spawns it.
            successor = replacement()
            return successor.spawn(fn) if successor is not None else fn()
        done.acquire()
        ok, value = box[0]
        if not ok:
            raise value
        return value  # type: ignore[no-any-return]

    def retire(self, replacement: Callable[[], Policy | None]) -> None:
        """Let the thread end once the spawns handed to it are done; later ones go to `replacement()`."""
        with self._state:
            self._replacement = replacement
            self._jobs.put(None)


@dataclass
class Sandbox:
    """The service's sandbox: default grants, per-route widenings, what cannot be hidden."""

    level: int
    reason: str  # why not sandboxed ("" when sandboxed)
    hidden: tuple[str, ...] = ()
    write: tuple[str, ...] = ()
    exposed: list[str] = field(default_factory=list)
    _policies: dict[tuple[tuple[str, ...], tuple[str, ...]], Policy | None] = field(default_factory=dict)
    # The loaded table's routes that leave the default: (endpoint, route name) -> route.
    _routes: dict[tuple[str, str], Any] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def active(self) -> bool:
        return not self.reason

    def policy(self, read: Iterable[str] = (), write: Iterable[str] = ()) -> Policy | None:
        """The policy for the default grants plus `read`/`write` (built once, then cached)."""
        if not self.active:
            return None
        key = (tuple(sorted(read)), tuple(sorted(write)))
        with self._lock:
            if key not in self._policies:
                grants = Grants(read=key[0], write=(*self.write, *key[1]), hidden=self.hidden)
                self._policies[key] = Policy(grants, self.level)
            return self._policies[key]

    def for_route(self, route: Any) -> Policy | None:
        """A route's policy: None for `sandbox: false`, widened by its `sandbox: {read, write}`."""
        if not getattr(route, "sandbox", True):
            return None
        return self.policy(getattr(route, "sandbox_read", ()), getattr(route, "sandbox_write", ()))

    def set_table(self, endpoints: Mapping[str, Any]) -> None:
        """Remember which routes of the live table opt out or widen (looked up per run by name)."""
        self._routes = {(path, r.name): r for path, ep in endpoints.items() for r in ep.routes
                        if not r.sandbox or r.sandbox_read or r.sandbox_write}

    def for_env(self, env: Mapping[str, str]) -> Policy | None:
        """The policy for a hook's environment: its route's (by WEBHOOK_ENDPOINT and WEBHOOK_ROUTE, in the
        loaded table, never from a stored job), else the default."""
        route = self._routes.get((env.get("WEBHOOK_ENDPOINT", ""), env.get("WEBHOOK_ROUTE", "")))
        return self.for_route(route) if route is not None else self.policy()

    def refresh(self, hidden: Iterable[str | os.PathLike[str]]) -> bool:
        """New hidden paths (a reload changed the secret files): rebuild the policies; True if changed."""
        new = tuple(sorted({_real(h) for h in hidden}))
        if new == self.hidden:
            return False
        with self._lock:
            self.hidden = new
            self.exposed = exposed(new, self.write)
            old, self._policies = self._policies, {}
        for key, p in old.items():
            if p is not None:
                p.retire(lambda key=key: self.policy(*key))
        return True


def exposed(hidden: Iterable[str], writable: Iterable[str], readable: Iterable[str] = ()) -> list[str]:
    """'<state> in <dir> (writable|readable)' for state that lies inside a granted directory."""
    out = []
    for h in hidden:
        for kind, tops in (("writable", writable), ("readable", readable)):
            top = next((t for t in tops if _within(_real(h), _real(t))), None)
            if top:
                out.append(f"{h} is inside {top} ({kind} by hooks)")
                break
    return out


def writable_defaults(environ: Mapping[str, str]) -> tuple[str, ...]:
    """/tmp, /var/tmp, /dev and $HOME where they exist ($HOME=/ would grant everything: not granted)."""
    dirs = ["/tmp", "/var/tmp", "/dev"]
    home = environ.get("HOME", "")
    if home and _real(home) != "/":
        dirs.append(home)
    return tuple(d for d in dirs if os.path.isdir(d))


def create(hidden: Iterable[str | os.PathLike[str]], config_dir: str | os.PathLike[str],
           environ: Mapping[str, str] | None = None, enabled: bool = True) -> Sandbox:
    """The sandbox for this kernel: inactive (with the reason) where Landlock is missing or disabled."""
    environ = os.environ if environ is None else environ
    level, missing = _probe()
    reason = "disabled (--sandbox off, SIDECAR_SANDBOX=off)" if not enabled else missing
    write = writable_defaults(environ)
    hidden_t = tuple(sorted({_real(h) for h in hidden}))
    box = Sandbox(level=level, reason=reason, hidden=hidden_t, write=write, exposed=exposed(hidden_t, write))
    cfg_dir = _real(config_dir)
    top = next((w for w in write if _within(cfg_dir, _real(w))), None)
    if top:
        box.exposed.append(f"{config_dir} (the config directory) is inside {top} (writable by hooks)")
    if box.active:
        try:
            box.policy()  # build the default now: a failure is reported at start, not at the first hook
        except OSError as e:
            box.reason = f"cannot build the Landlock ruleset: {e}"
    return box


_current: Sandbox | None = None


def install(box: Sandbox | None) -> None:
    """The sandbox runner.run uses by default (the service sets it at start)."""
    global _current
    _current = box


def current(env: Mapping[str, str] | None = None) -> Policy | None:
    """The installed sandbox's policy for a hook with `env` (None: run unsandboxed)."""
    if _current is None:
        return None
    return _current.for_env(env) if env is not None else _current.policy()


def for_route(route: Any) -> Policy | None:
    """The installed sandbox's policy for `route` (from the loaded table, not from the spool)."""
    return _current.for_route(route) if _current is not None else None


def installed() -> Sandbox | None:
    return _current
