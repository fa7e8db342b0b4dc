"""Several replicas, one queue: real sidecar processes sharing a real (throwaway) PostgreSQL.

Replicas are started with --replica NAME; routes record what ran where into files.
Leases are short (lease_s: 2) so takeovers happen within the test's patience.
"""

from __future__ import annotations

import http.client
import itertools
import json
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import ROOT, Sidecar, github_signature, wait_for, write_config
from .pg import PASSWORD, Postgres, pg, pg_url  # noqa: F401  (fixtures)

VAR = "SPOOL_DATABASE_URL"


def shared_table(routes: str, top: str = "") -> str:
    head = (f"spool_url_env: {VAR}\nlease_s: 2\n{top}endpoints:\n  - path: /webhook\n    provider: github\n"
            "    secret_env: WEBHOOK_SECRET\n    routes:\n")
    return head + "\n".join("      " + line for line in routes.strip("\n").splitlines()) + "\n"


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def start_replicas(sidecars: Callable[..., Sidecar], config: Path, url: str, names: list[str],
                   *args: str) -> list[Sidecar]:
    return [sidecars(config, "--replica", name, *args, env={VAR: url}) for name in names]


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


# Each line of "ran": "<delivery> <route> <replica>" (one short line: atomic with O_APPEND).
WHERE = """
- event: push
  name: NAME
  run: [sh, -c, 'cat >/dev/null; SLEEPecho "$WEBHOOK_DELIVERY $WEBHOOK_ROUTE $WEBHOOK_REPLICA" >> "$OUT/ran"']
  env: {{OUT: {out}}}
"""


def where(name: str, sleep: float = 0, broadcast: bool = False) -> str:
    text = WHERE.replace("NAME", name).replace("SLEEP", f"sleep {sleep}; " if sleep else "")
    return text.replace("  env:", "  broadcast: true\n  env:") if broadcast else text


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
    listing = spool_cli(config, pg_url, "list", "--json", "--limit", "1000")
    assert listing.returncode == 0, listing.stderr
    jobs = [json.loads(line) for line in listing.stdout.splitlines()]
    assert len(jobs) == expected and {j["state"] for j in jobs} == {"done"}
    assert {j["replica"] for j in jobs} == set(names)


def spool_cli(config: Path, url: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    import os
    return subprocess.run([sys.executable, "-m", "sidecar", "spool", "--config", str(config), *args],
                          capture_output=True, text=True, timeout=30, cwd=ROOT,
                          env={**os.environ, VAR: url, **(env or {})})
