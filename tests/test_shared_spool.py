"""Several replicas, one queue: real sidecar processes sharing a real (throwaway) PostgreSQL.

Replicas are started with --replica NAME; routes record what ran where into files.
Leases are short (lease_s: 2) so takeovers happen within the test's patience.
"""

from __future__ import annotations

import http.client
import itertools
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import github_signature, wait_for, write_config
from .pg import PASSWORD, Postgres
from .support import SPOOL_URL_VAR as VAR
from .support import free_port, lines, metric, serve_once, shared_table, spool_cli, spool_jobs, start_replicas, where


def post(port: int, delivery: str, body: bytes = b"{}", timeout: float = 10) -> int:
    """One signed delivery on a fresh connection; the status, or 0 when the connection failed."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", "/webhook", body=body, headers={
            "X-GitHub-Event": "push", "X-GitHub-Delivery": delivery, "X-Hub-Signature-256": github_signature(body)})
        resp = conn.getresponse()
        resp.read()
        return resp.status
    except OSError:
        return 0
    finally:
        conn.close()


def test_three_replicas_run_each_delivery_once_and_broadcasts_once_per_replica(tmp_path: Path, sidecars,
                                                                                 pg_url: str) -> None:
    config = write_config(tmp_path, shared_table(where("normal") + where("everywhere", broadcast=True)))
    out = tmp_path / "out"
    names = ["r1", "r2", "r3"]
    replicas = start_replicas(sidecars, config, pg_url, names)
    sent = [f"rr-{i}" for i in range(60)]
    for i, delivery in enumerate(sent):
        response = replicas[i % 3].deliver(b"{}", delivery=delivery)
        assert response.status == 200 and response.json()["status"] == "accepted", response.body
    expected = len(sent) * 4  # one normal run, three broadcast runs
    wait_for(lambda: len(lines(out / "ran")) >= expected, timeout=30, interval=0.1)
    time.sleep(0.5)  # a run beyond the expected count would show up now
    runs = [tuple(line.split()) for line in lines(out / "ran")]
    normal = Counter(d for d, route, _ in runs if route == "normal")
    assert normal == Counter({d: 1 for d in sent})
    broadcast = Counter((d, r) for d, route, r in runs if route == "everywhere")
    assert broadcast == Counter({(d, r): 1 for d in sent for r in names})
    # The normal route's runs are spread: deliveries accepted by one replica ran on others.
    assert len({r for _, route, r in runs if route == "normal"}) >= 2
    # Each outcome is recorded once its run is over (the recorder commits them in batches).
    jobs: list[dict] = []

    def all_done() -> bool:
        jobs[:] = spool_jobs(config, "--limit", "1000", env={VAR: pg_url})
        return {j["state"] for j in jobs} == {"done"}
    try:
        wait_for(all_done, timeout=10, interval=0.2)
    except AssertionError:
        # Say which (a CI run once found one not done after every run had happened exactly once).
        late = [{k: j.get(k) for k in ("id", "state", "route", "replica", "attempts", "outcome")}
                for j in jobs if j["state"] != "done"]
        raise AssertionError(f"{len(late)} of {len(jobs)} jobs not done 10 s after their runs: {late[:10]}") from None
    jobs = spool_jobs(config, "--limit", "1000", env={VAR: pg_url})
    assert len(jobs) == expected and {j["state"] for j in jobs} == {"done"}
    assert {j["replica"] for j in jobs} == set(names)
    # Heartbeats, not a count at one instant: a replica busy with its hooks may beat a moment late.
    wait_for(lambda: metric(replicas[0], "webhook_sidecar_replicas_live") == 3, timeout=10, interval=0.2)
    text = spool_cli(config, "list", "--limit", "3", env={VAR: pg_url}).stdout.splitlines()
    assert text[0].split() == ["ID", "STATE", "TRY", "UPDATED", "ENDPOINT", "ROUTE", "EVENT", "REPLICA", "DELIVERY"]
    assert text[1].split()[7] in names
    # Done deliveries dropped their bodies; the ids stay (dedupe).
    assert spool_cli(config, "show", str(jobs[0]["id"]), "--payload", env={VAR: pg_url}).stdout == ""
    assert replicas[1].deliver(b"{}", delivery=sent[0]).json()["status"] == "duplicate"


def test_kill_9_of_a_replica_its_running_jobs_finish_on_the_others(tmp_path: Path, sidecars, pg_url: str) -> None:
    lease_s = 2.0
    # Hooks hold until `release` exists: r1's are surely running when it dies, however slow the machine.
    config = write_config(tmp_path, shared_table("""
