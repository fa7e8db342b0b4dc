"""The Grafana dashboard and the alert expressions against real data: a real Prometheus (Debian's
/usr/bin/prometheus) scrapes a real sidecar every second after it has accepted, refused, queued, run, failed
and timed out deliveries; every dashboard query and every metric selector of every alert must return data.
Also: /metrics keeps its process_* series when the process is non-dumpable and unprivileged."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import ROOT, SCRIPTS, Sidecar, hooks_out, start_sidecar, wait_for
from .support import free_port

FILES = ROOT / "helm" / "webhook-sidecar" / "files"
DASHBOARD = json.loads((FILES / "dashboard.json").read_text())
ALERTS = [rule for group in yaml.safe_load((FILES / "alerts.yaml").read_text())["groups"] for rule in group["rules"]]
PROMETHEUS = shutil.which("prometheus", path=f"{os.environ.get('PATH', '')}:/usr/bin")
# A metric name with its label matchers, if any: what an alert expression selects.
SELECTOR = re.compile(r"\b((?:webhook_sidecar|process|python)_[a-z_]+)(\{[^}]*\})?")
# Grafana's variables as the dashboard uses them: every job and instance, a rate window of a few scrapes.
VARIABLES = {"$job": ".*", "$instance": ".*", "$__rate_interval": "1m"}


def dashboard_queries() -> list[tuple[str, str]]:
    return [(panel["title"], target["expr"]) for panel in DASHBOARD["panels"] for target in panel.get("targets", [])]


def expand(expr: str) -> str:
    for name, value in VARIABLES.items():
        expr = expr.replace(name, value)
    assert "$" not in expr, f"a Grafana variable this test does not know: {expr}"
    return expr


class Prometheus:
    def __init__(self, directory: Path, target_port: int) -> None:
        self.port = free_port()
        config = directory / "prometheus.yml"
        shutil.copy(FILES / "alerts.yaml", directory / "alerts.yaml")
        config.write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": ["alerts.yaml"],
            "scrape_configs": [{"job_name": "webhook-sidecar",
                                "static_configs": [{"targets": [f"127.0.0.1:{target_port}"]}]}],
        }))
        self.log = (directory / "prometheus.log").open("w")
        self.proc = subprocess.Popen(
            [str(PROMETHEUS), f"--config.file={config}", f"--storage.tsdb.path={directory / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=self.log, stderr=subprocess.STDOUT, cwd=directory)

    def api(self, path: str, **params: str) -> Any:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=5) as resp:
            body = json.load(resp)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", data
        return data["result"]

    def up(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"prometheus exited {self.proc.returncode}")
        try:
            return bool(self.query("up == 1"))
        except OSError:
            return False

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.log.close()


CONFIG = """
    max_queue: 1
    endpoints:
      - path: /webhook
        provider: github
        secret_env: WEBHOOK_SECRET
        routes:
          - {{event: push, name: deploy, run: {scripts}/record.sh, env: {{OUT: {out}}}}}
          - {{event: fail, name: broken, run: {scripts}/exit3.sh, retries: 0}}
          - {{event: slow, name: stuck, run: {scripts}/slow.sh, timeout_s: 1, retries: 0,
              env: {{OUT: {out}, SLEEP: "30"}}}}
