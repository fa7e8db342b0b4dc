"""Run `python -m sidecar ARGS` with every thread under cProfile, timed by that thread's CPU clock.

    python bench/cpuprofile.py OUT.prof serve --config ... --listen 127.0.0.1:0

A sampling profiler's "is this thread running?" is a guess in a server whose threads mostly
wait for sockets, locks and the GIL. Here each function's time is the CPU its own thread spent
in it (time.thread_time: user + system, so a fork or an fsync counts where it is called), and
waiting for anything costs nothing. cProfile slows Python code down, so read the shares, not
the absolute times. The stats of all threads are merged and written to OUT.prof when the
sidecar exits (SIGTERM).
"""

from __future__ import annotations

import _thread
import cProfile
import pstats
import runpy
import sys
import threading
import time
from typing import Any

_profiles: list[cProfile.Profile] = []
_lock = threading.Lock()


def _new() -> cProfile.Profile:
    prof = cProfile.Profile(time.thread_time_ns, 1e-9)
    with _lock:
        _profiles.append(prof)
    return prof


def _start_thread(frame: Any, event: str, arg: Any) -> None:
    """The first profile event of a new thread: give the thread its own profiler."""
    _new().enable()  # replaces this hook for the thread


class _Snapshot(cProfile.Profile):
    """What pstats.Stats takes, without disabling a profiler that belongs to another thread
    (a profiler of its own that never runs, holding the other's stats)."""

    def __init__(self, prof: cProfile.Profile) -> None:
        super().__init__()
        prof.snapshot_stats()
        self.stats = prof.stats

    def create_stats(self) -> None:
        pass


def _profiled(fn: Any) -> Any:
    def run(*args: Any, **kwargs: Any) -> Any:
        _new().enable()
        return fn(*args, **kwargs)
    return run


def main() -> None:
    out = sys.argv[1]
    sys.argv = ["sidecar", *sys.argv[2:]]
    threading.setprofile(_start_thread)
    # The server starts its handler threads with _thread.start_new_thread (no threading.Thread,
    # so no setprofile hook): give each its profiler as it starts.
    start_new_thread = _thread.start_new_thread
    _thread.start_new_thread = lambda fn, args, kwargs={}: start_new_thread(_profiled(fn), args, kwargs)
    own = _new()
    own.enable()
    try:
        runpy.run_module("sidecar", run_name="__main__", alter_sys=True)
    finally:
        own.disable()
        threading.setprofile(None)
        with _lock:
            profiles = list(_profiles)
        # Calls still running (the serving loops) are not in the stats; every finished one is.
        merged = pstats.Stats(_Snapshot(profiles[0]))
        for prof in profiles[1:]:
            merged.add(_Snapshot(prof))
        merged.dump_stats(out)


if __name__ == "__main__":
    main()
