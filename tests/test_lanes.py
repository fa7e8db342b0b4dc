"""Lanes (a route's `lane:`): order and coalescing per key.

Fast tests first: the config, the key read at acceptance, and the local policy (queue_local) over the
in-memory store through the one scheduler, where each job's "hook" is a function of the test. Then end
to end on the embedded spool: a real sidecar, real hooks writing start/end marks with timestamps, a
kill -9. The shared spool's replicas are in test_lanes_shared.py."""

from __future__ import annotations

import itertools
import json
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sidecar import config as config_mod
from sidecar import lanes, request_context
from sidecar.attempts import Attempt
from sidecar.config import Config
from sidecar.errors import ConfigError
from sidecar.jobs import JobState, Ticket
from sidecar.queue_local import LocalQueue
from sidecar.scheduler import Executor
from sidecar.spool import Delivery

from .conftest import Sidecar, wait_for, write_config
from .memory_queue import MemoryStore
from .support import SCRIPTS, SECRET, metric, spool_jobs, table
from .test_scheduler import outcome

LANE_ROUTES = f"""
- {{event: push, name: fifo, run: {SCRIPTS}/record.sh, lane: {{key: repository.full_name}}}}
- {{event: push, name: latest, run: {SCRIPTS}/record.sh, lane: {{key: repository.full_name, mode: latest}}}}
- {{event: push, name: debounce, run: {SCRIPTS}/record.sh,
    lane: {{key: $header.X-Repo, mode: debounce, debounce_s: 0.3, max_wait_s: 0.8}}}}
- {{event: push, name: flaky, run: {SCRIPTS}/record.sh, retries: 3, lane: {{key: repository.full_name}}}}
"""


def load(tmp_path: Path, routes: str) -> Config:
    (tmp_path / "config.yaml").write_text(table(routes))
    return config_mod.load(tmp_path / "config.yaml", environ={"WEBHOOK_SECRET": SECRET})


def config_error(tmp_path: Path, lane: str) -> str:
    try:
        load(tmp_path, f"- {{event: push, run: {SCRIPTS}/record.sh, lane: {lane}}}")
    except ConfigError as e:
        return str(e)
    return ""


# --- the config and the key ---------------------------------------------------------------------
def test_lane_config_defaults_and_errors(tmp_path: Path) -> None:
    routes = load(tmp_path, LANE_ROUTES).endpoints["/webhook"].routes
    assert routes[0].lane == lanes.Lane("repository.full_name", "fifo")
    assert routes[2].lane == lanes.Lane("$header.X-Repo", "debounce", 0.3, 0.8)
    assert load(tmp_path, f"- {{event: push, run: {SCRIPTS}/record.sh, lane: {{key: a, mode: debounce}}}}").endpoints[
        "/webhook"].routes[0].lane == lanes.Lane("a", "debounce", 5.0, 50.0)
    assert "lane.mode: must be one of fifo, latest, debounce" in config_error(tmp_path, "{key: a, mode: newest}")
    assert "lane: missing required key 'key'" in config_error(tmp_path, "{mode: latest}")
    assert "lane.debounce_s: only with mode: debounce" in config_error(tmp_path, "{key: a, debounce_s: 2}")
    assert "lane.key: must be a payload path" in config_error(tmp_path, "{key: $query.x}")
    assert "lane.max_wait_s: must be at least debounce_s" in config_error(
        tmp_path, "{key: a, mode: debounce, debounce_s: 5, max_wait_s: 1}")
    assert "lane.size: unknown key" in config_error(tmp_path, "{key: a, size: 2}")
    assert "lane: must be a mapping" in config_error(tmp_path, "repository")


