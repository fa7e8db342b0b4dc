"""Run `python -m sidecar ARGS` with its CPU counted per stage of a delivery, by each thread's CPU clock.

    python bench/stages.py OUT.json serve --config ... --listen 127.0.0.1:0

The sidecar's work for one delivery crosses threads (a connection's handler thread, the spool
writer, a worker, the writer again for the result), so a sampling profiler of "the process" says
little about which stage costs what. Here a few functions of the sidecar are wrapped; each
thread keeps a stack of the stages it is in and charges its own CPU clock (time.thread_time_ns:
user + system, so a fork or an fsync counts where it is called; waiting costs nothing) to the
innermost one: exclusive time per stage, summed over threads. The spool writer's transaction
(BEGIN, COMMIT and its fsync, resolving the futures) is shared out over the stages of the ops in
the batch, by count. The wrapping costs two clock reads per wrapped call (about 1 µs).

kill -USR2 PID writes the totals so far to OUT.json.N (N = 0, 1, ...): the bench takes one
before its load and one after the last hook ran, and counts the difference. Wrap points that
do not exist in the tree under test (a restructured sidecar) are listed as missing, not fatal.
"""

from __future__ import annotations

import collections
import functools
import importlib
import json
import os
import runpy
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

# (module, attribute path, stage). Time a thread spends between wrapped calls goes to the stage of
# the BASE call it made last (a handler thread's loop is receive+verify, a worker's hand-off, the
# spool writer's its queue), or else to "(outside: thread)".
BASE = {"Handler.handle_one_request", "Workers._take", "LocalQueue._take", "Spool._commit", "Writer._commit",
        "Executor._commit"}
# A module "a|b": the first of them that has the attribute (the layout of 652c911, then the
# split spool/ package and attempts.py of later trees).
SPOOL = "sidecar.spool|sidecar.spool.sqlite"
WRAP = [
    ("sidecar.server", "Handler.handle_one_request", "receive+verify"),
    ("sidecar.queue_local|sidecar.workers", "LocalQueue.submit|Workers.submit", "hand-off"),
    (SPOOL, "Spool.accept", "accept commit"),
    ("sidecar.queue_local|sidecar.workers", "LocalQueue._take|Workers._take", "hand-off"),
    ("sidecar.queue_local|sidecar.workers", "LocalQueue._end|Workers._release", "hand-off"),
    ("sidecar.workers", "Workers._forget", "hand-off"),
    ("sidecar.queue_local|sidecar.workers", "LocalQueue.recorded|Workers._recorded", "hand-off"),
    (SPOOL, "Spool.job_to_run", "job read"),
    (SPOOL, "Spool.claim", "job read"),
    ("sidecar.workers|sidecar.attempts", "Workers._run|run", "result record"),
    # The launch path since the one-way restructuring: attempts.run -> Launcher.carry -> InProcess.launch
    # -> procs.run (pipes, start, Watch, reap); the fork server's client; the journal's two lines.
    ("sidecar.launcher", "Launcher.carry", "spawn"),
    ("sidecar.runner", "InProcess.launch", "spawn"),
    ("sidecar.procs", "run", "watch"),
    ("sidecar.watch", "Pipes.__init__", "spawn"),
    ("sidecar.watch", "Watch.watch", "watch"),
    ("sidecar.forkserver", "ForkServer.spawn", "spawn"),
    ("sidecar.journal", "Journal.write_start", "journal"),
    ("sidecar.journal", "Journal.write_end", "journal"),
    ("sidecar.queue_local", "LocalQueue.record", "result record"),
    ("sidecar.attempts", "report", "result record"),
    ("sidecar.scheduler|sidecar.workers", "Executor._commit|Workers._record", "result record"),
    ("sidecar.workers|sidecar.launcher|sidecar.attempts", "Job.env|Launcher.env|Job.env", "spawn"),
    ("sidecar.runner", "run", "watch"),
    ("sidecar.procs", "start", "spawn"),
    ("sidecar.procs", "Tracker.started|Tracker.start", "spawn"),  # Tracker.start: trees before the one-way path
    ("sidecar.procs", "Hook.reap", "watch"),
    ("sidecar.procs", "Tracker.end", "watch"),
    ("subprocess", "Popen.__init__", "spawn"),
    ("os", "posix_spawn", "spawn"),
    ("os", "posix_spawnp", "spawn"),
    (SPOOL, "Spool.finish", "result record"),
    (SPOOL, "Spool.pending_ids", "spool sync"),
    (SPOOL, "Spool.pending", "spool sync"),
    ("sidecar.logs", "_emit", "log"),
    ("sidecar.logs", "_write", "log"),
]
TAGGED = ("accept commit", "result record")  # what a spool write is done for, by who asked
BATCH = "sidecar.spool|sidecar.spool.sqlite_writer", "Spool._commit|Writer._commit"
SUBMIT = "sidecar.spool|sidecar.spool.sqlite_writer", "Spool.submit_write|Writer._submit"


_clock = time.thread_time_ns
_threads: list[_State] = []
_lock = threading.Lock()
_local = threading.local()


class _State:
    def __init__(self) -> None:
        self.acc: collections.Counter[str] = collections.Counter()
        self.calls: collections.Counter[str] = collections.Counter()
        self.stack: list[list[Any]] = []  # [stage, exclusive ns, batch tags or None]
        self.last = _clock()
        self.name = threading.current_thread().name
        self.base = ""
        with _lock:
            _threads.append(self)


