"""Hooks end with their sidecar, however it ends: a small process that outlives it by a moment.

Hooks run in sessions of their own (`start_new_session`, some `setsid` further), so
nothing ends them when a sidecar on a plain host is killed (kill -9, the OOM killer):
inside a container the kernel ends them with the pod; on a host they ran on, and with
a shared spool another replica took their job over once its lease expired (a
`concurrency: 1` route ran twice at once).

At start, before any hook runs, the sidecar starts a watchdog that holds the read
end of a pipe whose write end only the sidecar holds (O_CLOEXEC: no hook inherits
it). The sidecar writes `+<run> <pid>` when a hook starts and `-<run>` when nothing
of that run is left (procs.Tracker, one small write each). While runs come and go the
watchdog reads the pipe every BATCH_S and sleeps between reads rather than waiting in
read(), so a write wakes nobody: waking it twice per run cost the sidecar ~0.02 ms CPU
per run, the writes alone nothing measurable. EOF on the pipe is the sidecar's end,
whatever ended it: the watchdog then kills the process groups and sessions of the
runs still open and every process whose WEBHOOK_RUN_ID names this sidecar (with its
group and session), until none is left, and exits, at most ~BATCH_S after the end.
After a clean stop no run is open: it exits.

The watchdog is this file run by a fresh `python -I -S` that imports only os, signal,
sys and time (under 4 MiB private memory), not a fork of the sidecar: a fork's pages
turn private as the sidecar writes its own copies (8-9 MiB after 200 runs, growing
toward the whole heap), a fork needs a sidecar with no thread yet, and it would carry
the sidecar's secrets. Its environment is
empty and its argv holds only the pipe's number and the sidecar's marker prefix. It
keeps none of the sidecar's descriptors, not even stdout (so it writes no log): whoever
reads the sidecar's output sees it end with the sidecar.

Not PR_SET_PDEATHSIG on the hooks: it fires when the spawning *thread* ends (a
sandbox policy's spawn thread ends on every rebuild, killing hooks that still run),
reaches only the hook's first process, not what it setsid's, and needs a preexec_fn
(a full fork of the sidecar per hook instead of vfork).

What remains: a sidecar that is stopped (SIGSTOP, a frozen cgroup) is not dead, so
its hooks run on; a process that both left its run's session and cleared its
environment is found only by the sidecar itself while it lives; a hook that may
signal the watchdog (same user, no Landlock signal scoping) can kill it first.
"""

from __future__ import annotations

import os
import signal
import sys
import time

TYPE_CHECKING = False  # not typing's: importing typing would cost the watchdog 1.6 MiB
if TYPE_CHECKING:
    import subprocess
    from collections.abc import Callable
    from typing import Protocol

    class Tracked(Protocol):
        """What start() needs of procs.Tracker (no import of procs: procs reads /proc through this module)."""

        instance: str
        watchdog_pid: int
        notify: Callable[[bytes], None] | None

MARKER_VAR = "WEBHOOK_RUN_ID"  # in the environment of every process of a run: "<instance>.<run>"
BATCH_S = 0.1  # the watchdog reads the pipe at most this often while runs come and go
SWEEP_S = 5.0  # how long the watchdog chases a dead sidecar's runs (setsid'd children of killed parents re-parent)


# --- /proc, read with nothing but os (procs.py reads it with these too) ------------------------
def stat(pid: int) -> tuple[str, int, int, int, int] | None:
    """(state, ppid, pgid, sid, start time in ticks) of a process, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    # The name in parentheses may hold spaces and ')': split after its last ')'.
    fields = raw[raw.rfind(b")") + 2:].split()
    return fields[0].decode(), int(fields[1]), int(fields[2]), int(fields[3]), int(fields[19])


def start_time(pid: int) -> int | None:
    st = stat(pid)
    return st[4] if st else None


# --- the sidecar's side ------------------------------------------------------------------------
class Guard:
    """The sidecar's end of the pipe: tells the watchdog about runs; notices when it is gone."""

    def __init__(self, fd: int, proc: subprocess.Popen[bytes]) -> None:
        self.fd, self.proc = fd, proc

    def tell(self, message: bytes) -> None:
        """One short message (atomic on a pipe); never blocks, never raises."""
        if self.fd < 0:
            return
        try:
            os.write(self.fd, message)
        except BlockingIOError:
            pass  # the watchdog is behind (stopped?) with 64 KiB unread: the run's marker still finds it
        except OSError:
            self._lost()

    def _lost(self) -> None:
        import subprocess

        from . import logs

        os.close(self.fd)
        self.fd = -1
        try:
            self.proc.wait(1.0)  # reaped here (procs.Tracker leaves this child alone); no reader: it is exiting
        except subprocess.TimeoutExpired:
            pass
        logs.warning("hooks.watchdog_lost", pid=self.proc.pid, returncode=self.proc.returncode,
                     detail="the process that ends hooks with the sidecar is gone: until a restart, the hooks"
                            " of a sidecar killed now would run on (its next start still ends them)")


    def remove_at_end(self, directory: str) -> None:
        """Have the watchdog remove `directory` (the hooks' private HOME/TMPDIR) once the sidecar is gone
        and its hooks are killed: a killed sidecar leaves no such directory behind either."""
        if "\n" not in directory:
            self.tell(b"~" + os.fsencode(directory) + b"\n")


