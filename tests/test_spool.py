"""Durability as a user relies on it: kill -9, retries, dead letters, dedupe, concurrency, drain, queue bound."""

from __future__ import annotations

import itertools
import json
import signal
import threading
import time
from pathlib import Path

import pytest

from . import pg
from .conftest import github_signature, wait_for, write_config
from .support import lines, ran, spool_cli, spool_jobs, table


@pytest.fixture(params=["sqlite", "postgres"])
def spool(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The same behaviour on both backends: config lines naming the spool ("" is the embedded one).

    For postgres, a fresh database of the suite's throwaway server, in the variable the config names
    (sidecars and the spool CLI inherit it)."""
    if request.param == "sqlite":
        return ""
    monkeypatch.setenv("SPOOL_DATABASE_URL", pg.server().create_database())
    return "spool_url_env: SPOOL_DATABASE_URL\n"


def test_kill_9_mid_burst_loses_no_acknowledged_delivery(tmp_path: Path, sidecars, spool: str) -> None:
    config = write_config(tmp_path, table("""
          - event: "*"
            run: {scripts}/append.sh
            env: {{OUT: {out}}}
    """, spool + "max_workers: 2\n"))
    out = tmp_path / "out"
    sidecar = sidecars(config)
    acked: list[str] = []
    lock = threading.Lock()
    killed = threading.Event()

    def sender(worker: int) -> None:
        import http.client
        conn = http.client.HTTPConnection("127.0.0.1", sidecar.port, timeout=30)
        try:
            for i in range(75):
                delivery = f"d-{worker}-{i}"
                body = json.dumps({"n": i, "w": worker}).encode()
                try:
                    conn.request("POST", "/webhook", body=body, headers={
                        "X-GitHub-Event": "push", "X-GitHub-Delivery": delivery,
                        "X-Hub-Signature-256": github_signature(body)})
                    resp = conn.getresponse()
                    resp.read()
                except OSError:
                    return  # the server died: this one got no answer, so it is not required
                if resp.status == 200:
                    with lock:
                        acked.append(delivery)
                        if len(acked) == 120:
                            sidecar.proc.kill()  # SIGKILL mid-burst
                            killed.set()
        finally:
            conn.close()  # also on the early return, or CI sees an unclosed socket

    threads = [threading.Thread(target=sender, args=(w,)) for w in range(4)]  # 300 deliveries in all
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert killed.is_set(), "the burst ended before the kill"
    sidecar.proc.wait(10)
    assert len(acked) >= 120
    # Restart on the same spool: everything acknowledged runs at least once.
    again = sidecars(config)
    recovered = again.wait_log(lambda e: e.get("msg") == "server.listening")
    ran_before = set(ran(out))
    # Every acknowledged delivery had either run or was still in the spool.
    assert len(ran_before) + recovered["pending"] >= len(acked)
    wait_for(lambda: set(acked) <= set(ran(out)), timeout=60, interval=0.1)
    assert not set(acked) - set(ran(out))


def test_tempfail_is_retried_with_backoff_then_succeeds(tmp_path: Path, sidecars, spool: str) -> None:
    config = write_config(tmp_path, table("""
          - event: "*"
            run: {scripts}/flaky.sh
            retries: 3
            env: {{OUT: {out}, FAILS: "2"}}
    """, spool + "retry_backoff_s: 0.4\n"))
    sidecar = sidecars(config)
    assert sidecar.deliver(b"{}", delivery="flaky-1").status == 200
    done = sidecar.wait_log(lambda e: e.get("msg") == "hook.finished" and e.get("outcome") == "ok", timeout=10)
    assert done["attempt"] == 3 and done["state"] == "done"
    lines = (tmp_path / "out" / "flaky-1.attempts").read_text().splitlines()
    attempts = [int(line.split()[0]) for line in lines]
    times = [float(line.split()[1]) for line in lines]
    assert attempts == [1, 2, 3]  # WEBHOOK_ATTEMPT counts up
    # Backoff with 50-100% jitter: 0.2-0.4 s, then 0.4-0.8 s.
    assert 0.18 <= times[1] - times[0] < 1.5
    assert 0.38 <= times[2] - times[1] < 2.0
    retries = [e for e in sidecar.find_logs("hook.finished") if e.get("state") == "pending"]
    assert [e["outcome"] for e in retries] == ["failed", "failed"] and all(e["exit_code"] == 75 for e in retries)
    assert all(e["level"] == "warning" and e["retry_in_s"] > 0 for e in retries)


def test_retries_exhausted_and_other_exits_become_dead_letters(tmp_path: Path, sidecars, spool: str) -> None:
    config = write_config(tmp_path, table("""
          - {{event: push, run: {scripts}/flaky.sh, retries: 1, env: {{OUT: {out}, FAILS: "5"}}}}
          - {{event: push, run: {scripts}/gate.sh, env: {{OUT: {out}}}}}
    """, spool + "retry_backoff_s: 0.05\n"))
    sidecar = sidecars(config)
    assert sidecar.deliver(b"{}", delivery="dl-1").status == 200
    flaky = sidecar.wait_log(lambda e: e.get("msg") == "hook.finished" and e.get("route") == "flaky"
                             and e.get("state") == "failed", timeout=10)
    assert flaky["attempt"] == 2 and flaky["dead_letter"] is True
    gate = sidecar.wait_log(lambda e: e.get("msg") == "hook.finished" and e.get("route") == "gate")
    assert gate["attempt"] == 1 and gate["state"] == "failed" and gate["exit_code"] == 3

    jobs = spool_jobs(config, "--failed")
    assert sorted(j["route"] for j in jobs) == ["flaky", "gate"]
    gate_job = next(j for j in jobs if j["route"] == "gate")
    shown = json.loads(spool_cli(config, "show", str(gate_job["id"])).stdout)
    assert shown["output_tail"] == "gate closed\n" and shown["exit_code"] == 3
    assert spool_cli(config, "show", str(gate_job["id"]), "--payload").stdout == "{}"

    # Fix the cause, re-run the dead letter while the server runs.
    (tmp_path / "out" / "open").touch()
    retry = spool_cli(config, "retry", str(gate_job["id"]))
    assert retry.returncode == 0 and retry.stdout.strip() == "requeued 1 job(s)"
    wait_for(lambda: ran(tmp_path / "out") == ["dl-1"], timeout=5)
    ok = sidecar.wait_log(lambda e: e.get("msg") == "hook.finished" and e.get("route") == "gate"
                          and e.get("outcome") == "ok")
    assert ok["attempt"] == 1
    assert [j["route"] for j in spool_jobs(config, "--failed")] == ["flaky"]
    assert spool_cli(config, "retry", "--all-failed").stdout.strip() == "requeued 1 job(s)"
    assert spool_cli(config, "retry", "999").returncode == 1


def test_dedupe_both_ways(tmp_path: Path, sidecars, spool: str) -> None:
    config = write_config(tmp_path, table("""
          - event: push
            run: {scripts}/gate.sh
            env: {{OUT: {out}}}
    """, spool))
    out = tmp_path / "out"
    sidecar = sidecars(config)
    # A failed delivery runs again when redelivered.
    assert sidecar.deliver(b"{}", delivery="again").json()["status"] == "accepted"
    sidecar.wait_log(lambda e: e.get("msg") == "hook.finished" and e.get("state") == "failed")
    (out / "open").touch()
    second = sidecar.deliver(b"{}", delivery="again")
    assert second.json() == {"status": "accepted", "delivery": "again", "routes": ["gate"]}
    wait_for(lambda: ran(out) == ["again"])
    # A succeeded delivery is a duplicate and runs nothing.
    third = sidecar.deliver(b"{}", delivery="again")
    assert third.status == 200 and third.json() == {"status": "duplicate", "delivery": "again"}
    assert sidecar.wait_log(lambda e: e.get("msg") == "delivery.duplicate")["delivery"] == "again"
    # Give a wrongly started run every chance to show up before checking it did not.
    assert sidecar.deliver(b"{}", delivery="marker").status == 200
    wait_for(lambda: "marker" in ran(out))
    assert ran(out).count("again") == 1


APPEND = "- {{event: push, run: {scripts}/append.sh, env: {{OUT: {out}}}}}"  # appends the delivery id to out/ran


def span_runs(out: Path, count: int) -> list[tuple[float, ...]]:
    """(start, end) of the `count` runs of span.sh, in order, once all are written."""
    wait_for(lambda: len(lines(out / "spans")) == count, timeout=10)
    return sorted(tuple(map(float, line.split())) for line in lines(out / "spans"))


def test_concurrency_1_never_overlaps(tmp_path: Path, sidecars, spool: str) -> None:
    config = write_config(tmp_path, table("""
          - {{event: push, run: {scripts}/span.sh, concurrency: 1, env: {{OUT: {out}, SLEEP: "0.15"}}}}
    """, spool + "max_workers: 4\n"))
    out = tmp_path / "out"
    sidecar = sidecars(config)
    for i in range(6):
        assert sidecar.deliver(b"{}", delivery=f"c-{i}").status == 200
    spans = span_runs(out, 6)
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert start >= end, f"runs overlapped: {spans}"


def test_without_a_concurrency_limit_runs_do_overlap(tmp_path: Path, sidecars, spool: str) -> None:
    """The control for the test above: the overlap check can fail."""
    config = write_config(tmp_path, table("""
          - {{event: push, run: {scripts}/span.sh, env: {{OUT: {out}, SLEEP: "0.5"}}}}
    """, spool + "max_workers: 4\n"))
    out = tmp_path / "out"
    sidecar = sidecars(config)
    for i in range(4):
        assert sidecar.deliver(b"{}", delivery=f"p-{i}").status == 200
    spans = span_runs(out, 4)
    assert any(start < end for (_, end), (start, _) in itertools.pairwise(spans))


def test_queue_full_is_503_and_nothing_half_accepted(tmp_path: Path, sidecars, spool: str) -> None:
    config = write_config(tmp_path, table("""
          - {{event: push, run: {scripts}/slow.sh, concurrency: 1, env: {{OUT: {out}, SLEEP: "30"}}}}
          - {{event: push, run: {scripts}/slow.sh, name: second, concurrency: 1, env: {{OUT: {out}, SLEEP: "30"}}}}
    """, spool + "max_queue: 3\n"))
    sidecar = sidecars(config)
    assert sidecar.deliver(b"{}", delivery="q-1").status == 200   # 2 jobs pending
    full = sidecar.deliver(b"{}", delivery="q-2")                  # would need 2 more: 4 > 3
    assert full.status == 503 and full.headers["retry-after"] == "10"
    assert full.json() == {"error": "queue full"}
    listing = spool_jobs(config)
    assert sorted(j["delivery"] for j in listing) == ["q-1", "q-1"]
    # An event with no route is still answered: it costs no queue space.
    assert sidecar.deliver(b"{}", event="issues").json()["status"] == "ignored"


def test_sigterm_drains_running_hooks_and_refuses_new_work(tmp_path: Path, sidecars, spool: str) -> None:
    config = write_config(tmp_path, table("""
          - event: push
            run: {scripts}/slow.sh
            env: {{OUT: {out}, SLEEP: "1.5"}}
    """, spool))
    out = tmp_path / "out"
    sidecar = sidecars(config, "--grace", "10")
    assert sidecar.deliver(b"{}", delivery="running").status == 200
    wait_for((out / "running.started").exists)
    import http.client
    conn = http.client.HTTPConnection("127.0.0.1", sidecar.port, timeout=5)
    conn.request("GET", "/healthz")
    conn.getresponse().read()  # an open keep-alive connection, as a sender would have
    sidecar.proc.send_signal(signal.SIGTERM)
    sidecar.wait_log(lambda e: e.get("msg") == "server.draining")
    conn.request("GET", "/readyz")
    ready = conn.getresponse()
    assert ready.status == 503 and json.loads(ready.read()) == {"error": "not ready: draining"}
    body = b"{}"
    conn.request("POST", "/webhook", body=body, headers={"X-GitHub-Event": "push",
                                                          "X-Hub-Signature-256": github_signature(body)})
    refused = conn.getresponse()
    assert refused.status == 503 and refused.getheader("Retry-After")
    conn.close()
    assert sidecar.proc.wait(20) == 0
    assert (out / "running.done").exists()
    assert sidecar.find_logs("server.stopped")[0]["drained"] is True


def test_hooks_past_the_grace_are_interrupted_and_run_at_the_next_start(tmp_path: Path, sidecars, spool: str) -> None:
    config = write_config(tmp_path, table("""
          - event: push
            run: {scripts}/slow.sh
            env: {{OUT: {out}, SLEEP: "30"}}
          - event: tag
            run: {scripts}/append.sh
            concurrency: 1
            env: {{OUT: {out}}}
    """, spool + "max_workers: 1\n"))
    out = tmp_path / "out"
    sidecar = sidecars(config, "--grace", "0.5")
    assert sidecar.deliver(b"{}", delivery="long").status == 200
    # Only once "long" runs: a shared spool claims both at once when both are in, and starts the
    # job of a concurrency-limited route first, which would leave "queued" done, not waiting.
    wait_for((out / "long.started").exists)
    assert sidecar.deliver(b"{}", event="tag", delivery="queued").status == 200  # waits: one worker
    start = time.monotonic()
    sidecar.proc.send_signal(signal.SIGTERM)
    assert sidecar.proc.wait(15) == 0
    assert time.monotonic() - start < 6  # 0.5 s grace + 3 s kill grace, not 30 s
    assert sidecar.wait_log(lambda e: e.get("msg") == "hook.interrupted")["delivery"] == "long"
    stopped = sidecar.wait_log(lambda e: e.get("msg") == "server.stopped")
    assert stopped["drained"] is False and stopped["pending"] == 2
    assert sorted(j["delivery"] for j in spool_jobs(config, "--pending")) == ["long", "queued"]
    # Next start, with a second worker: the queued job runs (the long one starts again too).
    config.write_text(config.read_text().replace("max_workers: 1", "max_workers: 2"))
    again = sidecars(config)
    assert again.wait_log(lambda e: e.get("msg") == "spool.recovered")["jobs"] == 2
    wait_for(lambda: ran(out) == ["queued"], timeout=10)


def test_purge_removes_old_finished_jobs(tmp_path: Path, sidecars, spool: str) -> None:
    config = write_config(tmp_path, table(APPEND, spool))
    sidecar = sidecars(config)
    assert sidecar.deliver(b"{}", delivery="old").status == 200
    wait_for(lambda: ran(tmp_path / "out") == ["old"])
    sidecar.wait_log(lambda e: e.get("msg") == "hook.finished")
    assert spool_cli(config, "purge", "--older-than", "1h").stdout.strip() == "purged 0 job(s)"
    assert spool_cli(config, "purge", "--older-than", "0s").stdout.strip() == "purged 1 job(s)"
    assert spool_cli(config, "list", "--json").stdout == ""
    assert spool_cli(config, "purge", "--older-than", "soon").returncode == 2


def test_retention_prunes_finished_jobs(tmp_path: Path, sidecars, spool: str) -> None:
    config = write_config(tmp_path, table(APPEND, spool + "retention_hours: 0.0003\n"))  # about a second
    sidecar = sidecars(config)
    assert sidecar.deliver(b"{}", delivery="short-lived").status == 200
    sidecar.wait_log(lambda e: e.get("msg") == "hook.finished")
    assert sidecar.wait_log(lambda e: e.get("msg") == "spool.pruned", timeout=10)["jobs"] == 1
    assert spool_cli(config, "list", "--json").stdout == ""
    # Dedupe forgets with the job: the same id is a new delivery again.
    assert sidecar.deliver(b"{}", delivery="short-lived").json()["status"] == "accepted"


def test_spool_cli_without_a_spool_says_so(tmp_path: Path) -> None:
    """sqlite only: the shared spool is a database, not a path that may be missing."""
    config = tmp_path / "config.yaml"
    config.write_text("spool_dir: nowhere\nendpoints: []\n")
    result = spool_cli(config, "list")
    assert result.returncode == 1 and f"no spool at {tmp_path / 'nowhere' / 'spool.db'}" in result.stderr


def test_unwritable_spool_makes_readyz_503(tmp_path: Path, sidecars) -> None:
    """sqlite only (the shared spool's outage is test_shared_spool's): root ignores directory modes,
    so the spool directory is taken away instead."""
    import shutil
    config = write_config(tmp_path, table("""
          - event: push
            run: [/bin/true]
    """, "spool_dir: spool\n"))
    sidecar = sidecars(config)
    assert sidecar.request("GET", "/readyz").status == 200
    shutil.rmtree(tmp_path / "spool")
    ready = sidecar.request("GET", "/readyz")
    assert ready.status == 503 and ready.json() == {"error": "not ready: spool file removed or replaced"}
    # The probe puts the open database back at its path: ready again without a restart.
    sidecar.wait_log(lambda e: e.get("msg") == "spool.restored")
    wait_for(lambda: sidecar.request("GET", "/readyz").status == 200)
    assert (tmp_path / "spool" / "spool.db").is_file()
