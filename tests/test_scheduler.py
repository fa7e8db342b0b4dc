"""The one scheduler (scheduler.Executor) with the local policy over an in-memory store: order,
concurrency, retries, a crash in our code, records that fail then commit, the drain. No file, no
database, no process: each job's "hook" is a function of the test that says what happened."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sidecar import config as config_mod
from sidecar.attempts import Attempt
from sidecar.carry import Job
from sidecar.config import Config
from sidecar.jobs import JobState, Ticket
from sidecar.queue_local import LocalQueue
from sidecar.scheduler import Executor
from sidecar.spool import Delivery

from .conftest import wait_for
from .memory_queue import MemoryStore
from .support import SCRIPTS, SECRET, table


def routes() -> str:
    return (f"- event: push\n  name: free\n  run: {SCRIPTS}/record.sh\n"
            f"- event: push\n  name: serial\n  run: {SCRIPTS}/record.sh\n  concurrency: 1\n"
            f"- event: push\n  name: flaky\n  run: {SCRIPTS}/record.sh\n  retries: 2\n")


@pytest.fixture
def cfg(tmp_path: Path) -> Config:
    (tmp_path / ".env").write_text(f"WEBHOOK_SECRET={SECRET}\n")
    (tmp_path / "config.yaml").write_text(table(routes(), top="retry_backoff_s: 0.01\nretry_backoff_max_s: 0.02\n"))
    return config_mod.load(tmp_path / "config.yaml", tmp_path / ".env")


def outcome(t: Ticket, state: JobState, next_at: float = 0.0) -> Attempt:
    row = t.row
    job = Job(delivery=row.delivery, endpoint=row.endpoint, provider=row.provider, event=row.event, route=row.route,
              request_id=row.request_id, cwd=row.cwd, attempt=row.attempts + 1)
    return Attempt(t.job_id, job, None, state, next_at, "ok" if state == JobState.DONE else "failed",
                   {"job": t.job_id, "route": row.route.name})


def delivery(n: int) -> Delivery:
    return Delivery("/webhook", f"d-{n}", "github", "push", f"req-{n}", "", b"{}")


class Harness:
    def __init__(self, cfg: Config, execute: Callable[[Ticket], Attempt], workers: int = 4) -> None:
        self.cfg = cfg
        self.store = MemoryStore()
        self.executor = Executor(LocalQueue(self.store, 1000, lambda: cfg), workers, 1000, lambda: cfg,
                                 execute=execute)

    def submit(self, n: int, *names: str) -> tuple[int, ...]:
        ep = self.cfg.endpoints["/webhook"]
        return self.executor.submit(delivery(n), [r for r in ep.routes if r.name in names]).job_ids

    def states(self) -> dict[int, str]:
        return {r.id: r.state for r in self.store.rows.values()}


@pytest.fixture
def harness(cfg: Config) -> Iterator[Callable[..., Harness]]:
    made: list[Harness] = []

    def make(execute: Callable[[Ticket], Attempt], workers: int = 4) -> Harness:
        made.append(Harness(cfg, execute, workers))
        return made[-1]

    yield make
    for h in made:
        h.executor.stop(1.0)
        h.executor.close()


def test_every_job_runs_once_and_is_recorded_done(harness: Callable[..., Harness]) -> None:
    seen: list[int] = []
    lock = threading.Lock()

    def execute(t: Ticket) -> Attempt:
        with lock:
            seen.append(t.job_id)
        return outcome(t, JobState.DONE)

    h = harness(execute)
    ids = [i for n in range(50) for i in h.submit(n, "free")]
    wait_for(lambda: set(h.states().values()) == {"done"} and len(h.states()) == 50, timeout=10)
    assert sorted(seen) == sorted(ids)
    assert sorted(job for job, _ in h.store.records) == sorted(ids)  # one record each
    wait_for(lambda: h.executor.depth == 0, timeout=5)


def test_a_serialized_route_never_runs_two_at_once_while_others_run_beside_it(
        harness: Callable[..., Harness]) -> None:
    running: dict[str, int] = {"serial": 0, "free": 0}
    peak: dict[str, int] = {"serial": 0, "free": 0}
    lock = threading.Lock()

    def execute(t: Ticket) -> Attempt:
        name = t.row.route.name
        with lock:
            running[name] += 1
            peak[name] = max(peak[name], running[name])
        time.sleep(0.01)  # the "hook" takes a while: overlaps would show
        with lock:
            running[name] -= 1
        return outcome(t, JobState.DONE)

    h = harness(execute, workers=4)
    for n in range(20):
        h.submit(n, "serial", "free")
    wait_for(lambda: len(h.store.records) == 40, timeout=10)
    assert peak["serial"] == 1
    assert peak["free"] >= 2


def test_a_retry_runs_again_after_its_time_and_counts_its_attempts(harness: Callable[..., Harness]) -> None:
    tries: list[int] = []

    def execute(t: Ticket) -> Attempt:
        tries.append(t.row.attempts)
        if t.row.attempts < 2:
            return outcome(t, JobState.PENDING, next_at=time.time() + 0.05)
        return outcome(t, JobState.DONE)

    h = harness(execute)
    (job,) = h.submit(1, "flaky")
    wait_for(lambda: h.states()[job] == "done", timeout=10)
    assert tries == [0, 1, 2]
    assert h.store.records == [(job, "pending"), (job, "pending"), (job, "done")]


def test_a_crash_in_our_code_runs_the_job_again_later(harness: Callable[..., Harness]) -> None:
    calls: list[float] = []

    def execute(t: Ticket) -> Attempt:
        calls.append(time.monotonic())
        if len(calls) == 1:
            raise RuntimeError("a bug of ours")
        return outcome(t, JobState.DONE)

    h = harness(execute)
    h.executor.crash_retry_s = 0.2
    (job,) = h.submit(1, "free")
    wait_for(lambda: h.states()[job] == "done", timeout=10)
    assert len(calls) == 2 and calls[1] - calls[0] >= 0.15
    assert h.store.records == [(job, "done")]  # the crash is not an attempt


def test_a_record_that_fails_is_retried_and_the_hook_not_run_again(harness: Callable[..., Harness]) -> None:
    runs: list[int] = []

    def execute(t: Ticket) -> Attempt:
        runs.append(t.job_id)
        return outcome(t, JobState.DONE)

    h = harness(execute)
    h.store.fail_records = 2  # a full disk for the first two tries
    (job,) = h.submit(1, "free")
    wait_for(lambda: h.states()[job] == "done", timeout=10)
    assert runs == [job]
    wait_for(lambda: h.executor.depth == 0, timeout=5)


def test_stop_interrupts_runs_past_the_grace_and_they_stay_queued(harness: Callable[..., Harness]) -> None:
    started = threading.Event()

    def execute(t: Ticket) -> Attempt:
        started.set()
        t.cancel.wait(10)
        return outcome(t, JobState.INTERRUPTED)

    h = harness(execute)
    (job,) = h.submit(1, "free")
    assert started.wait(5)
    began = time.monotonic()
    assert h.executor.stop(0.2) is False
    assert time.monotonic() - began < 5
    assert h.states()[job] == "pending" and h.store.records == []
    assert h.executor.running == 0


def test_a_drain_waits_for_runs_that_end_within_the_grace(harness: Callable[..., Harness]) -> None:
    def execute(t: Ticket) -> Attempt:
        time.sleep(0.2)
        return outcome(t, JobState.DONE)

    h = harness(execute)
    jobs = [i for n in range(3) for i in h.submit(n, "free")]
    wait_for(lambda: h.executor.running == 3, timeout=5)
    assert h.executor.stop(5.0) is True
    assert {h.states()[j] for j in jobs} == {"done"}  # the last records are in before stop returns
