"""Every process a hook run started ends with the run, and with a crashed sidecar's next start.

A hook's children can leave its process group (`setsid`), so the group kill of a
timeout does not reach them, and after a kill -9 of the sidecar nothing is left
that knows them. Four things close that:

- The sidecar is a child subreaper: an orphan of a hook (a `setsid` daemon whose
  parent exited) is re-parented to the sidecar instead of PID 1, so it stays
  findable under /proc/<sidecar>/task/*/children.
- Every process of a run carries `WEBHOOK_RUN_ID` in its environment (inherited
  by whatever it starts), so an orphan is attributed to its run even when several
  runs are going at once, and even after the sidecar that started it is gone.
- Each sidecar keeps a journal in `run_dir` (journal.py): a line when a hook starts
  (its pid, route and delivery) and one when its run ended. At the next start, runs
  a dead sidecar's journal left open, and processes whose marker names a dead
  sidecar, are leftovers, killed before any job runs.
- A watchdog process (watchdog.py) is told of each run over a pipe and, when the
  sidecar dies, kills what is left of its runs at once, not at the next start.

Pids are never trusted alone: a pid is taken for the process it was only while
/proc/<pid>/stat shows the same start time (pids are reused).

A run starts here (start: the tracker's part, then spawning.spawn for the process) and is
ended here (Hook.reap); what happens in between is the runner's. /proc is read through
proctree.py.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import itertools
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from . import journal, proctree, spawning
from .journal import Journal
from .spawning import Process, Spawns
from .watch import Ends, Pipes, Watch
from .watchdog import MARKER_VAR as MARKER_VAR
from .watchdog import start_time as _start_time
from .watchdog import stat as _stat

PR_SET_DUMPABLE = 4
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38
END_WAIT_S = 3.0  # how long end() chases a run's processes that are still dying or re-parenting

_libc = ctypes.CDLL(None, use_errno=True)
_prctl = _libc.prctl
_prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
_prctl.restype = ctypes.c_int


def prctl(option: int, arg: int) -> None:
    """prctl(option, arg) for the calling thread/process; OSError on failure."""
    if _prctl(option, arg, 0, 0, 0) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


M_ARENA_MAX = -8
ARENAS = 2


def few_arenas() -> None:
    """At most ARENAS malloc arenas: glibc gives each new thread its own (up to 8 per core), a few
    hundred KiB of a sidecar's idle RSS for threads that take turns at the GIL anyway."""
    mallopt = getattr(_libc, "mallopt", None)  # glibc's; another libc may not have it
    if mallopt is not None:
        mallopt(ctypes.c_int(M_ARENA_MAX), ctypes.c_int(ARENAS))


def harden() -> None:
    """Make /proc/<sidecar>/environ, mem and fd unreadable to same-uid processes (the hooks)."""
    prctl(PR_SET_DUMPABLE, 0)


def start(argv: Sequence[str], stdin: int, output: int, env: Mapping[str, str], cwd: str | None = None, *,
          policy: Spawns | None = None, tracker: Tracker | None = None, route: str | None = None,
          delivery: str | None = None, stdout: int | None = None) -> Hook:
    """Start a hook (spawning.spawn: `stdin` and `output` are its ends of the pipes, `stdout` its stdout's
    when apart from `output`, `policy` its sandbox), tracked by `tracker` when given (`route` and
    `delivery` name the run in its journal).

    Tracked, it carries its run's marker in its environment; its pid is registered under the tracker's
    lock, so end() of another run never reaps it as an orphan, and journaled: the line's time stands for
    the pid's start time (recovery takes the pid for the hook only if the process there started within
    2 s of it: pids are reused). A crash between the spawn and the line leaves the run to its marker alone.
    """
    run = tracker.begin(route, delivery) if tracker is not None else None
    try:
        with tracker._lock if tracker is not None else contextlib.nullcontext():
            proc = spawning.spawn(policy, argv, stdin, output, {**env, MARKER_VAR: run.marker} if run else env, cwd,
                                 stdout=stdout)
            if tracker is not None and run is not None:
                tracker.started(run, proc.pid, route, delivery)
    except BaseException:
        if tracker is not None and run is not None:
            tracker.end(run)
        raise
    return Hook(proc, tracker, run)


def run(argv: Sequence[str], stdin: bytes, env: Mapping[str, str], cwd: str | None, ends: Ends, *,
        policy: Spawns | None = None, tracker: Tracker | None = None, route: str | None = None,
        delivery: str | None = None) -> tuple[int, int, Watch]:
    """A hook's life: its pipes opened (`stdin` its payload), started (start's arguments), watched until it
    ended or `ends` ended it, then reaped with what it left. Its return code (negative: the signal), how
    many leftovers were killed, and the watch (timed out, cancelled; its pipes: the output). OSError when
    it could not start (the pipes are closed then)."""
    pipes = Pipes(stdin, ends.reply_bytes)
    try:
        hook = start(argv, pipes.child_in, pipes.child_out, env, cwd, policy=policy, tracker=tracker, route=route,
                     delivery=delivery, stdout=pipes.child_reply)
    except BaseException:
        pipes.close()
        raise
    finally:
        pipes.handed_over()
    watch = Watch(hook, pipes, ends)
    try:
        watch.watch()
    finally:
        pipes.close()
        code, leftovers = hook.reap()
    return code, leftovers, watch