- event: push
  name: held
  run: [sh, -c, 'cat >/dev/null; echo "$WEBHOOK_DELIVERY $WEBHOOK_REPLICA" >> "$OUT/started";
    while [ ! -e "$OUT/release" ]; do sleep 0.05; done;
    echo "$WEBHOOK_DELIVERY $WEBHOOK_REPLICA $WEBHOOK_ATTEMPT" >> "$OUT/ran"']
  env: {{OUT: {out}}}
"""))
    out = tmp_path / "out"
    r1 = start_replicas(sidecars, config, pg_url, ["r1"])[0]
    first = [f"k-{i}" for i in range(4)]  # max_workers (4): all running on r1
    for delivery in first:
        assert r1.deliver(b"{}", delivery=delivery).status == 200
    wait_for(lambda: len(lines(out / "started")) == 4, timeout=10)
    r2, r3 = start_replicas(sidecars, config, pg_url, ["r2", "r3"])
    sent = first + [f"k-{i}" for i in range(4, 9)]
    for i, delivery in enumerate(sent[4:]):
        assert (r2, r3)[i % 2].deliver(b"{}", delivery=delivery).status == 200
    r1.proc.kill()
    killed_at = time.monotonic()
    r1.proc.wait(10)
    (out / "release").touch()
    on_r1 = {line.split()[0] for line in lines(out / "started") if line.endswith(" r1")}
    assert on_r1 == set(first)

    def survivors_ran() -> set[str]:
        return {line.split()[0] for line in lines(out / "ran") if line.split()[1] != "r1"}

    wait_for(lambda: set(sent) <= survivors_ran(), timeout=20, interval=0.05)
    elapsed = time.monotonic() - killed_at
    # The lease runs out (at most lease_s), a survivor's poll sees it (1 s), the hook runs again (at once).
    assert elapsed < lease_s + 2.5, f"took {elapsed:.1f} s"
    taken = [e for s in (r2, r3) for e in s.find_logs("job.taken_over")]
    # Every job r1 was running, and any it had claimed in reserve (for a worker to come free) without starting it.
    assert {e["delivery"] for e in taken} >= on_r1 and all(e["taken_from"] == "r1" for e in taken)
    # A takeover counts an attempt: the dead run was attempt 1.
    assert all(e["attempt"] == 2 for e in taken)
    reruns = [line.split() for line in lines(out / "ran") if line.split()[0] in on_r1 and line.split()[1] != "r1"]
    assert {r[2] for r in reruns} == {"2"}
    assert metric(r2, "webhook_sidecar_jobs_taken_over_total") + metric(r3, "webhook_sidecar_jobs_taken_over_total") \
        == len(taken)


def test_concurrency_1_holds_across_replicas(tmp_path: Path, sidecars, pg_url: str) -> None:
    config = write_config(tmp_path, shared_table("""
- {{event: push, run: {scripts}/span.sh, concurrency: 1, env: {{OUT: {out}, SLEEP: "0.2"}}}}
""", "max_workers: 4\n"))
    out = tmp_path / "out"
    replicas = start_replicas(sidecars, config, pg_url, ["c1", "c2", "c3"])

    def ran_on() -> set[object]:
        return {e.get("replica") for s in replicas for e in s.find_logs("hook.finished")}

    sent = 0
    # Which replica claims each job is a race (one that just finished a run often wins the next): send
    # batches until the runs have been spread over at least two replicas, so the limit is tested across them.
    while sent < 36 and (sent == 0 or len(ran_on()) < 2):
        for i in range(sent, sent + 9):
            assert replicas[i % 3].deliver(b"{}", delivery=f"c-{i}").status == 200
        sent += 9
        wait_for(lambda n=sent: len(lines(out / "spans")) == n, timeout=20, interval=0.05)
        wait_for(lambda n=sent: sum(len(s.find_logs("hook.finished")) for s in replicas) == n, timeout=5)
    spans = sorted(tuple(map(float, line.split())) for line in lines(out / "spans"))
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert start >= end, f"runs overlapped: {spans}"
    assert len(ran_on()) >= 2  # the limit held while the runs were spread over replicas


def test_same_delivery_to_two_replicas_is_a_duplicate(tmp_path: Path, sidecars, pg_url: str) -> None:
    config = write_config(tmp_path, shared_table(where("once")))
    out = tmp_path / "out"
    a, b = start_replicas(sidecars, config, pg_url, ["a", "b"])
    assert a.deliver(b"{}", delivery="twice").json()["status"] == "accepted"
    second = b.deliver(b"{}", delivery="twice")
    assert second.status == 200 and second.json() == {"status": "duplicate", "delivery": "twice"}
    assert b.deliver(b"{}", delivery="marker").json()["status"] == "accepted"
    wait_for(lambda: {"twice", "marker"} <= {line.split()[0] for line in lines(out / "ran")}, timeout=10)
    assert [line.split()[0] for line in lines(out / "ran")].count("twice") == 1
    # Both at once: exactly one is accepted.
    results: list[str] = []
    threads = [threading.Thread(target=lambda s=s: results.append(s.deliver(b"{}", delivery="race").json()["status"]))
               for s in (a, b, a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sorted(results) == ["accepted", "duplicate", "duplicate", "duplicate"]


class Stream:
    """A steady stream of deliveries, sent round-robin to whichever replicas are up; a refused or
    failed one goes to the next replica (as a load balancer and the sender's retries would)."""

    def __init__(self, ports: Callable[[], list[int]], prefix: str, interval: float = 0.02) -> None:
        self.ports, self.prefix, self.interval = ports, prefix, interval
        self.sent: list[str] = []
        self.acked: list[str] = []
        self.statuses: Counter[int] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Stream:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        for i in itertools.count():
            if self._stop.is_set():
                return
            delivery = f"{self.prefix}-{i}"
            self.sent.append(delivery)
            for port in itertools.islice(itertools.cycle(self.ports() or [0]), i % 3, i % 3 + 6):
                status = post(port, delivery, timeout=5) if port else 0
                self.statuses[status] += 1
                if status == 200:
                    self.acked.append(delivery)
                    break
                if self._stop.wait(0.05):
                    return
            time.sleep(self.interval)


def test_rolling_restart_under_a_stream_loses_nothing(tmp_path: Path, sidecars, pg_url: str) -> None:
    config = write_config(tmp_path, shared_table(where("roll", sleep=0.3), "max_workers: 4\n"))
    out = tmp_path / "out"
    names = ["p1", "p2", "p3"]
    live = dict(zip(names, start_replicas(sidecars, config, pg_url, names), strict=True))
    with Stream(lambda: [s.port for s in list(live.values()) if s.proc.poll() is None], "roll") as stream:
        wait_for(lambda: len(stream.acked) >= 20, timeout=10)
        for n, name in enumerate(names):
            old = live.pop(name)
            old.stop(signal.SIGTERM)
            assert old.proc.returncode == 0
            # A Deployment's new pod has a new name.
            live[f"{name}-new"] = start_replicas(sidecars, config, pg_url, [f"{name}-new"])[0]
            wait_for(lambda n=n: len(stream.acked) >= 20 * (n + 2), timeout=15)
    assert set(stream.statuses) <= {200, 503, 0}
    wait_for(lambda: set(stream.acked) <= {line.split()[0] for line in lines(out / "ran")}, timeout=30,
             interval=0.1)
    runs = Counter(line.split()[0] for line in lines(out / "ran"))
    twice = sum(1 for d in stream.acked if runs[d] > 1)
    print(f"\nrolling restart: sent {len(stream.sent)}, acknowledged {len(stream.acked)},"
          f" ran {sum(1 for d in stream.acked if runs[d])}, ran twice {twice}")
    assert not set(stream.acked) - set(runs)
    assert all(runs[d] <= 2 for d in stream.acked)


def test_database_stopped_during_a_stream(tmp_path: Path, sidecars) -> None:
    """A server of its own: an immediate stop is a crash, and the other tests' server stays up."""
    own = Postgres()
    try:
        url = own.create_database()
        config = write_config(tmp_path, shared_table(where("outage") + """
- event: deploy
  name: long
  run: [sh, -c, 'cat >/dev/null; echo "$WEBHOOK_ATTEMPT" >> "$OUT/long.started"; sleep 30; touch "$OUT/long.done"']
  env: {{OUT: {out}}}
"""))
        out = tmp_path / "out"
        a, b = start_replicas(sidecars, config, url, ["o1", "o2"])
        assert a.deliver(b"{}", event="deploy", delivery="long").status == 200
        wait_for(lambda: lines(out / "long.started") == ["1"], timeout=10)
        with Stream(lambda: [a.port, b.port], "outage", interval=0.01) as stream:
            wait_for(lambda: len(stream.acked) >= 20, timeout=10)
            own.stop("immediate")
            stopped = time.monotonic()
            # Fencing: the hook whose lease cannot be renewed is stopped before the lease (2 s) runs out.
            holder = wait_for(lambda: next((s for s in (a, b) if s.find_logs("hook.interrupted")), None), timeout=5)
            assert time.monotonic() - stopped < 2.0
            assert holder.find_logs("job.fenced")[0]["delivery"] == "long"
            wait_for(lambda: a.request("GET", "/readyz").status == 503, timeout=10)
            down = a.request("GET", "/readyz")
            assert down.status == 503 and "spool database" in down.json()["error"]
            refused = a.deliver(b"{}", delivery="while-down")
            assert refused.status == 503 and refused.headers["retry-after"]
            acked_while_down = len(stream.acked)
            time.sleep(1.0)  # the stream keeps going against a dead database
            assert len(stream.acked) == acked_while_down, "200 while the database was down"
            own.start()
            back = time.monotonic()
            wait_for(lambda: a.request("GET", "/readyz").status == 200 and b.request("GET", "/readyz").status == 200,
                     timeout=10, interval=0.1)
            ready_after = time.monotonic() - back
            n = len(stream.acked)
            wait_for(lambda: len(stream.acked) >= n + 10, timeout=10)
        print(f"\noutage: ready again {ready_after:.1f} s after the database; answers {dict(stream.statuses)}")
        assert set(stream.statuses) <= {200, 503}, stream.statuses
        # A refusal while down is asserted above (`refused`); the stream itself may see none: a request of it
        # in its commit when the database stopped waits (COMMIT_DEADLINE_S) and lands once it is back.
        assert metric(a, "webhook_sidecar_database_errors_total") > 0
        wait_for(lambda: set(stream.acked) <= {line.split()[0] for line in lines(out / "ran")}, timeout=30,
                 interval=0.1)
        # The fenced run was never finished, and it starts again: handed back once the database answered
        # (attempt 1 again), or taken over after its lease ran out (attempt 2).
        # While the pool's connections to the restarted server are replaced, a renewal can fail again and
        # fence the new run too: it then starts once more. Never two at once (fencing), never finished.
        wait_for(lambda: len(lines(out / "long.started")) >= 2, timeout=10)
        assert all(n.isdigit() for n in lines(out / "long.started"))
        assert not (out / "long.done").exists()
        assert not [e for s in (a, b) for e in s.logs if e.get("level") == "error" and e.get("status") == 500]
    finally:
        own.destroy()


def test_a_malformed_url_is_the_one_start_error_and_never_shown(tmp_path: Path) -> None:
    """A database that is down or refuses us is waited for (test_shared_faults.py); a URL that can never
    work is a config error at start, naming the variable, never the URL or its password."""
    config = write_config(tmp_path, shared_table(where("x")))
    url = f"postgresql://postgres:{PASSWORD}@127.0.0.1:notaport/db"
    result = serve_once(config, {VAR: url})
    assert result.returncode == 1
    assert f"spool_url_env: {VAR}: its port is not a number" in result.stderr
    assert PASSWORD not in result.stderr + result.stdout and url not in result.stderr + result.stdout


@pytest.mark.parametrize("case", ["unreachable", "wrong password"])
def test_spool_commands_say_why_they_cannot_use_the_database(tmp_path: Path, pg: Postgres, case: str) -> None:
    config = write_config(tmp_path, shared_table(where("x")))
    url = {"unreachable": f"postgresql://postgres:{PASSWORD}@127.0.0.1:{free_port()}/db",
           "wrong password": pg.url(password="Wrong-" + PASSWORD)}[case]
    listing = spool_cli(config, "list", env={VAR: url})
    assert listing.returncode == 1 and f"{VAR}: cannot use the spool database" in listing.stderr
    assert PASSWORD not in listing.stderr + listing.stdout


def test_missing_variable_is_a_config_error(tmp_path: Path) -> None:
    config = write_config(tmp_path, shared_table(where("x")))
    result = serve_once(config, {})
    assert result.returncode == 1 and f"{VAR} is not set in the environment or the env file" in result.stderr


def test_newer_schema_is_a_clear_start_error(tmp_path: Path, pg_url: str) -> None:
    import psycopg
    config = write_config(tmp_path, shared_table(where("x")))
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE sidecar_schema_version (version int NOT NULL)")
        conn.execute("INSERT INTO sidecar_schema_version VALUES (99)")
    result = serve_once(config, {VAR: pg_url})
    assert result.returncode == 1 and "schema version 99, newer than this sidecar knows (1)" in result.stderr


def test_gone_replicas_broadcast_jobs_are_dropped_unless_it_returns(tmp_path: Path, sidecars, pg_url: str) -> None:
    """lease_s 1: gone after 10 s. g2 dies for good; g3 dies and comes back under its name in time."""
    config = write_config(tmp_path, shared_table("""
- event: push
  name: everywhere
  broadcast: true
  concurrency: 1
  run: [sh, -c, 'cat >/dev/null; while [ ! -e "$OUT/release" ]; do sleep 0.05; done;
    echo "$WEBHOOK_DELIVERY $WEBHOOK_REPLICA" >> "$OUT/ran"']
  env: {{OUT: {out}}}
""").replace("lease_s: 2", "lease_s: 1"))
    out = tmp_path / "out"
    g1, g2, g3 = start_replicas(sidecars, config, pg_url, ["g1", "g2", "g3"])
    for i in range(3):
        assert g1.deliver(b"{}", delivery=f"b-{i}").json()["routes"] == ["everywhere"]
    assert wait_for(lambda: metric(g1, "webhook_sidecar_queue_depth") == 9, timeout=5)  # the whole spool's
    g2.proc.kill()
    g3.proc.kill()
    g2.proc.wait(10)
    g3.proc.wait(10)
    (out / "release").touch()
    again = start_replicas(sidecars, config, pg_url, ["g3"])[0]
    wait_for(lambda: {f"b-{i} g3" for i in range(3)} | {f"b-{i} g1" for i in range(3)} <= set(lines(out / "ran")),
             timeout=15, interval=0.1)
    wait_for(lambda: [e for s in (g1, again) for e in s.find_logs("job.dropped")], timeout=20)
    time.sleep(1.5)  # every dropped job is logged in the same breath; a late one would show now
    dropped = [e for s in (g1, again) for e in s.find_logs("job.dropped")]
    assert sorted(e["delivery"] for e in dropped) == ["b-0", "b-1", "b-2"] and {e["replica"] for e in dropped} == {"g2"}
    assert metric(g1, "webhook_sidecar_broadcast_jobs_dropped_total") + metric(
        again, "webhook_sidecar_broadcast_jobs_dropped_total") == 3
    # Nobody else ran g2's jobs: only g2's own (orphaned, killed-with-it) hook may have written a line.
    assert {line for line in lines(out / "ran") if not line.endswith(" g2")} == \
        {f"b-{i} {r}" for i in range(3) for r in ("g1", "g3")}


def test_sqlite_users_never_load_the_database_driver(tmp_path: Path, sidecars) -> None:
    config = write_config(tmp_path, "endpoints:\n  - path: /webhook\n    provider: github\n"
                                    "    secret_env: WEBHOOK_SECRET\n    routes:\n"
                                    "      - event: push\n        run: [/bin/true]\n")
    sidecar = sidecars(config)
    maps = Path(f"/proc/{sidecar.proc.pid}/maps").read_text()
    assert "python" in maps  # the check reads a real map
    assert "psycopg" not in maps


def test_a_takeover_of_the_last_attempt_is_a_dead_letter(tmp_path: Path, sidecars, pg_url: str) -> None:
    """A hook that kills its replica every time must not go round the cluster forever."""
    config = write_config(tmp_path, shared_table("""
- event: push
  name: fragile
  retries: 0
  run: [sh, -c, 'cat >/dev/null; echo "$WEBHOOK_DELIVERY" >> "$OUT/started"; sleep 30']
  env: {{OUT: {out}}}
""").replace("lease_s: 2", "lease_s: 1"))
    out = tmp_path / "out"
    f1 = start_replicas(sidecars, config, pg_url, ["f1"])[0]
    for d in ("x-1", "x-2"):
        assert f1.deliver(b"{}", delivery=d).status == 200
    wait_for(lambda: sorted(lines(out / "started")) == ["x-1", "x-2"], timeout=10)
    f2 = start_replicas(sidecars, config, pg_url, ["f2"])[0]
    f1.proc.kill()
    dead = wait_for(lambda: len(f2.find_logs("hook.finished")) == 2 and f2.find_logs("hook.finished"), timeout=10)
    assert {(e["delivery"], e["outcome"], e["state"], e["attempt"], e["replica"]) for e in dead} == \
        {("x-1", "taken_over", "failed", 1, "f1"), ("x-2", "taken_over", "failed", 1, "f1")}
    failed = spool_jobs(config, "--failed", env={VAR: pg_url})
    assert sorted((j["delivery"], j["outcome"], j["replica"]) for j in failed) == \
        [("x-1", "taken_over", "f1"), ("x-2", "taken_over", "f1")]
    assert sorted(lines(out / "started")) == ["x-1", "x-2"]  # not run again


def test_a_draining_replica_gets_no_new_broadcasts_and_hands_its_queue_back(tmp_path: Path, sidecars,
                                                                           pg_url: str) -> None:
    config = write_config(tmp_path, shared_table("""
- event: push
  name: everywhere
  broadcast: true
  run: [sh, -c, 'cat >/dev/null; echo "$WEBHOOK_DELIVERY $WEBHOOK_REPLICA" >> "$OUT/ran"']
  env: {{OUT: {out}}}
- event: deploy
  name: slow
  run: [sh, -c, 'cat >/dev/null; echo "$WEBHOOK_DELIVERY $WEBHOOK_REPLICA" >> "$OUT/slow"; sleep 1.5']
  env: {{OUT: {out}}}
""", "max_workers: 1\n").replace("lease_s: 2", "lease_s: 30"))  # only a hand-back lets the others run at once
    out = tmp_path / "out"
    a, b = start_replicas(sidecars, config, pg_url, ["a", "b"], "--grace", "10")
    assert a.deliver(b"{}", delivery="before").status == 200
    wait_for(lambda: sorted(lines(out / "ran")) == ["before a", "before b"], timeout=10)
    for i in range(4):  # one worker each: b runs s-0 and claims s-1 in reserve; a takes the others
        assert b.deliver(b"{}", event="deploy", delivery=f"s-{i}").status == 200
    wait_for(lambda: any(line.endswith(" b") for line in lines(out / "slow")), timeout=10)
    b.proc.send_signal(signal.SIGTERM)
    b.wait_log(lambda e: e.get("msg") == "server.draining")
    assert a.deliver(b"{}", delivery="during").json()["routes"] == ["everywhere"]
    assert b.proc.wait(20) == 0
    jobs = spool_jobs(config, env={VAR: pg_url})
    assert [j["replica"] for j in jobs if j["delivery"] == "during"] == ["a"]  # b was draining: not live
    assert b.find_logs("spool.handed_back")[0]["jobs"] >= 1
    # Every deploy ran once in all; what b held ran on a without waiting for b's lease to run out (30 s).
    wait_for(lambda: sorted(line.split()[0] for line in lines(out / "slow")) == [f"s-{i}" for i in range(4)],
             timeout=15, interval=0.1)
