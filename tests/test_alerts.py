"""The alerting rules (helm/webhook-sidecar/files/alerts.yaml) with Prometheus's own tool: `promtool check rules`
and `promtool test rules` on tests/promtool/alerts_test.yaml, which fires and clears every alert on synthetic
series. tests/test_dashboard.py checks the same expressions against a real sidecar's metrics."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from sidecar import metrics

from .conftest import ROOT

RULES = ROOT / "helm" / "webhook-sidecar" / "files" / "alerts.yaml"
UNIT_TESTS = ROOT / "tests" / "promtool" / "alerts_test.yaml"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (Debian package prometheus)")
METRIC = re.compile(r"\b((?:webhook_sidecar|process|python)_[a-z_]+)\b")


def rules() -> list[dict]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def exported_names() -> set[str]:
    """Every series name the sidecar's /metrics can carry (histograms and counters with their suffixes)."""
    names = set()
    for family in metrics.REGISTRY.collect():
        names.add(family.name)
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"]}.get(family.type, [])
        names.update(family.name + s for s in suffixes)
    return names


def promtool(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60, cwd=cwd)


def test_every_alert_names_only_metrics_the_sidecar_exports() -> None:
    exported = exported_names()
    for rule in rules():
        used = set(METRIC.findall(rule["expr"]))
        assert used, f"{rule['alert']} names no metric"
        assert used <= exported, f"{rule['alert']}: {sorted(used - exported)} not in sidecar/metrics.py"


def test_every_alert_is_fired_by_a_unit_test() -> None:
    tests = yaml.safe_load(UNIT_TESTS.read_text())["tests"]
    fired = {case["alertname"] for test in tests for case in test["alert_rule_test"] if case["exp_alerts"]}
    quiet = {case["alertname"] for test in tests for case in test["alert_rule_test"] if not case["exp_alerts"]}
    alerts = {rule["alert"] for rule in rules()}
    assert fired == alerts, f"alerts without a firing test: {sorted(alerts - fired)}"
    assert quiet == alerts, f"alerts without a not-firing test: {sorted(alerts - quiet)}"


@needs_promtool
def test_promtool_checks_and_unit_tests_pass() -> None:
    check = promtool("check", "rules", str(RULES))
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"SUCCESS: {len(rules())} rules found" in check.stdout
    result = promtool("test", "rules", str(UNIT_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@needs_promtool
@pytest.mark.parametrize(("broken", "original", "replacement"), [
    ("queue threshold", "webhook_sidecar_queue_depth / webhook_sidecar_queue_max > 0.8",
     "webhook_sidecar_queue_depth / webhook_sidecar_queue_max > 0.9"),
    ("no fallback when no delivery was ever accepted",
     "\n                or sum by (namespace, job) (rate(webhook_sidecar_verification_failures_total[10m])) * 0", ""),
    ("probes counted as refused deliveries", 'endpoint!~"/healthz|/readyz|/metrics|other"', 'endpoint!="other"'),
    ("not ready without a for", "webhook_sidecar_ready == 0\n        for: 5m", "webhook_sidecar_ready == 0"),
])
def test_the_unit_tests_catch_a_broken_rule(tmp_path: Path, broken: str, original: str, replacement: str) -> None:
    text = RULES.read_text()
    assert original in text, f"the rules no longer contain {original!r}: update this test"
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "alerts.yaml").write_text(text.replace(original, replacement))
    unit = yaml.safe_load(UNIT_TESTS.read_text())
    unit["rule_files"] = ["rules/alerts.yaml"]
    (tmp_path / "alerts_test.yaml").write_text(yaml.safe_dump(unit, sort_keys=False))
    result = promtool("test", "rules", "alerts_test.yaml", cwd=tmp_path)
    assert result.returncode != 0, f"promtool's unit tests pass with a broken rule ({broken})"