def _state() -> _State:
    st = getattr(_local, "st", None)
    if st is None:
        st = _local.st = _State()
    return st


def _enter(st: _State, stage: str, tags: list[str] | None = None) -> None:
    now = _clock()
    if st.stack:
        st.stack[-1][1] += now - st.last
    else:
        st.acc[st.base or "(outside: " + _kind(st.name) + ")"] += now - st.last
    st.last = now
    st.stack.append([stage, 0, tags])
    st.calls[stage] += 1


def _leave(st: _State) -> None:
    now = _clock()
    frame = st.stack.pop()
    frame[1] += now - st.last
    st.last = now
    stage, excl, tags = frame
    if tags:  # a spool batch: its own time shared over the ops' stages
        for tag, n in collections.Counter(tags).items():
            st.acc[tag] += excl * n // len(tags)
    else:
        st.acc[stage] += excl


def _kind(name: str) -> str:
    return "".join("N" if c.isdigit() else c for c in name)


def _wrap(fn: Callable[..., Any], stage: str, base: str = "") -> Callable[..., Any]:
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        st = _state()
        if base:
            st.base = base
        _enter(st, stage)
        try:
            return fn(*args, **kwargs)
        finally:
            _leave(st)

    return functools.update_wrapper(wrapped, fn, assigned=("__name__",), updated=())  # and __wrapped__


def _tag_of(st: _State) -> str:
    for frame in reversed(st.stack):
        if frame[0] in TAGGED:
            return str(frame[0])
    return "spool other"


class _Staged:
    """A spool op that runs on the writer thread, charged to `stage`: the stage of who submitted it."""

    def __init__(self, op: Callable[..., Any], stage: str) -> None:
        self.run, self.stage = _wrap(op, stage), stage

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.run(*args, **kwargs)


def _wrap_submit(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Spool.submit_write: the op runs on the writer thread, charged to the stage of who asked."""
    def submit_write(self: Any, op: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        tag = _tag_of(_state())
        return fn(self, _Staged(op, tag), *args, **kwargs)
    return submit_write


def _wrap_batch(fn: Callable[..., Any]) -> Callable[..., Any]:
    def commit(self: Any, batch: list[Any], *args: Any, **kwargs: Any) -> Any:
        st = _state()
        tags = [getattr(getattr(r, "op", None), "stage", "spool other") for r in batch] or ["spool other"]
        if not st.base:
            st.base = "(base) writer queue"
        _enter(st, "spool batch", tags)
        try:
            return fn(self, batch, *args, **kwargs)
        finally:
            _leave(st)
    return commit


def _find(modules: str, paths: str) -> tuple[Any, str, str] | None:
    """(owner, attribute, where) of the first module|path pair that exists."""
    for module in modules.split("|"):
        try:
            mod: Any = importlib.import_module(module)
        except ImportError:
            continue
        for path in paths.split("|"):
            *owners, attr = path.split(".")
            obj = mod
            for name in owners:
                obj = getattr(obj, name, None)
            if obj is not None and getattr(obj, attr, None) is not None:
                return obj, attr, f"{module}.{path}"
    return None


def install() -> dict[str, list[str]]:
    done, missing = [], []
    for modules, paths, stage in [*WRAP, (*BATCH, "(batch)"), (*SUBMIT, "(submit)")]:
        found = _find(modules, paths)
        if found is None:
            missing.append(f"{modules}.{paths}")
            continue
        obj, attr, where = found
        fn = getattr(obj, attr)
        if stage == "(submit)":
            new = _wrap_submit(fn)
        elif stage == "(batch)":
            new = _wrap_batch(fn)
        else:
            new = _wrap(fn, stage, f"(base) {stage}" if where.endswith(tuple("." + b for b in BASE)) else "")
        setattr(obj, attr, new)
        done.append(where)
    return {"wrapped": done, "missing": missing}


def snapshot() -> dict[str, Any]:
    by_stage: collections.Counter[str] = collections.Counter()
    calls: collections.Counter[str] = collections.Counter()
    by_thread: collections.Counter[str] = collections.Counter()
    with _lock:
        states = list(_threads)
    for st in states:
        for _ in range(5):  # another thread may add a key meanwhile
            try:
                acc, n = dict(st.acc), dict(st.calls)
                break
            except RuntimeError:
                continue
        else:
            continue
        by_stage.update(acc)
        calls.update(n)
        by_thread[_kind(st.name)] += sum(acc.values())
    return {"stages_ns": dict(by_stage), "calls": dict(calls), "threads_ns": dict(by_thread)}


def main() -> None:
    out = sys.argv[1]
    sys.argv = ["sidecar", *sys.argv[2:]]
    installed = install()
    taken = [0]

    def dump(_signum: int, _frame: Any) -> None:
        data = {**snapshot(), **installed, "pid": os.getpid()}
        path = f"{out}.{taken[0]}"
        taken[0] += 1
        with open(path + ".tmp", "w") as f:
            json.dump(data, f)
        os.replace(path + ".tmp", path)

    signal.signal(signal.SIGUSR2, dump)
    runpy.run_module("sidecar", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
