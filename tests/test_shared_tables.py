"""The shared spool with what replicas are configured with: two tables at once (a rollout), a bound on
the bodies it holds (spool_max_bytes), and its URL in a file (a Kubernetes Secret volume).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

from .conftest import hooks_out, wait_for, write_config
from .pg import PASSWORD
from .support import SPOOL_URL_VAR as VAR
from .support import cli_text, lines, metric, shared_table, spool_jobs, where

HELD = """
- event: push
  name: NAME
  run: [sh, -c, 'cat >/dev/null; while [ ! -e "$OUT/release" ]; do sleep 0.05; done;
    echo "$WEBHOOK_DELIVERY $WEBHOOK_ROUTE $WEBHOOK_REPLICA" >> "$OUT/ran"']
  env: {{OUT: OUTDIR}}
"""


def failed_jobs(config: Path, url: str) -> list[dict]:
    return spool_jobs(config, "--failed", env={VAR: url})


def test_a_rollout_with_two_tables_dead_letters_nothing(tmp_path: Path, sidecars, pg_url: str) -> None:
    """`old` runs the old table; `new` has one more route (and is busy). No job of that route runs on,
    or is dead-lettered by, `old`; once no live replica has the route, its job waits 10 x lease_s, no less."""
    out = hooks_out(tmp_path)
    old_dir, new_dir = tmp_path / "old", tmp_path / "new"
    old_dir.mkdir()
    new_dir.mkdir()
    def table(routes: str, top: str = "") -> str:  # lease_s 1, and one output directory for both
        text = shared_table(routes, top).replace("lease_s: 2", "lease_s: 1")
        return text.replace("{out}", str(out)).replace("OUTDIR", str(out))

    old_cfg = write_config(old_dir, table(where("both")))
    new_cfg = write_config(new_dir, table(where("both") + HELD.replace("NAME", "added"), "max_workers: 1\n"))
    old = sidecars(old_cfg, "--replica", "old", env={VAR: pg_url})
    new = sidecars(new_cfg, "--replica", "new", "--grace", "0.5", env={VAR: pg_url})
    sent = [f"r-{i}" for i in range(12)]
    for i, delivery in enumerate(sent):
        target = new if i % 2 else old
        assert target.deliver(b"{}", delivery=delivery).status == 200
    added = [d for i, d in enumerate(sent) if i % 2]  # only `new` matched them to `added`
    # `old` runs every `both` job it can while `new` is busy with its first `added` job...
    wait_for(lambda: sum(1 for line in lines(out / "ran") if line.split()[2] == "old") >= 8, timeout=10)
    time.sleep(3.0)  # three leases: what the old code took to claim and dead-letter the `added` jobs
    # ... and never claims an `added` job: it does not have that route.
    assert not [line for line in lines(out / "ran") if " added " in line]
    assert not old.find_logs("job.route_unknown") and not failed_jobs(old_cfg, pg_url)
    (out / "release").touch()
    wait_for(lambda: {d for d, route, _ in map(str.split, lines(out / "ran")) if route == "added"} == set(added),
             timeout=20, interval=0.1)
    ran = [line.split() for line in lines(out / "ran")]
    assert {r for _, route, r in ran if route == "added"} == {"new"}
    assert sorted(d for d, route, _ in ran if route == "both") == sorted(sent)
    assert not failed_jobs(old_cfg, pg_url)

    # `new` leaves with an `added` job running: handed back, no live replica has its route now.
    (out / "release").unlink()
    assert new.deliver(b"{}", delivery="orphan").status == 200
    wait_for(lambda: any(line.startswith("orphan both") for line in lines(out / "ran")), timeout=10)
    time.sleep(0.5)  # `new` started `added` for it
    assert new.stop(signal.SIGTERM) == 0
    left = time.monotonic()
    old.wait_log(lambda e: e.get("msg") == "spool.route_missing", timeout=5)
    dead = old.wait_log(lambda e: e.get("msg") == "job.route_unknown", timeout=20)
    waited = time.monotonic() - left
    print(f"\ntwo tables: the orphaned job became a dead letter {waited:.1f} s after the last replica with"
          " its route left (10 x lease_s = 10 s)")
    assert dead["delivery"] == "orphan" and dead["route"] == "added"
    assert 9.5 <= waited <= 14.0
    assert [(j["delivery"], j["route"], j["outcome"]) for j in failed_jobs(old_cfg, pg_url)] == \
        [("orphan", "added", "route_unknown")]
    assert metric(old, "webhook_sidecar_dead_letters_total") == 1


def test_spool_max_bytes_bounds_the_bodies_in_the_database(tmp_path: Path, sidecars, pg_url: str) -> None:
    config = write_config(tmp_path, shared_table(HELD.replace("NAME", "keep").replace("OUTDIR", "{out}"),
                                                 "spool_max_bytes: 100000\nmax_body_bytes: 65536\n"))
    out = tmp_path / "out"
    a, b = (sidecars(config, "--replica", name, env={VAR: pg_url}) for name in ("a", "b"))
    body = json.dumps({"pad": "x" * 40000}).encode()
    assert a.deliver(body, delivery="m-0").status == 200
    assert a.deliver(body, delivery="m-1").status == 200
    full = a.deliver(body, delivery="m-2")
    assert full.status == 503 and full.headers["retry-after"] == "30"
    assert full.json()["error"] == "spool full (spool_max_bytes)"
    assert metric(a, "webhook_sidecar_spool_max_bytes") == 100000
    # Measured from the database: the other replica sees the bytes within a second or so.
    wait_for(lambda: metric(b, "webhook_sidecar_spool_bytes") >= 2 * len(body), timeout=5)
    assert b.deliver(body, delivery="m-2").status == 503
    (out / "release").touch()
    wait_for(lambda: len(lines(out / "ran")) == 2, timeout=10)
    # Done deliveries drop their bodies: room again, without a restart.
    wait_for(lambda: metric(b, "webhook_sidecar_spool_bytes") < len(body), timeout=5)
    assert b.deliver(body, delivery="m-2").status == 200


def check(config: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return cli_text("check", "--config", str(config), env=env)


def test_the_url_in_a_file_never_in_the_environment_and_hidden_from_hooks(tmp_path: Path, sidecars,
                                                                         pg_url: str) -> None:
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "url").write_text(pg_url + "\n")
    text = shared_table("""
- event: push
  name: peek
  run: [sh, -c, 'cat >/dev/null; if cat "$URL_FILE" >/dev/null 2>&1; then r=read; else r=hidden; fi;
    echo "$WEBHOOK_DELIVERY $r" >> "$OUT/ran"']
  env: {{OUT: {out}, URL_FILE: URLFILE}}
""").replace(f"spool_url_env: {VAR}", "spool_url_file: secret/url").replace("URLFILE", str(secret / "url"))
    config = write_config(tmp_path, text)
    s = sidecars(config, "--replica", "f1", env={VAR: ""} if VAR in os.environ else {})
    assert s.deliver(b"{}", delivery="via-file").status == 200
    wait_for(lambda: lines(tmp_path / "out" / "ran"), timeout=10)
    boxed = s.find_logs("hooks.sandboxed")
    if boxed:  # the file is state, hidden like a secret file (where the layout lets Landlock hide it)
        assert str(secret / "url") in boxed[0]["hidden"]
        if not any(str(secret / "url") in e["problem"] for e in s.find_logs("hooks.state_exposed")):
            assert lines(tmp_path / "out" / "ran") == ["via-file hidden"]
    assert PASSWORD.encode() not in Path(f"/proc/{s.proc.pid}/environ").read_bytes()
    assert "via-file" in [j["delivery"] for j in spool_jobs(config, env={VAR: ""})]  # the URL from the file alone
    # Exactly one of spool_dir, spool_url_env, spool_url_file; an empty or missing file is a config error.
    (tmp_path / "both").mkdir()
    both = write_config(tmp_path / "both", text.replace("spool_url_file:", f"spool_url_env: {VAR}\nspool_url_file:"))
    result = check(both, {VAR: pg_url})
    assert result.returncode == 1 and "spool_url_env and spool_url_file exclude each other" in result.stdout
    (secret / "url").write_text("\n")
    result = check(config)
    assert result.returncode == 1 and f"{secret / 'url'} is empty" in result.stdout
    (secret / "url").unlink()
    result = check(config)
    assert result.returncode == 1 and f"cannot read {secret / 'url'}" in result.stdout