@dataclass
class Hook:
    """A started hook: its process (leader of a session and group of its own), its run when tracked."""

    proc: Process
    tracker: Tracker | None = None
    run: Run | None = None

    def pidfd(self) -> int | None:
        """A descriptor that polls readable when the hook exits; None where the kernel has none."""
        try:
            return os.pidfd_open(self.proc.pid)
        except (AttributeError, OSError):
            return None

    def exited(self) -> bool:
        return self.proc.poll() is not None

    def signal_group(self, sig: int) -> None:
        """Signal the hook's process group, not just its shell: scripts start children (curl, git)
        that would outlive a timeout and hold its output open."""
        try:
            os.killpg(self.proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def reap(self) -> tuple[int, int]:
        """End what is left of the run: its group killed and the hook waited for, then (tracked) the
        processes that left the group. The hook's return code and how many leftovers were killed."""
        # Nothing of the group may survive the run: not children that ignored SIGTERM
        # after their shell died, nor background ones a later attempt would overlap.
        self.signal_group(signal.SIGKILL)
        code = self.proc.wait()
        leftovers = self.tracker.end(self.run) if self.tracker is not None and self.run is not None else []
        return code, len(leftovers)


@dataclass
class Run:
    """One hook run's identity: its marker (inherited by all it starts) and its journal number."""

    marker: str
    seq: int
    facts: dict[str, str | None]
    pid: int = 0


class Tracker:
    """Journals running hooks in `run_dir` and ends everything each run started."""

    def __init__(self, run_dir: Path | None, subreaper: bool = False, key: str | None = None) -> None:
        """`run_dir` None keeps no journal (markers alone find leftovers); `key` names this
        deployment in the markers (default: run_dir), so a restart recognizes its own."""
        self.run_dir = run_dir
        if run_dir is not None:
            run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        # Markers name their deployment (two sidecars on one machine do not touch each
        # other's hooks) and their sidecar (pid and start time: alive or a leftover).
        key = key if key is not None else os.path.realpath(run_dir or ".")
        self.prefix = hashlib.sha256(os.fsencode(key)).hexdigest()[:10]
        self.instance = f"{self.prefix}.{os.getpid()}-{_start_time(os.getpid())}"
        self.journal = Journal(run_dir / (self.instance + journal.SUFFIX) if run_dir is not None else None)
        self.subreaper = subreaper
        if subreaper:
            prctl(PR_SET_CHILD_SUBREAPER, 1)
        self._seq = itertools.count(1)
        self._lock = threading.Lock()
        self._mains: dict[int, str] = {}  # pid of each running hook -> its marker
        # watchdog.py's pipe: b"+<run> <pid>\n" when a hook starts, b"-<run>\n" when nothing of it is left.
        self.notify: Callable[[bytes], None] | None = None
        self.watchdog_pid = 0  # a child of the main thread like the orphans, never one of a run's
        self.spared: set[int] = set()  # other helpers of ours among them (the fork server)

    # --- one run ----------------------------------------------------------------------
    def begin(self, route: str | None = None, delivery: str | None = None) -> Run:
        """A new run's marker; `route` and `delivery` go in its journal line (what a leftover of a
        crash is reported as)."""
        seq = next(self._seq)
        return Run(f"{self.instance}.{seq}", seq, {"route": route, "delivery": delivery})

    def started(self, run: Run, pid: int, route: str | None, delivery: str | None) -> None:
        """`run`'s hook is `pid` (the lock held): registered, told to the watchdog, journaled."""
        run.pid = pid
        self._mains[pid] = run.marker
        if self.notify is not None:
            self.notify(b"+%d %d\n" % (run.seq, pid))
        self.journal.write_start(run.seq, pid, route, delivery)

    def close(self) -> None:
        """At shutdown, after the last run ended: remove the journal (nothing left to recover)."""
        with self._lock:
            self.journal.close()

    def end(self, run: Run, wait_s: float = END_WAIT_S) -> list[int]:
        """After the hook's main process was waited for: kill whatever of the run is left; the pids killed.

        Loops until nothing of the run is alive: killing a parent re-parents its
        setsid'd children to the sidecar, where the next pass finds them.
        """
        killed: list[int] = []
        deadline = time.monotonic() + wait_s
        while True:
            with self._lock:
                self._mains.pop(run.pid, None)
                found = self._leftovers(run.marker)
                if not found:
                    self.journal.write_end(run.seq)
                    if self.notify is not None and run.pid:
                        self.notify(b"-%d\n" % run.seq)  # not when given up below: the watchdog keeps it
            for pid in found:
                proctree.kill(pid)
            killed.extend(p for p in found if p not in killed)
            if not found:
                return killed
            if time.monotonic() > deadline:
                with self._lock:
                    self.journal.write_end(run.seq)
                return killed
            time.sleep(0.01)

    def _leftovers(self, marker: str) -> list[int]:
        """Live processes of the run `marker` under the sidecar (lock held); reaps orphans that died."""
        others = set(self._mains.values())
        found: list[int] = []
        for pid in proctree.orphans():
            if pid in self._mains or pid == self.watchdog_pid or pid in self.spared:
                continue  # another run's hook (its own end() deals with it), or the watchdog
            st = _stat(pid)
            if st is None:
                continue
            if st[0] in "ZX":
                if self.subreaper:
                    # An orphan re-parented to us that died: ours to reap. Hooks are
                    # registered before this lock is released, so this is never one.
                    try:
                        os.waitpid(pid, os.WNOHANG)
                    except ChildProcessError:
                        pass
                continue
            owner = proctree.marker(pid)
            # An orphan that dropped its marker is attributed to this run when no other run is going.
            if owner == marker or (owner is None and not others):
                found.extend(p for p in proctree.subtree([pid]) if (_stat(p) or "Z")[0] not in "ZX")
        return found

    # --- after a crash ----------------------------------------------------------------
    def reap_leftovers(self, wait_s: float = 5.0) -> list[dict[str, object]]:
        """At start, before any job runs: kill every process of runs whose sidecar is gone.

        Returns one entry per leftover run (its journal's route and delivery, the pids killed).
        """
        runs: dict[str, dict[str, object]] = {}
        files: list[Path] = []
        for path in self.run_dir.iterdir() if self.run_dir is not None else ():
            name = path.name.removesuffix(".new")
            if name.endswith(journal.SUFFIX):
                instance = name[:-len(journal.SUFFIX)]
                if self._owner_alive(instance + ".0"):
                    continue  # a live sidecar sharing this directory: its runs are its own
                files.append(path)
                for seq, d in journal.open_runs(path).items():
                    t = d.get("t")
                    started = t if isinstance(t, (int, float)) else 0.0
                    runs[f"{instance}.{seq}"] = _facts(f"{instance}.{seq}", d, started)
        deadline = time.monotonic() + wait_s
        while True:
            victims = self._scan(runs)
            for pid, marker in victims.items():
                proctree.kill(pid)
                pids = runs.setdefault(marker, {"marker": marker, "pids": []})["pids"]
                if isinstance(pids, list) and pid not in pids:
                    pids.append(pid)
            if not victims or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        for path in files:
            try:
                path.unlink()
            except OSError:
                pass
        return [{k: v for k, v in r.items() if not k.startswith("_")} for r in runs.values()]

    def _owner_alive(self, marker: str) -> bool:
        """Whether the sidecar that wrote `marker` (prefix.pid-start.seq) is still this same process."""
        try:
            prefix, owner, _seq = marker.split(".")
            pid, start = owner.split("-")
        except ValueError:
            return False
        if prefix != self.prefix:
            return False
        if owner == self.instance.split(".", 1)[1]:
            return True
        st = _stat(int(pid))  # a zombie is dead (a spawner whose reaper is slow, or none at all)
        return st is not None and st[0] not in "ZX" and str(st[4]) == start

    def _scan(self, runs: dict[str, dict[str, object]]) -> dict[int, str]:
        """Live processes (not zombies) that belong to a dead sidecar's run: pid -> marker."""
        mains: dict[int, str] = {}
        for run, facts in runs.items():
            main = facts.get("_main")
            if isinstance(main, tuple) and proctree.started_near(main[0], main[1]):
                mains[main[0]] = run  # still the same process: its group and session are the run's
        victims: dict[int, str] = {}
        me = os.getpid()
        for name in os.listdir("/proc"):
            if not name.isdigit() or int(name) == me:
                continue
            pid = int(name)
            st = _stat(pid)
            if st is None or st[0] in "ZX":
                continue
            marker = proctree.marker(pid)
            if marker and marker.startswith(self.prefix + ".") and not self._owner_alive(marker):
                victims[pid] = ".".join(marker.split(".")[:3])
            elif pid in mains or st[2] in mains or st[3] in mains:
                victims[pid] = mains.get(pid) or mains.get(st[2]) or mains[st[3]]
        return victims


def _facts(marker: str, d: Mapping[str, object], started: float) -> dict[str, object]:
    """A leftover run as reap_leftovers reports it; `_main` is (pid, when it started) if known."""
    facts: dict[str, object] = {"marker": marker, "pids": []}
    facts.update({k: d[k] for k in ("route", "delivery") if k in d})
    pid = d.get("pid")
    facts["_main"] = (int(pid), started) if isinstance(pid, int) else None
    return facts


def transient(e: OSError) -> bool:
    """A spawn failure that a later attempt may not hit: out of processes, memory, descriptors or disk."""
    return e.errno in (errno.EAGAIN, errno.ENOMEM, errno.EMFILE, errno.ENFILE, errno.ENOSPC)

