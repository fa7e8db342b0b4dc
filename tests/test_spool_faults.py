"""The embedded spool under faults an operator or an attacker can produce (issue: nothing acknowledged is
lost or run twice by a fault): the file removed while running, a lock held by another process, a full
disk, damage at start, growth, a full queue, and a stored route that no loaded table has.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from .conftest import Sidecar, wait_for, write_config
from .support import cli_text, lines, ran, spool_cli, spool_jobs, table


def hold_table(top: str = "", extra_routes: str = "") -> str:
    return table("""
          - event: push
            run: {scripts}/hold.sh
            env: {{OUT: {out}}}
    """ + extra_routes, top)


def attempts(out: Path) -> Counter[str]:
    return Counter(lines(out / "attempts"))


def ready(sidecar: Sidecar) -> int:
    return sidecar.request("GET", "/readyz").status


def msgs(sidecar: Sidecar, msg: str, **match: object) -> list[dict]:
    return [e for e in sidecar.find_logs(msg) if all(e.get(k) == v for k, v in match.items())]


class Locker:
    """A second process holding sqlite's write lock (BEGIN IMMEDIATE) on the spool for `seconds`."""

    def __init__(self, db: Path, seconds: float) -> None:
        code = ("import sqlite3, sys, time\n"
                "db = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
                "db.execute('BEGIN IMMEDIATE')\nprint('locked', flush=True)\n"
                "time.sleep(float(sys.argv[2]))\ndb.execute('COMMIT')\n")
        self.proc = subprocess.Popen([sys.executable, "-c", code, str(db), str(seconds)],
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None and self.proc.stdout.readline().strip() == "locked"

    def wait(self) -> None:
        assert self.proc.wait(60) == 0
        assert self.proc.stdout is not None
        self.proc.stdout.close()


def test_removed_spool_file_answers_503_restores_itself_and_loses_nothing(tmp_path: Path, sidecars) -> None:
    config = write_config(tmp_path, hold_table("max_workers: 1\n"))
    out = tmp_path / "out"
    db = tmp_path / ".spool" / "spool.db"
    sidecar = sidecars(config)
    acked = [d for d in ("h1", "h2", "h3") if sidecar.deliver(b"{}", delivery=d).status == 200]
    assert acked == ["h1", "h2", "h3"]
    wait_for((out / "h1.started").exists)  # h1 runs, h2 and h3 wait in the spool
    db.unlink()
    # 503 until the probe (every second) has put the file back; a 200 only once it is back.
    first = sidecar.deliver(b"{}", delivery="during")
    assert first.status in (200, 503), first.body
    if first.status == 200:
        acked.append("during")
    # The probe copies the open database back to its path; ready again with no restart and no POSTs.
    sidecar.wait_log(lambda e: e.get("msg") == "spool.restored")
    wait_for(lambda: ready(sidecar) == 200)
    assert db.is_file()
    for d in ("a1", "a2", "a3"):
        assert sidecar.deliver(b"{}", delivery=d).status == 200
        acked.append(d)
    (out / "release").touch()
    wait_for(lambda: sorted(ran(out)) == sorted(acked), timeout=20)
    assert sidecar.stop() == 0
    # A restart reads the restored file: nothing acknowledged is missing, nothing runs again.
    again = sidecars(config)
    assert again.wait_log(lambda e: e.get("msg") == "server.listening")["pending"] == 0
    assert sorted(ran(out)) == sorted(acked) and len(ran(out)) == len(set(ran(out)))
    listed = {j["delivery"] for j in spool_jobs(config)}
    assert set(acked) <= listed


def test_a_record_that_cannot_commit_is_retried_never_rerun(tmp_path: Path, sidecars) -> None:
    """A second process holds the write lock past sqlite's busy timeout while hooks finish."""
    config = write_config(tmp_path, hold_table("max_workers: 4\n", """
          - event: tag
            run: {scripts}/hold.sh
            env: {{OUT: {out}, TEMPFAIL_FIRST: "1"}}
    """ + "\n") + "retry_backoff_s: 0.2\n")
    out = tmp_path / "out"
    sidecar = sidecars(config)
    for delivery, event in (("d1", "push"), ("d2", "push"), ("t1", "tag")):
        assert sidecar.deliver(b"{}", event=event, delivery=delivery).status == 200
    for d in ("d1", "d2", "t1"):
        wait_for((out / f"{d}.started").exists)
    locker = Locker(tmp_path / ".spool" / "spool.db", 12)
    (out / "release").touch()
    wait_for(lambda: attempts(out)["t1 1"] == 1 and attempts(out)["d1 1"] == 1 and attempts(out)["d2 1"] == 1)
    # While the lock is held the outcomes cannot commit: readiness says so, without any POST ...
    wait_for(lambda: ready(sidecar) == 503, timeout=9)
    refused = sidecar.deliver(b"{}", delivery="refused")
    assert refused.status == 503  # ... and a 503 means "not accepted": it must never run
    # ... and they are neither logged nor forgotten.
    sidecar.wait_log(lambda e: e.get("msg") == "job.record_failed", timeout=15)
    assert not msgs(sidecar, "hook.finished", delivery="d1")
    locker.wait()
    # The lock is gone: ready again by itself (no POSTs), outcomes committed, then logged; t1 retried once.
    wait_for(lambda: ready(sidecar) == 200, timeout=10)
    sidecar.wait_log(lambda e: e.get("msg") == "hook.finished" and e.get("delivery") == "t1"
                     and e.get("state") == "done", timeout=15)
    for d in ("d1", "d2"):
        sidecar.wait_log(lambda e, d=d: e.get("msg") == "hook.finished" and e.get("delivery") == d)
    for d in ("d1", "d2"):
        assert [e["state"] for e in msgs(sidecar, "hook.finished", delivery=d)] == ["done"]
    assert attempts(out) == Counter({"d1 1": 1, "d2 1": 1, "t1 1": 1, "t1 2": 1})
    assert sorted(ran(out)) == ["d1", "d2", "t1"]
    states = {j["delivery"]: j["state"] for j in spool_jobs(config)}
    assert states == {"d1": "done", "d2": "done", "t1": "done"}  # "refused" was never committed


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs for a full disk needs root")
def test_a_full_disk_gives_503_and_readiness_recovers_without_posts(tmp_path: Path, sidecars) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(spool)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        config = write_config(tmp_path, hold_table("spool_dir: spool\nmax_body_bytes: 65536\n"))
        out = tmp_path / "out"
        sidecar = sidecars(config)
        assert sidecar.deliver(b"{}", delivery="before").status == 200
        wait_for((out / "before.started").exists)
        filler = spool / "filler"
        subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=64k"], capture_output=True)
        wait_for(lambda: ready(sidecar) == 503, timeout=5)
        # The probe's own write fails, or it succeeds in the WAL's old space and the free space is short.
        assert sidecar.request("GET", "/readyz").json()["error"] in (
            "not ready: spool disk full", "not ready: spool not writable")
        assert sidecar.deliver(b'{"big": "' + b"x" * 60000 + b'"}', delivery="full").status == 503
        (out / "release").touch()  # the running hook finishes while the disk is full
        filler.unlink()
        wait_for(lambda: ready(sidecar) == 200, timeout=5)  # by itself: an unready pod gets no POSTs
        assert sidecar.deliver(b"{}", delivery="after").status == 200
        wait_for(lambda: sorted(ran(out)) == ["after", "before"], timeout=10)
        sidecar.wait_log(lambda e: e.get("msg") == "hook.finished" and e.get("delivery") == "before")
        assert sidecar.stop() == 0
    finally:
        subprocess.run(["umount", "-l", str(spool)], capture_output=True)


def damage_truncate(db: Path) -> None:
    db.write_bytes(b"")


def damage_overwrite(db: Path) -> None:
    with db.open("r+b") as f:
        f.seek(0)
        f.write(os.urandom(8192))


@pytest.mark.parametrize("damage", [damage_truncate, damage_overwrite], ids=["truncated", "overwritten"])
def test_a_damaged_spool_at_start_is_set_aside_with_a_clear_error(tmp_path: Path, sidecars, damage) -> None:
    config = write_config(tmp_path, hold_table("max_workers: 1\n"))
    db = tmp_path / ".spool" / "spool.db"
    sidecar = sidecars(config, "--grace", "0.2")
    for i in range(5):
        assert sidecar.deliver(b"{}", delivery=f"p{i}").status == 200
    assert sidecar.stop() == 0
    damage(db)
    check = spool_cli(config, "check")
    assert check.returncode == 1 and "problem" in check.stdout
    start = cli_text("serve", "--config", str(config), "--listen", "127.0.0.1:0")
    assert start.returncode == 3, start.stdout + start.stderr
    line = next(json.loads(x) for x in start.stdout.splitlines() if '"spool.damaged"' in x)
    assert line["level"] == "error" and line["spool"] == str(db) and line["problems"]
    aside = Path(line["kept_as"])
    assert aside.exists() and aside.name.startswith("spool.db.corrupt-") and not db.exists()
    assert "Traceback" not in start.stdout + start.stderr
    # The next start begins an empty spool; the damaged file stays where it was put.
    again = sidecars(config)
    assert again.wait_log(lambda e: e.get("msg") == "server.listening")["pending"] == 0
    assert aside.exists()


def test_finished_deliveries_drop_their_bodies_dead_letters_keep_theirs(tmp_path: Path, sidecars) -> None:
    config = write_config(tmp_path, table("""
          - event: push
            run: {scripts}/append.sh
            env: {{OUT: {out}}}
          - event: tag
            run: {scripts}/exit3.sh
    """))
    sidecar = sidecars(config)
    body = json.dumps({"pad": "x" * 10000}).encode()
    assert sidecar.deliver(body, delivery="ok").status == 200
    assert sidecar.deliver(body, event="tag", delivery="dead").status == 200
    for d in ("ok", "dead"):
        sidecar.wait_log(lambda e, d=d: e.get("msg") == "hook.finished" and e.get("delivery") == d)

    def sizes() -> dict[str, int]:
        db = sqlite3.connect(tmp_path / ".spool" / "spool.db")
        try:
            return dict(db.execute("SELECT delivery, length(body) FROM deliveries").fetchall())
        finally:
            db.close()

    # Dropped by the next housekeeping pass (every second), all finished ones in one statement.
    wait_for(lambda: sizes()["ok"] == 0, timeout=5)
    assert sizes() == {"ok": 0, "dead": len(body)}
    assert sidecar.deliver(body, delivery="ok").json()["status"] == "duplicate"  # the id stays for dedupe


def test_spool_max_bytes_refuses_new_deliveries_and_shows_the_size(tmp_path: Path, sidecars) -> None:
    config = write_config(tmp_path, hold_table("spool_max_bytes: 400000\nmax_workers: 1\n"))
    out = tmp_path / "out"
    sidecar = sidecars(config)
    body = json.dumps({"pad": "x" * 60000}).encode()
    statuses = [sidecar.deliver(body, delivery=f"b{i}").status for i in range(12)]
    assert statuses[0] == 200 and 503 in statuses
    full = sidecar.deliver(body, delivery="over")
    assert full.status == 503 and full.json() == {"error": "spool full (spool_max_bytes)"}
    assert "retry-after" in full.headers
    metrics = sidecar.request("GET", "/metrics").body.decode()
    assert "webhook_sidecar_spool_max_bytes 400000.0" in metrics
    used = next(float(x.split()[1]) for x in metrics.splitlines() if x.startswith("webhook_sidecar_spool_bytes "))
    assert 200000 < used <= 400000 + 70000
    (out / "release").touch()
    accepted = [f"b{i}" for i, s in enumerate(statuses) if s == 200]
    wait_for(lambda: sorted(ran(out)) == sorted(accepted), timeout=20)
    # Done deliveries dropped their bodies: room again, without a restart.
    wait_for(lambda: sidecar.deliver(body, delivery="later").status == 200, timeout=10, interval=0.5)


def test_a_redelivery_while_the_queue_is_full_is_a_duplicate(tmp_path: Path, sidecars) -> None:
    config = write_config(tmp_path, hold_table("max_queue: 1\n"))
    out = tmp_path / "out"
    sidecar = sidecars(config)
    assert sidecar.deliver(b"{}", delivery="a").json()["status"] == "accepted"
    assert sidecar.deliver(b"{}", delivery="b").status == 503
    again = sidecar.deliver(b"{}", delivery="a")
    assert again.status == 200 and again.json()["status"] == "duplicate"
    (out / "release").touch()
    wait_for(lambda: ran(out) == ["a"])


def test_a_stored_route_no_loaded_table_has_is_never_run_as_stored(tmp_path: Path, sidecars) -> None:
    """As an unsandboxed hook could: rewrite queued jobs' argv in spool.db, then wait for a restart."""
    config = write_config(tmp_path, hold_table("max_workers: 1\n"))
    out = tmp_path / "out"
    sidecar = sidecars(config, "--grace", "0.2")
    for d in ("tampered", "ghost"):
        assert sidecar.deliver(b"{}", delivery=d).status == 200
    assert sidecar.stop() == 0
    pwned = tmp_path / "pwned"
    db = sqlite3.connect(tmp_path / ".spool" / "spool.db")
    try:
        for delivery, name in (("tampered", "hold"), ("ghost", "ghost")):
            job_id, spec = db.execute("SELECT j.id, j.spec FROM jobs j JOIN deliveries d ON d.id = j.delivery_id"
                                      " WHERE d.delivery = ?", (delivery,)).fetchone()
            spec = json.loads(spec)
            spec.update(name=name, argv=["/bin/sh", "-c", f"touch {pwned}"])
            db.execute("UPDATE jobs SET spec = ?, route = ? WHERE id = ?", (json.dumps(spec), name, job_id))
        db.commit()
    finally:
        db.close()
    (out / "release").touch()
    again = sidecars(config)
    changed = again.wait_log(lambda e: e.get("msg") == "job.route_changed")
    assert changed["delivery"] == "tampered" and changed["route"] == "hold"
    unknown = again.wait_log(lambda e: e.get("msg") == "job.route_unknown")
    assert unknown["delivery"] == "ghost"
    dead = again.wait_log(lambda e: e.get("msg") == "hook.finished" and e.get("delivery") == "ghost")
    assert dead["state"] == "failed" and dead["outcome"] == "route_unknown"
    wait_for(lambda: "tampered" in ran(out))
    assert not pwned.exists()


def test_a_spool_directory_made_unreadable_is_restored_with_the_true_reason(tmp_path: Path, sidecars) -> None:
    # A hook may chmod the spool directory (Landlock does not cover chmod): the sidecar that owns it
    # puts the mode back at its next probe and says so, instead of "file removed or replaced".
    config = write_config(tmp_path, hold_table())
    sidecar = sidecars(config)
    spool = tmp_path / ".spool"
    os.chmod(spool, 0)
    try:
        line = sidecar.wait_log(lambda e: e.get("msg") == "spool.mode_restored")
    finally:
        if spool.stat().st_mode & 0o700 != 0o700:
            os.chmod(spool, 0o700)
    assert line["path"] == str(spool) and line["was"] == "0o0" and line["now"] == "0o700"
    assert spool.stat().st_mode & 0o777 == 0o700
    assert not msgs(sidecar, "spool.restored") and not msgs(sidecar, "spool.unavailable")
    assert sidecar.deliver(b"{}", delivery="after-chmod").status == 200
    (tmp_path / "out" / "release").touch()
    wait_for(lambda: "after-chmod" in ran(tmp_path / "out"), timeout=10)
