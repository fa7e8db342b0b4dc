"""Sidecar CPU per hook spawn: plain, sandboxed (the policy's thread, or the fork server), and the
alternatives not taken.

    .venv/bin/python -m bench.spawn_cost [N]

CPU is the sidecar process's own (RUSAGE_SELF: all its threads, not the hooks'), per run of
/bin/true through runner.run, so it includes the pipes, the wait and the end-of-run checks; the
service's rows go through its launcher (launcher.py), with subprocess here and with the fork server
(`make native`; its own CPU added, its hooks' not).
The preexec_fn rows apply the same ruleset in the child after fork, as subprocess would have
to without the per-thread trick: once with the ruleset built in the parent and its fd passed,
once building it per spawn.
"""

from __future__ import annotations

import ctypes
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from sidecar import forkserver, procs, runner, sandbox, watchdog
from sidecar.carry import Job
from sidecar.config import Route
from sidecar.launcher import Launcher


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def helper_cpu(forks: forkserver.ForkServer | None, children: bool = False) -> float:
    """The fork server's own CPU seconds, or (`children`) its reaped children's: the hooks it started."""
    if forks is None or forks.proc is None:
        return 0.0
    with open(f"/proc/{forks.proc.pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    at = 13 if children else 11
    return (int(fields[at]) + int(fields[at + 1])) / os.sysconf("SC_CLK_TCK")


def hooks_cpu(forks: forkserver.ForkServer | None) -> float:
    """CPU seconds of the hooks reaped so far (by this process, or by the fork server)."""
    if forks is not None:
        return helper_cpu(forks, children=True)
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def measure(label: str, fn: Callable[[], object], n: int, forks: forkserver.ForkServer | None = None) -> float:
    for _ in range(20):
        fn()
    start = cpu() + helper_cpu(forks)
    for _ in range(n):
        fn()
    per = (cpu() + helper_cpu(forks) - start) / n * 1000
    print(f"{label:58s} {per:6.3f} ms CPU per spawn")
    return per


def restrict_in_child(fd: int) -> Callable[[], None]:
    libc = ctypes.CDLL(None, use_errno=True)

    def apply() -> None:
        libc.prctl(procs.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
        libc.syscall(sandbox.SYS_RESTRICT_SELF, fd, 0)
    return apply


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 500
    state = Path(tempfile.mkdtemp(dir=os.getcwd()))
    box = sandbox.create([str(state)], state)
    if not box.active:
        sys.exit(f"no sandbox here: {box.reason}")
    policy = box.policy()
    assert policy is not None
    tracker = procs.Tracker(state / "runs")
    watchdog.start(tracker)  # as the service does: its messages are part of a run's cost
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    argv = ["/bin/true"]
    # A sidecar has a dozen threads; fork cost grows with the process, so keep some around.
    for _ in range(10):
        threading.Thread(target=threading.Event().wait, daemon=True).start()
    print(f"{n} spawns of /bin/true through runner.run; Landlock ABI {box.level}, {policy.rules} rules")
    measure("no sandbox, no tracking", lambda: runner.run(argv, b"", env, 5, sandbox=None, tracker=None), n)
    measure("tracking only (journal lines + end-of-run check)",
            lambda: runner.run(argv, b"", env, 5, sandbox=None, tracker=tracker), n)
    measure("sandbox: policy thread (taken)", lambda: runner.run(argv, b"", env, 5, sandbox=policy, tracker=None), n)
    launcher = Launcher(tracker, box)
    route = Route(name="bench", event="*", when=(), argv=tuple(argv), timeout_s=5)
    measure("sandbox + tracking, through the launcher (subprocess here)",
            lambda: launcher.carry(job(route), b"", route, None), n)
    binary = forkserver.find()
    forks = forkserver.ForkServer(binary) if binary else None
    served = launcher
    if forks is not None:
        forks.spared = tracker.spared
        forks.start()
        served = Launcher(tracker, box, forks=forks)
        measure("sandbox + tracking, through the fork server (+ its own CPU)",
                lambda: served.carry(job(route), b"", route, None), n, forks)
    prebuilt = sandbox.Policy.__new__(sandbox.Policy)
    prebuilt.rules = 0
    fd = prebuilt._build(policy.grants, box.level)
    apply = restrict_in_child(fd)

    def preexec_prebuilt() -> None:
        subprocess.Popen(argv, env=env, preexec_fn=apply, pass_fds=(fd,), start_new_session=True).wait()

    def preexec_per_spawn() -> None:
        built = sandbox.Policy.__new__(sandbox.Policy)
        built.rules = 0
        own = built._build(policy.grants, box.level)
        subprocess.Popen(argv, env=env, preexec_fn=restrict_in_child(own), pass_fds=(own,),
                         start_new_session=True).wait()
        os.close(own)

    def plain_popen() -> None:
        subprocess.Popen(argv, env=env, start_new_session=True).wait()

    measure("bare Popen, no sandbox (reference)", plain_popen, n)
    measure("bare Popen, preexec_fn + ruleset fd built once (not taken)", preexec_prebuilt, n)
    measure("bare Popen, preexec_fn + ruleset built per spawn (not taken)", preexec_per_spawn, max(50, n // 5))
    os.close(fd)
    threaded(launcher, n, "sandbox + tracking, subprocess here")
    if forks is not None:
        threaded(served, n, "sandbox + tracking, the fork server", forks)
        # The same without the sandbox: what its capabilities, no_new_privs and Landlock domain cost the hook.
        threaded(Launcher(tracker, None, forks=forks), n, "tracking only, the fork server", forks)
        forks.close()
    subprocess.run(["rm", "-rf", str(state)], check=False)


def job(route: Route, cwd: str = "") -> Job:
    return Job(delivery="d", endpoint="/webhook", provider="github", event="push", route=route, request_id="r",
               cwd=cwd)


def threaded(launcher: Launcher, n: int, how: str, forks: forkserver.ForkServer | None = None) -> None:
    """The bench's hook (sh + cat, 2 KB on stdin) from 4 worker threads, through `launcher` (sandboxed and
    tracked as the service runs it, unless it has no sandbox): runs/s, the sidecar's CPU and the hook's per run."""
    from concurrent.futures import ThreadPoolExecutor

    count = Path(tempfile.mkdtemp(dir="/tmp")) / "count"  # /tmp: writable by sandboxed hooks, state is not
    route = Route(name="bench", event="*", when=(), argv=("/bin/sh", "-c", f"cat >/dev/null; echo x >> {count}"),
                  timeout_s=10)
    body = b"x" * 2048

    def one(_: int) -> None:
        assert launcher.carry(job(route, cwd="/tmp"), body, route, None).ok

    before, hooks, start = cpu() + helper_cpu(forks), hooks_cpu(forks), time.perf_counter()
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(one, range(2 * n)))
    took, used = time.perf_counter() - start, cpu() + helper_cpu(forks) - before
    ran = hooks_cpu(forks) - hooks
    print(f"{2 * n} runs of the bench's hook from 4 threads ({how}): {2 * n / took:.0f} runs/s,"
          f" {used / (2 * n) * 1000:.3f} ms sidecar CPU and {ran / (2 * n) * 1000:.3f} ms of the hook's per run")
    subprocess.run(["rm", "-rf", str(count.parent)], check=False)


if __name__ == "__main__":
    main()