"""


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Prometheus, Sidecar]]:
    """A sidecar that has seen every kind of traffic, and a Prometheus that has scraped it since."""
    if PROMETHEUS is None:
        pytest.skip("prometheus not installed (Debian package prometheus)")
    directory = tmp_path_factory.mktemp("dashboard")
    config = directory / "config.yaml"
    config.write_text(textwrap.dedent(CONFIG).format(scripts=SCRIPTS, out=hooks_out(directory)))
    sidecar = start_sidecar(config)
    prometheus = Prometheus(directory, sidecar.port)
    try:
        wait_for(prometheus.up, 15, 0.1)
        # The stuck hook holds the only queue slot (max_queue: 1): the next delivery gets 503.
        assert sidecar.deliver(b'{"n": 1}', event="slow", delivery="d-slow").status == 200
        wait_for(lambda: (directory / "out" / "d-slow.started").exists())
        assert sidecar.deliver(b'{"n": 2}', event="push", delivery="d-full").status == 503
        sidecar.wait_log(lambda e: e.get("msg") == "hook.finished" and e.get("outcome") == "timeout", timeout=10)
        wait_for(lambda: sidecar.deliver(b'{"n": 3}', event="push", delivery="d-ok").status == 200)
        sidecar.wait_log(lambda e: e.get("msg") == "hook.finished" and e.get("delivery") == "d-ok")
        assert sidecar.deliver(b'{"n": 4}', event="fail", delivery="d-fail").status == 200
        sidecar.wait_log(lambda e: e.get("msg") == "hook.finished" and e.get("delivery") == "d-fail")
        assert sidecar.deliver(b'{"n": 5}', event="push", delivery="d-bad", secret="wrong").status == 401
        config.write_text(config.read_text() + "  - {path: /broken\n")
        sidecar.wait_log(lambda e: e.get("msg") == "config.rejected")
        yield prometheus, sidecar
    finally:
        prometheus.stop()
        sidecar.stop()
        if sidecar.proc.stdout:
            sidecar.proc.stdout.close()


@pytest.mark.parametrize(("title", "expr"), dashboard_queries(), ids=[t for t, _ in dashboard_queries()])
def test_every_dashboard_query_returns_data(scraped: tuple[Prometheus, Sidecar], title: str, expr: str) -> None:
    prometheus, _ = scraped
    # Rates need two scrapes after a counter's first increment: poll, within a bound.
    result = wait_for(lambda: prometheus.query(expand(expr)), timeout=10, interval=0.25)
    assert all(len(r["value"]) == 2 for r in result), result


def test_the_dashboard_shows_what_happened(scraped: tuple[Prometheus, Sidecar]) -> None:
    prometheus, _ = scraped

    def labels(expr: str, label: str) -> set[str]:
        return {r["metric"].get(label, "") for r in prometheus.query(expr)}

    assert {"ok", "failed", "timeout"} <= labels("webhook_sidecar_hook_runs_total", "outcome")
    assert labels("webhook_sidecar_dead_letters_total", "route") == {"broken", "stuck"}
    assert {"200", "401", "503"} <= labels('webhook_sidecar_requests_total{endpoint="/webhook"}', "status")
    assert labels("webhook_sidecar_verification_failures_total", "provider") == {"github"}
    assert labels('webhook_sidecar_config_reloads_total{result="rejected"}', "result") == {"rejected"}
    assert [r["value"][1] for r in prometheus.query("webhook_sidecar_queue_max")] == ["1"]
    assert [r["value"][1] for r in prometheus.query("webhook_sidecar_ready")] == ["1"]
    rss = prometheus.query("process_resident_memory_bytes")
    assert rss and float(rss[0]["value"][1]) > 1_000_000


@pytest.mark.parametrize("alert", [rule["alert"] for rule in ALERTS])
def test_every_alert_selector_returns_data(scraped: tuple[Prometheus, Sidecar], alert: str) -> None:
    prometheus, _ = scraped
    expr = next(rule["expr"] for rule in ALERTS if rule["alert"] == alert)
    selectors = {m.group(0) for m in SELECTOR.finditer(expr)}
    assert selectors, f"{alert} selects no metric"
    for selector in sorted(selectors):
        assert wait_for(lambda s=selector: prometheus.query(s), timeout=10, interval=0.25), selector
    rules = {r["name"]: r for g in prometheus.api("rules")["groups"] for r in g["rules"]}
    assert rules[alert]["health"] in ("ok", "unknown") and not rules[alert].get("lastError"), rules[alert]


PROCESS_METRICS = """
import ctypes, os, sys
from sidecar import metrics  # imported first: the venv may be readable to root only
if os.getuid() == 0:  # drop to nobody, as a restricted pod runs: no capabilities, another uid
    os.setgroups([])
    os.setresgid(65534, 65534, 65534)
    os.setresuid(65534, 65534, 65534)
libc = ctypes.CDLL(None, use_errno=True)
assert libc.prctl(4, 0, 0, 0, 0) == 0  # PR_SET_DUMPABLE 0, as the sidecar does at start
assert libc.prctl(3, 0, 0, 0, 0) == 0  # PR_GET_DUMPABLE
body, _ = metrics.exposition()
sys.stdout.write(f"uid={os.getuid()} fd_owner={os.stat('/proc/self/fd').st_uid}\\n")
sys.stdout.write(body.decode())
"""


def test_process_metrics_when_non_dumpable_and_unprivileged() -> None:
    """A non-dumpable process's /proc/<pid> entries become root-owned, but /proc/self stays readable to the
    process itself: the process collector keeps working for an unprivileged, non-dumpable sidecar."""
    out = subprocess.run([sys.executable, "-c", PROCESS_METRICS], capture_output=True, text=True, timeout=30,
                         cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    first, body = out.stdout.split("\n", 1)
    uid = 65534 if os.getuid() == 0 else os.getuid()
    assert first == f"uid={uid} fd_owner=0", f"not unprivileged and non-dumpable: {first}"
    series = {line.split("{")[0].split(" ")[0]: line for line in body.splitlines() if not line.startswith("#")}
    for name in ("process_resident_memory_bytes", "process_cpu_seconds_total", "process_open_fds",
                 "process_max_fds", "process_start_time_seconds", "python_info"):
        assert name in series, f"{name} missing from /metrics:\n{body}"
    assert float(series["process_open_fds"].split()[-1]) >= 3
