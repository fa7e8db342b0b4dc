"""/metrics as Prometheus scrapes it, parsed with prometheus-client's own parser."""

from __future__ import annotations

from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from .conftest import wait_for, write_config
from .support import table


def scrape(sidecar) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    resp = sidecar.request("GET", "/metrics")
    assert resp.status == 200
    assert resp.headers["content-type"].startswith("text/plain; version=")
    samples = {}
    for family in text_string_to_metric_families(resp.body.decode()):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def test_metrics_count_requests_failures_hooks_queue_and_reloads(tmp_path: Path, sidecars) -> None:
    config = write_config(tmp_path, table("""
        - event: push
          name: ok
          run: [/bin/true]
        - event: push
          name: broken
          run: [/bin/false]
    """, "retry_backoff_s: 0.01\n"))
    sidecar = sidecars(config)
    for i in range(3):
        assert sidecar.deliver(b"{}", delivery=f"m-{i}").status == 200
    assert sidecar.deliver(b"{}", secret="wrong").status == 401
    assert sidecar.post("/webhook", b"{}", {"X-GitHub-Event": "push"}).status == 401
    assert sidecar.request("GET", "/nope").status == 404
    wait_for(lambda: len(sidecar.find_logs("hook.finished")) == 6)
    config.write_text(config.read_text().replace("name: ok", "name: fine"))
    sidecar.wait_log(lambda e: e.get("msg") == "config.reloaded")
    config.write_text("endpoints: [")
    sidecar.wait_log(lambda e: e.get("msg") == "config.rejected")

    m = scrape(sidecar)
    assert m[("webhook_sidecar_requests_total", (("endpoint", "/webhook"), ("status", "200")))] == 3
    assert m[("webhook_sidecar_requests_total", (("endpoint", "/webhook"), ("status", "401")))] == 2
    assert m[("webhook_sidecar_requests_total", (("endpoint", "other"), ("status", "404")))] == 1
    assert m[("webhook_sidecar_verification_failures_total", (("provider", "github"), ("reason", "mismatch")))] == 1
    assert m[("webhook_sidecar_verification_failures_total", (("provider", "github"), ("reason", "missing")))] == 1
    assert m[("webhook_sidecar_deliveries_total", (("endpoint", "/webhook"), ("result", "accepted")))] == 3
    runs = ("webhook_sidecar_hook_runs_total", (("endpoint", "/webhook"), ("outcome", "ok"), ("route", "ok")))
    assert m[runs] == 3
    assert m[("webhook_sidecar_hook_runs_total",
              (("endpoint", "/webhook"), ("outcome", "failed"), ("route", "broken")))] == 3
    assert m[("webhook_sidecar_dead_letters_total", (("endpoint", "/webhook"), ("route", "broken")))] == 3
    assert m[("webhook_sidecar_hook_duration_seconds_count", (("endpoint", "/webhook"), ("route", "ok")))] == 3
    assert m[("webhook_sidecar_queue_depth", ())] == 0
    assert m[("webhook_sidecar_hooks_running", ())] == 0
    assert m[("webhook_sidecar_config_reloads_total", (("result", "reloaded"),))] == 1
    assert m[("webhook_sidecar_config_reloads_total", (("result", "rejected"),))] == 1
    assert m[("webhook_sidecar_config_last_reload_success_timestamp_seconds", ())] > 1.7e9
    # No unbounded labels: no delivery ids, no raw paths.
    text = sidecar.request("GET", "/metrics").body.decode()
    assert "m-0" not in text and "/nope" not in text


def test_request_id_is_logged_and_given_to_hooks(tmp_path: Path, sidecars) -> None:
    config = write_config(tmp_path, table("""
        - event: push
          run: {scripts}/record.sh
          env: {{OUT: {out}}}
    """))
    sidecar = sidecars(config)
    resp = sidecar.deliver(b"{}", delivery="rid-1", extra={"X-Request-Id": "trace.42"})
    assert resp.headers["x-request-id"] == "trace.42"
    assert sidecar.wait_log(lambda e: e.get("msg") == "delivery.accepted")["request_id"] == "trace.42"
    assert sidecar.wait_log(lambda e: e.get("msg") == "hook.finished")["request_id"] == "trace.42"
    generated = sidecar.deliver(b"{}", delivery="rid-2").headers["x-request-id"]
    env = tmp_path / "out" / "rid-2.record.env"
    # The file appears before the hook has written it: wait for the line itself.
    wait_for(lambda: env.exists() and f"WEBHOOK_REQUEST_ID={generated}" in env.read_text().splitlines())
