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
- Each sidecar keeps a journal in `run_dir` (`<its marker prefix>.journal`): a line
  when a hook starts (its pid, route and delivery) and one when its run ended,
  appended to one open file, so a run costs two writes and no file of its own.
  At the next start, runs a dead sidecar's journal left open, and processes
  whose marker names a dead sidecar, are leftovers, killed before any job runs.
- A watchdog process (watchdog.py) is told of each run over a pipe and, when the
  sidecar dies, kills what is left of its runs at once, not at the next start.

Pids are never trusted alone: a pid is taken for the process it was only while
/proc/<pid>/stat shows the same start time (pids are reused).
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import itertools
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii
from pathlib import Path

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


def _started_near(pid: int, when: float, slack_s: float = 2.0) -> bool:
    """Whether process `pid` started within `slack_s` of the wall-clock time `when` (btime is whole seconds)."""
    ticks = _start_time(pid)
    if ticks is None:
        return False
    try:
        with open("/proc/stat", "rb") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith(b"btime "))
    except (OSError, StopIteration):
        return False
    return abs(boot + ticks / os.sysconf("SC_CLK_TCK") - when) <= slack_s


def _marker(pid: int) -> str | None:
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


def _children(pid: int) -> list[int]:
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


def _orphans() -> list[int]:
    """Children of the sidecar's main thread: where the kernel re-parents orphans to a subreaper
    (the first live thread of its group). One read instead of one per thread."""
    me = os.getpid()
    try:
        fd = os.open(f"/proc/{me}/task/{me}/children", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return _children(me)
    try:
        return [int(p) for p in os.read(fd, 65536).split()]
    finally:
        os.close(fd)


def _subtree(roots: list[int]) -> list[int]:
    seen: list[int] = []
    todo = list(roots)
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.append(pid)
        todo.extend(_children(pid))
    return seen


def _kill(pid: int, sig: int = signal.SIGKILL) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


JOURNAL_SUFFIX = ".journal"
JOURNAL_COMPACT_BYTES = 1 << 20  # rewritten with only its open runs past this size
JOURNAL_EMPTY_BYTES = 64 << 10  # emptied past this size when no run is open (one write per end below it)


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
        self.journal = run_dir / (self.instance + JOURNAL_SUFFIX) if run_dir is not None else None
        self.subreaper = subreaper
        if subreaper:
            prctl(PR_SET_CHILD_SUBREAPER, 1)
        self._seq = itertools.count(1)
        self._lock = threading.Lock()
        self._mains: dict[int, str] = {}  # pid of each running hook -> its marker
        self._open: dict[int, bytes] = {}  # journal lines of the runs started and not ended
        self._fd = -1  # the journal, opened at the first run
        self._size = 0
        # watchdog.py's pipe: b"+<run> <pid>\n" when a hook starts, b"-<run>\n" when nothing of it is left.
        self.notify: Callable[[bytes], None] | None = None
        self.watchdog_pid = 0  # a child of the main thread like the orphans, never one of a run's

    # --- one run ----------------------------------------------------------------------
    def begin(self, route: str | None = None, delivery: str | None = None) -> Run:
        """A new run's marker, to put in the hook's environment before it is started; `route` and
        `delivery` go in its journal line (what a leftover of a crash is reported as)."""
        seq = next(self._seq)
        return Run(f"{self.instance}.{seq}", seq, {"route": route, "delivery": delivery})

    @contextmanager
    def spawning(self, run: Run) -> Iterator[None]:
        """Hold around the spawn: end() must never reap a hook not yet registered as one."""
        with self._lock:
            yield

    def spawned(self, run: Run, pid: int) -> None:
        """Register the hook's pid (call inside spawning()) and journal the run.

        The line's time stands for the pid's start time: recovery takes the pid for the
        hook only if the process there started within 2 s of it (pids are reused). A crash
        between the spawn and this line leaves the run to its marker alone.
        """
        run.pid = pid
        self._mains[pid] = run.marker
        if self.notify is not None:
            self.notify(b"+%d %d\n" % (run.seq, pid))
        if self.journal is None:
            return
        route, delivery = (_json_str(run.facts.get(k)) for k in ("route", "delivery"))
        line = b'{"run":%d,"pid":%d,"t":%.3f,"route":%s,"delivery":%s}\n' % (run.seq, pid, time.time(), route, delivery)
        self._open[run.seq] = line
        self._append(line)

    def _append(self, line: bytes) -> None:
        """Add a line to the journal (lock held). No fsync: an entry only matters while its
        processes live, and a power loss ends them too. A failed write is not fatal: the
        marker still finds the run's processes."""
        try:
            if self._fd < 0:
                assert self.journal is not None
                self._fd = os.open(self.journal, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
                self._size = os.fstat(self._fd).st_size
            os.write(self._fd, line)
            self._size += len(line)
        except OSError:
            pass

    def _ended(self, run: Run) -> None:
        """Journal the run's end (lock held); empty the journal when nothing runs, compact it when big."""
        if self._open.pop(run.seq, None) is None or self._fd < 0:
            return
        try:
            if not self._open and self._size > JOURNAL_EMPTY_BYTES:
                os.ftruncate(self._fd, 0)  # O_APPEND: the next line goes to the start
                self._size = 0
            elif self._size > JOURNAL_COMPACT_BYTES:
                self._compact()
            else:
                self._append(b'{"end":%d}\n' % run.seq)
        except OSError:
            pass

    def _compact(self) -> None:
        """Replace the journal by one that holds only the open runs (lock held)."""
        assert self.journal is not None
        tmp = self.journal.with_name(self.journal.name + ".new")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            data = b"".join(self._open.values())
            os.write(fd, data)
            os.replace(tmp, self.journal)
        except BaseException:
            os.close(fd)
            raise
        os.close(self._fd)
        self._fd, self._size = fd, len(data)

    def close(self) -> None:
        """At shutdown, after the last run ended: remove the journal (nothing left to recover)."""
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
            if self.journal is not None and not self._open:
                try:
                    self.journal.unlink()
                except OSError:
                    pass

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
                    self._ended(run)
                    if self.notify is not None and run.pid:
                        self.notify(b"-%d\n" % run.seq)  # not when given up below: the watchdog keeps it
            for pid in found:
                _kill(pid)
            killed.extend(p for p in found if p not in killed)
            if not found:
                return killed
            if time.monotonic() > deadline:
                with self._lock:
                    self._ended(run)
                return killed
            time.sleep(0.01)

    def _leftovers(self, marker: str) -> list[int]:
        """Live processes of the run `marker` under the sidecar (lock held); reaps orphans that died."""
        others = set(self._mains.values())
        found: list[int] = []
        for pid in _orphans():
            if pid in self._mains or pid == self.watchdog_pid:
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
            owner = _marker(pid)
            # An orphan that dropped its marker is attributed to this run when no other run is going.
            if owner == marker or (owner is None and not others):
                found.extend(p for p in _subtree([pid]) if (_stat(p) or "Z")[0] not in "ZX")
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
            if name.endswith(JOURNAL_SUFFIX):
                instance = name[:-len(JOURNAL_SUFFIX)]
                if self._owner_alive(instance + ".0"):
                    continue  # a live sidecar sharing this directory: its runs are its own
                files.append(path)
                for seq, d in _open_runs(path).items():
                    t = d.get("t")
                    started = t if isinstance(t, (int, float)) else 0.0
                    runs[f"{instance}.{seq}"] = _facts(f"{instance}.{seq}", d, started)
        deadline = time.monotonic() + wait_s
        while True:
            victims = self._scan(runs)
            for pid, marker in victims.items():
                _kill(pid)
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
        return str(_start_time(int(pid))) == start

    def _scan(self, runs: dict[str, dict[str, object]]) -> dict[int, str]:
        """Live processes (not zombies) that belong to a dead sidecar's run: pid -> marker."""
        mains: dict[int, str] = {}
        for run, facts in runs.items():
            main = facts.get("_main")
            if isinstance(main, tuple) and _started_near(main[0], main[1]):
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
            marker = _marker(pid)
            if marker and marker.startswith(self.prefix + ".") and not self._owner_alive(marker):
                victims[pid] = ".".join(marker.split(".")[:3])
            elif pid in mains or st[2] in mains or st[3] in mains:
                victims[pid] = mains.get(pid) or mains.get(st[2]) or mains[st[3]]
        return victims


def _open_runs(journal: Path) -> dict[int, dict[str, object]]:
    """The runs a journal holds as started and not ended: number -> its start line."""
    runs: dict[int, dict[str, object]] = {}
    try:
        lines = journal.read_bytes().splitlines()
    except OSError:
        return runs
    for line in lines:
        try:
            d = json.loads(line)
            if "run" in d:
                runs[int(d["run"])] = d
            elif "end" in d:
                runs.pop(int(d["end"]), None)
        except (ValueError, TypeError):
            continue  # a line cut by the crash
    return runs


def _json_str(value: object) -> bytes:
    return b"null" if value is None else encode_basestring_ascii(str(value)).encode()


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