def start(tracker: Tracked) -> Guard | None:
    """Start the watchdog of `tracker`'s runs, connect the tracker to it, log how hooks are guarded;
    its guard (keep it: it holds the watchdog's Popen), None when there is none.

    Call before any hook runs. Never fails the sidecar's start: without a watchdog
    (`hooks.unguarded`), a killed sidecar's hooks run on until its next start.
    """
    import subprocess

    from . import logs

    read_fd = write_fd = -1
    try:
        read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
        os.set_blocking(write_fd, False)
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", os.path.abspath(__file__), str(read_fd), MARKER_VAR, tracker.instance],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, pass_fds=(read_fd,),
            env={}, cwd="/", start_new_session=True)  # out of the sidecar's group: a group kill must not take it
    except (OSError, ValueError) as e:
        for fd in (read_fd, write_fd):
            if fd >= 0:
                os.close(fd)
        logs.warning("hooks.unguarded", error=str(e),
                     detail="no watchdog: if this sidecar is killed, its hooks run on until its next start")
        return None
    os.close(read_fd)  # the watchdog's alone now: its EOF comes when this process's write end closes
    guard = Guard(write_fd, proc)
    tracker.watchdog_pid = proc.pid
    tracker.notify = guard.tell
    logs.info("hooks.watchdog", pid=proc.pid,
              detail="ends every process of this sidecar's running hooks within a second of its end"
                     " (kill -9, OOM), on any host")
    return guard


# --- the watchdog's side -----------------------------------------------------------------------
def main(argv: list[str]) -> None:
    """The watchdog: FD MARKER_VAR INSTANCE. Follows the runs the pipe FD announces until EOF,
    then ends what is left of them."""
    fd, needle = int(argv[0]), f"{argv[1]}={argv[2]}.".encode()
    sidecar = stat(os.getppid())
    spared = {0, 1, *(sidecar[2:4] if sidecar else ())}  # the sidecar's own group and session: never a run's
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)  # a stray TERM or a terminal's signal: it ends at EOF, never before
    pids: dict[int, int] = {}  # open run's number -> its hook's pid
    starts: dict[int, int | None] = {}  # -> the hook's start time, read once the run is seen open after a batch
    pending = b""
    remove: list[bytes] = []  # directories to remove once the runs are ended
    os.set_blocking(fd, False)
    idle = False
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            if not idle:
                # Not blocked in read() meanwhile, so the sidecar's writes wake nobody: a run costs it two
                # small writes, not two wake-ups of another process. Its end is seen at most this much later.
                idle = True
                time.sleep(BATCH_S)
                continue
            os.set_blocking(fd, True)  # nothing for a whole batch: wait in read(), woken by the next message
            chunk = os.read(fd, 65536)
            os.set_blocking(fd, False)
        if not chunk:
            break  # EOF: the sidecar is gone
        idle = False
        *lines, pending = (pending + chunk).split(b"\n")
        for line in lines:
            try:
                if line[:1] == b"+":
                    seq, pid = (int(x) for x in line[1:].split())
                    pids[seq] = pid
                elif line[:1] == b"~":
                    remove.append(line[1:])
                else:
                    seq = int(line[1:])
                    pids.pop(seq, None)
                    starts.pop(seq, None)
            except ValueError:
                continue
        for seq, pid in pids.items():
            if seq not in starts:  # a run that began and ended within the batch costs no read
                starts[seq] = start_time(pid)
    born = argv[2].rsplit("-", 1)[-1]
    groups = {pid for seq, pid in pids.items() if start_time(pid) in (starts[seq], None)}
    sweep(needle, groups - spared, spared, int(born) if born.isdigit() else 0)
    for directory in remove:
        remove_tree(os.fsdecode(directory))


def remove_tree(root: str) -> None:
    """Remove a directory tree whatever modes the hooks left in it (gone already after a clean stop)."""
    import shutil

    for path, dirs, _ in os.walk(root):
        for d in dirs:
            try:
                os.chmod(os.path.join(path, d), 0o700, follow_symlinks=False)
            except OSError:
                pass
    shutil.rmtree(root, ignore_errors=True)


def sweep(needle: bytes, groups: set[int], spared: set[int], born: int = 0, wait_s: float = SWEEP_S) -> list[int]:
    """Kill the process groups and sessions `groups` (open runs' hook pids), and every process
    whose environment holds `needle` (the sidecar's marker prefix) and that started at `born`
    ticks or later, with their groups and sessions (except `spared`), until none is left; the
    pids found beside the group kills.

    A hook's pid stands for its run's group while the hook is gone or still the same process
    (its start time as announced): a pid is not reused while a group or session of it exists.
    """
    needle = b"\0" + needle
    me = os.getpid()
    killed: list[int] = []
    deadline = time.monotonic() + wait_s
    while True:
        for group in groups:
            try:
                os.killpg(group, signal.SIGKILL)
            except OSError:
                pass
        found = []
        for name in os.listdir("/proc"):
            if not name.isdigit() or int(name) == me:
                continue
            pid = int(name)
            st = stat(pid)
            if st is None or st[0] in "ZX" or st[4] < born:
                continue
            if st[2] in groups or st[3] in groups or needle in _environ(pid):
                found.append(pid)
                groups.update(set(st[2:4]) - spared)  # a marked process's group and session are its run's
        for pid in found:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        killed.extend(p for p in found if p not in killed)
        if not found or time.monotonic() > deadline:
            return killed
        time.sleep(0.02)


def _environ(pid: int) -> bytes:
    """A process's environment as NUL-led items (b"" when unreadable), for a prefix search."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return b"\0" + f.read()
    except OSError:
        return b""


if __name__ == "__main__":
    main(sys.argv[1:])