def test_the_lane_is_the_key_value_read_at_acceptance() -> None:
    payload = {"repository": {"full_name": "acme/web", "id": 7}, "n": [1, 2]}
    headers = {"X-Repo": "acme/api"}
    assert lanes.value_of(lanes.Lane("repository.full_name"), payload, headers) == "acme/web"
    assert lanes.value_of(lanes.Lane("repository.id"), payload, headers) == "7"
    assert lanes.value_of(lanes.Lane("n"), payload, headers) == "[1,2]"
    assert lanes.value_of(lanes.Lane("$header.X-Repo"), payload, headers) == "acme/api"
    assert lanes.value_of(lanes.Lane("missing.path"), payload, headers) == ""
    assert lanes.value_of(lanes.Lane("$header.X-None"), payload, headers) == ""
    long = lanes.value_of(lanes.Lane("x"), {"x": "y" * 1000}, headers)
    assert long.startswith("sha256:") and long == lanes.value_of(lanes.Lane("x"), {"x": "y" * 1000}, headers)


def test_debounce_waits_from_the_newest_but_no_longer_than_max_wait_after_the_oldest() -> None:
    lane = lanes.Lane("k", "debounce", 2.0, 5.0)
    assert lanes.settle(lane, 100.0, []) == (102.0, 100.0)
    assert lanes.settle(lane, 104.0, [100.0]) == (105.0, 100.0)  # 100 + max_wait_s comes first
    assert lanes.settle(lane, 101.0, [100.0, None]) == (103.0, 100.0)
    assert lanes.settle(lanes.Lane("k", "latest"), 104.0, [100.0]) == (0.0, 100.0)


# --- the local policy over the in-memory store ----------------------------------------------------
class Lanes:
    """The one scheduler with the local policy over a MemoryStore, on the LANE_ROUTES table."""

    def __init__(self, cfg: Config, execute: Callable[[Ticket], Attempt], workers: int = 4) -> None:
        self.cfg, self.store = cfg, MemoryStore()
        self.executor = Executor(LocalQueue(self.store, 1000, lambda: cfg), workers, 1000, lambda: cfg,
                                 execute=execute)

    def submit(self, n: int, route: str, repo: str) -> int:
        ep = self.cfg.endpoints["/webhook"]
        routes = [r for r in ep.routes if r.name == route]
        payload = {"repository": {"full_name": repo}}
        context = request_context.of_request(ep, {"X-Repo": repo}, "/webhook", payload, routes)
        d = Delivery("/webhook", f"d-{n}", "github", "push", f"req-{n}", "", json.dumps(payload).encode(), context)
        return self.executor.submit(d, routes).job_ids[0]

    def states(self) -> dict[int, str]:
        return {r.id: r.state for r in self.store.rows.values()}


@pytest.fixture
def policy(tmp_path: Path) -> Iterator[Callable[..., Lanes]]:
    cfg = load(tmp_path, LANE_ROUTES)
    made: list[Lanes] = []

    def make(execute: Callable[[Ticket], Attempt], workers: int = 4) -> Lanes:
        made.append(Lanes(cfg, execute, workers))
        return made[-1]

    yield make
    for h in made:
        h.executor.stop(1.0)
        h.executor.close()


