"""Lanes on the shared spool: three replicas on one PostgreSQL never run one lane twice at once, keep
each lane's order, and supersede exactly as one replica does (decided in the database)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .conftest import Sidecar, wait_for, write_config
from .support import SPOOL_URL_VAR, shared_table, spool_jobs, start_replicas
from .test_lanes import assert_one_at_a_time, lane_route, marks, push, spans


def test_three_replicas_keep_lanes_and_supersede_as_one(tmp_path: Path, sidecars: Callable[..., Sidecar],
                                                        pg_url: str) -> None:
    config = write_config(tmp_path, shared_table(lane_route("fifo", sleep=0.2) + lane_route("latest", "latest", 0.8)))
    out = tmp_path / "out"
    replicas = start_replicas(sidecars, config, pg_url, ["r1", "r2", "r3"])

    # fifo: two lanes, each delivery to another replica than the one before
    for n in range(6):
        for i, repo in enumerate(("acme/a", "acme/b")):
            push(replicas[(n + i) % 3], "fifo", repo, f"fifo-{repo[-1]}{n}")
    # latest: the first runs; the four that follow, each accepted by another replica, supersede in turn
    push(replicas[0], "latest", "acme/a", "latest-1")
    wait_for(lambda: any(m[3] == "latest-1" for m in marks(out)), timeout=10)
    for n in range(2, 6):
        push(replicas[n % 3], "latest", "acme/a", f"latest-{n}")

    wait_for(lambda: sum(len(v) for v in spans(out, "fifo").values()) == 12, timeout=20)
    runs = spans(out, "fifo")
    for repo in ("acme/a", "acme/b"):
        assert [d for d, _, _ in runs[repo]] == [f"fifo-{repo[-1]}{n}" for n in range(6)]
        assert_one_at_a_time(runs[repo])
    assert len({m[5] for m in marks(out) if m[1] == "fifo"}) >= 2  # the lanes' jobs ran on several replicas

    wait_for(lambda: len(spans(out, "latest").get("acme/a", [])) == 2, timeout=20)
    latest = spans(out, "latest")["acme/a"]
    assert [d for d, _, _ in latest] == ["latest-1", "latest-5"]
    assert_one_at_a_time(latest)
    superseded = sorted((e["delivery"], e["by"]) for r in replicas for e in r.find_logs("job.superseded"))
    assert superseded == [("latest-2", "latest-3"), ("latest-3", "latest-4"), ("latest-4", "latest-5")]
    states = {j["delivery"]: j["state"] for j in spool_jobs(config, env={SPOOL_URL_VAR: pg_url})
              if j["route"] == "latest"}
    assert states == {"latest-1": "done", "latest-2": "superseded", "latest-3": "superseded",
                      "latest-4": "superseded", "latest-5": "done"}