class Marks:
    """What the test's "hooks" did: (lane, job) in start order, and the most of one lane at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.started: list[tuple[str, int]] = []
        self.running: dict[str, int] = {}
        self.peak: dict[str, int] = {}
        self.most_at_once = 0

    def run(self, t: Ticket, hold: float = 0.02) -> None:
        lane = t.row.context.lane(t.row.route.name)
        with self.lock:
            self.started.append((lane, t.job_id))
            self.running[lane] = self.running.get(lane, 0) + 1
            self.peak[lane] = max(self.peak.get(lane, 0), self.running[lane])
            self.most_at_once = max(self.most_at_once, sum(self.running.values()))
        time.sleep(hold)
        with self.lock:
            self.running[lane] -= 1


def test_fifo_runs_one_job_per_lane_in_order_and_lanes_in_parallel(policy: Callable[..., Lanes]) -> None:
    marks = Marks()

    def execute(t: Ticket) -> Attempt:
        marks.run(t)
        return outcome(t, JobState.DONE)

    h = policy(execute)
    ids = {repo: [h.submit(n * 3 + i, "fifo", repo) for n in range(8)] for i, repo in enumerate("abc")}
    wait_for(lambda: len(h.store.records) == 24, timeout=10)
    for repo, jobs in ids.items():
        assert [j for lane, j in marks.started if lane == repo] == jobs  # acceptance order
        assert marks.peak[repo] == 1
    assert marks.most_at_once >= 2  # other lanes ran beside each other
    wait_for(lambda: h.executor.depth == 0, timeout=5)


def test_a_job_waiting_for_its_retry_holds_its_lane(policy: Callable[..., Lanes]) -> None:
    order: list[tuple[int, int]] = []

    def execute(t: Ticket) -> Attempt:
        order.append((t.job_id, t.row.attempts))
        if t.job_id == first and t.row.attempts < 2:
            return outcome(t, JobState.PENDING, next_at=time.time() + 0.1)
        return outcome(t, JobState.DONE)

    h = policy(execute)
    first = h.submit(1, "flaky", "a")
    second = h.submit(2, "flaky", "a")
    wait_for(lambda: set(h.states().values()) == {"done"} and len(order) == 4, timeout=10)
    assert order == [(first, 0), (first, 1), (first, 2), (second, 0)]


def test_latest_supersedes_queued_jobs_never_the_running_one(policy: Callable[..., Lanes]) -> None:
    release = threading.Event()
    ran: list[int] = []

    def execute(t: Ticket) -> Attempt:
        ran.append(t.job_id)
        if t.job_id == burst[0]:
            release.wait(10)
        return outcome(t, JobState.DONE)

    h = policy(execute)
    burst = [h.submit(1, "latest", "a")]
    wait_for(lambda: ran == burst[:1], timeout=5)
    burst += [h.submit(n, "latest", "a") for n in range(2, 7)]
    other = h.submit(7, "latest", "b")  # another lane: untouched
    wait_for(lambda: other in ran, timeout=5)
    assert [h.states()[j] for j in burst] == ["pending"] + ["superseded"] * 4 + ["pending"]
    release.set()
    wait_for(lambda: h.states()[burst[-1]] == "done", timeout=5)
    assert ran == [burst[0], other, burst[-1]]
    assert h.executor.depth == 0


def test_debounce_runs_the_newest_of_a_burst_after_its_wait(policy: Callable[..., Lanes]) -> None:
    started: dict[int, float] = {}

    def execute(t: Ticket) -> Attempt:
        started[t.job_id] = time.time()
        return outcome(t, JobState.DONE)

    h = policy(execute)
    accepted: dict[int, float] = {}
    for n in range(4):  # 0.45 s of pushes 0.15 s apart: each restarts the 0.3 s wait
        accepted[h.submit(n, "debounce", "a")] = time.time()
        time.sleep(0.15)
    newest = max(accepted)
    wait_for(lambda: newest in started, timeout=5)
    assert list(started) == [newest]
    assert 0.3 - 0.05 <= started[newest] - accepted[newest] <= 0.3 + 0.5
    assert sorted(h.states().values()) == ["done"] + ["superseded"] * 3


# --- end to end: a real sidecar, real hooks ---------------------------------------------------------
# A hook that appends "start|end ROUTE [LANE] DELIVERY TIME REPLICA" to $OUT/marks around a sleep of $SLEEP
# (and, with $HOLD set, a wait for $OUT/release).
MARK = ('cat >/dev/null; m() { echo "$1 $WEBHOOK_ROUTE [$WEBHOOK_LANE] $WEBHOOK_DELIVERY $(date +%s.%N)'
        ' $WEBHOOK_REPLICA" >> "$OUT/marks"; }; m start;'
        ' while [ -n "$HOLD" ] && [ ! -e "$OUT/release" ]; do sleep 0.05; done; sleep "$SLEEP"; m end')


def lane_route(name: str, mode: str = "fifo", sleep: float = 0.2, hold: bool = False, more: str = "") -> str:
    """A route `name` (deliveries whose payload has kind: NAME) running MARK in the lane of the repository."""
    hook = MARK.replace("{", "{{").replace("}", "}}")  # write_config formats the table
    return (f"- event: push\n  name: {name}\n  if: {{{{kind: {name}}}}}\n  run: [sh, -c, '{hook}']\n"
            f"  lane:\n    key: repository.full_name\n    mode: {mode}\n{more}"
            f"  env: {{{{OUT: {{out}}, SLEEP: \"{sleep}\", HOLD: \"{'1' if hold else ''}\"}}}}\n")


def push(sidecar: Sidecar, route: str, repo: str, delivery: str) -> float:
    """Deliver a push for `route` in the lane `repo`; the time it was accepted (answered)."""
    body = json.dumps({"kind": route, "repository": {"full_name": repo}}).encode()
    assert sidecar.deliver(body, delivery=delivery).status == 200
    return time.time()


def marks(out: Path) -> list[tuple[str, str, str, str, float, str]]:
    """(kind, route, lane, delivery, time, replica) of every mark the hooks wrote, in file order."""
    found = []
    for line in (out / "marks").read_text().splitlines() if (out / "marks").exists() else []:
        kind, route, rest = line.split(" ", 2)
        lane, _, rest = rest[1:].partition("] ")
        delivery, at, *replica = rest.split()
        found.append((kind, route, lane, delivery, float(at), replica[0] if replica else ""))
    return found


def spans(out: Path, route: str) -> dict[str, list[tuple[str, float, float]]]:
    """Per lane, (delivery, start, end) of each finished run of `route`, in start order (the last start
    of a delivery that ran again after a kill)."""
    found = [m for m in marks(out) if m[1] == route]
    ends = {(m[2], m[3]): m[4] for m in found if m[0] == "end"}
    starts = {(m[2], m[3]): m[4] for m in found if m[0] == "start"}
    by_lane: dict[str, list[tuple[str, float, float]]] = {}
    for (lane, delivery), start in sorted(starts.items(), key=lambda kv: kv[1]):
        if (lane, delivery) in ends:
            by_lane.setdefault(lane, []).append((delivery, start, ends[(lane, delivery)]))
    return by_lane


def assert_one_at_a_time(runs: list[tuple[str, float, float]]) -> None:
    for (_, _, end), (_, start, _) in itertools.pairwise(runs):
        assert start >= end, runs


@pytest.fixture(scope="module")
def lanes_sidecar(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Sidecar, Path, Path]]:
    """One sidecar on the embedded spool with a route per mode; yields (sidecar, config, hooks' out)."""
    from .conftest import serving

    directory = tmp_path_factory.mktemp("lanes")
    routes = (lane_route("fifo", sleep=0.2) + lane_route("latest", "latest", sleep=0.6)
              + lane_route("debounce", "debounce", sleep=0, more="    debounce_s: 0.5\n    max_wait_s: 5\n")
              + lane_route("bounded", "debounce", sleep=0, more="    debounce_s: 0.5\n    max_wait_s: 1.0\n"))
    config = write_config(directory, table(routes))
    with serving(config) as sidecar:
        yield sidecar, config, directory / "out"


def test_fifo_order_and_no_overlap_per_key_with_keys_in_parallel(lanes_sidecar: tuple[Sidecar, Path, Path]) -> None:
    sidecar, _, out = lanes_sidecar
    for n in range(4):
        for repo in ("acme/a", "acme/b"):
            push(sidecar, "fifo", repo, f"fifo-{repo[-1]}{n}")
    wait_for(lambda: sum(len(v) for v in spans(out, "fifo").values()) == 8, timeout=10)
    runs = spans(out, "fifo")
    for repo in ("acme/a", "acme/b"):
        assert [d for d, _, _ in runs[repo]] == [f"fifo-{repo[-1]}{n}" for n in range(4)]
        assert_one_at_a_time(runs[repo])
    a, b = runs["acme/a"], runs["acme/b"]
    assert any(sa < eb and sb < ea for _, sa, ea in a for _, sb, eb in b)  # the lanes ran side by side


def test_latest_runs_the_first_and_the_newest_of_a_burst(lanes_sidecar: tuple[Sidecar, Path, Path]) -> None:
    sidecar, config, out = lanes_sidecar
    before = metric(sidecar, "webhook_sidecar_jobs_superseded_total")
    push(sidecar, "latest", "acme/a", "latest-1")
    wait_for(lambda: any(m[3] == "latest-1" for m in marks(out)), timeout=5)
    for n in range(2, 6):
        push(sidecar, "latest", "acme/a", f"latest-{n}")
    assert metric(sidecar, "webhook_sidecar_lanes_waiting") == 1
    wait_for(lambda: len(spans(out, "latest").get("acme/a", [])) == 2, timeout=10)
    runs = spans(out, "latest")["acme/a"]
    assert [d for d, _, _ in runs] == ["latest-1", "latest-5"]
    assert_one_at_a_time(runs)
    superseded = sidecar.find_logs("job.superseded")
    assert [(e["delivery"], e["by"], e["lane"]) for e in superseded if e["route"] == "latest"] == [
        ("latest-2", "latest-3", "acme/a"), ("latest-3", "latest-4", "acme/a"), ("latest-4", "latest-5", "acme/a")]
    states = {j["delivery"]: j["state"] for j in spool_jobs(config) if j["route"] == "latest"}
    assert states == {"latest-1": "done", "latest-2": "superseded", "latest-3": "superseded",
                      "latest-4": "superseded", "latest-5": "done"}
    assert metric(sidecar, "webhook_sidecar_jobs_superseded_total") - before == 3


def test_debounce_runs_the_newest_after_its_wait_bounded_by_max_wait(
        lanes_sidecar: tuple[Sidecar, Path, Path]) -> None:
    sidecar, _, out = lanes_sidecar
    accepted: dict[str, float] = {}
    for n in range(8):  # 0.2 s apart for 1.4 s: debounce_s 0.5 is restarted each time
        for route in ("debounce", "bounded"):
            accepted[f"{route}-{n}"] = push(sidecar, route, "acme/a", f"{route}-{n}")
        time.sleep(0.2)
    wait_for(lambda: len(spans(out, "debounce").get("acme/a", [])) == 1, timeout=5)
    ((newest, start, _),) = spans(out, "debounce")["acme/a"]
    assert newest == "debounce-7" and 0.5 - 0.1 <= start - accepted[newest] <= 0.5 + 0.5
    # bounded: max_wait_s 1.0 after the oldest it superseded (bounded-0) comes before the pushes stop
    wait_for(lambda: any(m[1] == "bounded" and m[0] == "end" for m in marks(out)), timeout=5)
    first = spans(out, "bounded")["acme/a"][0]
    assert 1.0 - 0.1 <= first[1] - accepted["bounded-0"] + 0.2 <= 1.0 + 0.2 + 0.5, first
    wait_for(lambda: "bounded-7" in {d for d, _, _ in spans(out, "bounded").get("acme/a", [])}, timeout=5)
    assert len(spans(out, "bounded")["acme/a"]) <= 3


def test_kill_9_with_queued_lane_jobs_keeps_their_order(tmp_path: Path, sidecars: Callable[..., Sidecar]) -> None:
    config = write_config(tmp_path, table(lane_route("fifo", sleep=0.05, hold=True)))
    out = tmp_path / "out"
    first = sidecars(config)
    for n in range(5):
        push(first, "fifo", "acme/a", f"k{n}")
    wait_for(lambda: any(m[3] == "k0" for m in marks(out)), timeout=5)
    first.stop(signal.SIGKILL)
    again = sidecars(config)
    again.wait_log(lambda e: e.get("msg") == "spool.recovered")
    (out / "release").touch()
    wait_for(lambda: len(spans(out, "fifo").get("acme/a", [])) == 5, timeout=15)
    runs = spans(out, "fifo")["acme/a"]
    assert [d for d, _, _ in runs] == [f"k{n}" for n in range(5)]
    assert_one_at_a_time(runs)
