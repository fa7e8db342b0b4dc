"""The admin listener end to end: a real sidecar with `admin:`, real hooks, both spool backends.

/metrics and /admin/* on the second port, the bearer token (missing, wrong, rotated file), the history
(listing, filters, paging, one delivery with its body), replay running the hook again with the same body,
409 once the body is dropped, retry of a dead letter, `spool replay`, and the audit lines.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sidecar import config as config_mod
from sidecar.errors import ConfigError

from .conftest import Response, Sidecar, wait_for, write_config
from .support import SPOOL_URL_VAR, SecretVolume, lines, spool_cli, table

TOKEN = "admin-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
# Each run appends its body and a line break to $OUT/bodies, and "<delivery> <route>" to $OUT/ran.
ROUTES = """
- event: push
  name: keep
  run: [sh, -c, 'cat >> "$OUT/bodies"; echo >> "$OUT/bodies"; echo "$WEBHOOK_DELIVERY $WEBHOOK_ROUTE" >> "$OUT/ran"']
  env: {{OUT: {out}}}
- event: release
  name: broken
  run: [sh, -c, 'cat > /dev/null; echo "$WEBHOOK_DELIVERY $WEBHOOK_ROUTE" >> "$OUT/ran"; echo no >&2; exit 3']
  retries: 0
  env: {{OUT: {out}}}
"""


class Admin:
    """HTTP to a sidecar's admin port (from its admin.listening line)."""

    def __init__(self, sidecar: Sidecar) -> None:
        self.sidecar = sidecar
        self.port = int(sidecar.wait_log(lambda e: e.get("msg") == "admin.listening")["port"])

    def request(self, method: str, path: str, headers: dict[str, str] | None = None) -> Response:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request(method, path, headers=AUTH if headers is None else headers)
            resp = conn.getresponse()
            return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
        finally:
            conn.close()

    def get(self, path: str) -> Any:
        response = self.request("GET", path)
        assert response.status == 200, response.body
        return response.json()

    def settled(self, path: str) -> Any:
        """GET `path` (a listing or one delivery) once none of its jobs is pending, else None."""
        doc = self.get(path)
        jobs = [j for d in doc.get("deliveries", [doc]) for j in d["jobs"]]
        return doc if all(j["state"] != "pending" for j in jobs) else None


def admin_table(top: str = "", keep_bodies_s: float = 0) -> str:
    return table(ROUTES, f"admin: {{{{listen: '127.0.0.1:0', token_env: ADMIN_TOKEN}}}}\n"
                         f"keep_bodies_s: {keep_bodies_s}\n{top}")


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, str]]:
    """(top-level config lines, environment) of the spool under test."""
    env = {"ADMIN_TOKEN": TOKEN}
    if request.param == "sqlite":
        return "", env
    url = request.getfixturevalue("pg_url")
    return f"spool_url_env: {SPOOL_URL_VAR}\nlease_s: 2\n", {**env, SPOOL_URL_VAR: url}


def ran(out: Path) -> list[str]:
    return lines(out / "ran")


def test_ports_and_token(tmp_path: Path, sidecars: Callable[..., Sidecar]) -> None:
    sidecar = sidecars(write_config(tmp_path, admin_table()), env={"ADMIN_TOKEN": TOKEN})
    admin = Admin(sidecar)
    # Health on both ports, metrics only on the admin port, and with no token.
    for path in ("/healthz", "/readyz"):
        assert sidecar.request("GET", path).status == 200
        assert admin.request("GET", path, headers={}).status == 200
    metrics = admin.request("GET", "/metrics", headers={})
    assert metrics.status == 200 and b"webhook_sidecar" in metrics.body
    assert sidecar.request("GET", "/metrics").status == 404
    assert sidecar.request("GET", "/admin/deliveries", headers=AUTH).status == 404
    # The token: missing, another scheme, wrong, right.
    for headers in ({}, {"Authorization": f"Basic {TOKEN}"}, {"Authorization": "Bearer wrong-token-0123456789"},
                    {"Authorization": f"Bearer {TOKEN}x"}):
        refused = admin.request("GET", "/admin/deliveries", headers=headers)
        assert refused.status == 401 and refused.headers["www-authenticate"].startswith("Bearer"), headers
    assert admin.request("GET", "/admin/nothing-here", headers={}).status == 401  # no path told apart
    assert admin.get("/admin/deliveries") == {"deliveries": [], "next_before": None}
    assert admin.request("GET", "/admin/nothing-here").status == 404
    assert admin.request("GET", "/admin/deliveries/1/replay").headers["allow"] == "POST"
    assert admin.request("POST", "/webhook").status == 404  # no webhook endpoint on the admin port
    assert admin.request("GET", "/admin/deliveries?limit=501").status == 400
    assert admin.request("GET", "/admin/deliveries?state=running").status == 400
    assert admin.request("GET", "/admin/deliveries?colour=red").status == 400
    assert admin.request("GET", "/admin/deliveries/99").status == 404
    assert admin.request("POST", "/admin/deliveries/99/replay").status == 404
    assert admin.request("POST", "/admin/jobs/99/retry").status == 404
    refusals = sidecar.find_logs("admin.unauthorized")
    assert len(refusals) == 5 and all(e["level"] == "warning" and e["remote"] == "127.0.0.1" for e in refusals)
    assert not any(TOKEN in line for line in sidecar.raw)


def test_history_replay_and_retry(tmp_path: Path, sidecars: Callable[..., Sidecar],
                                  backend: tuple[str, dict[str, str]]) -> None:
    top, env = backend
    out = tmp_path / "out"
    sidecar = sidecars(write_config(tmp_path, admin_table(top, keep_bodies_s=3600)), env=env)
    admin = Admin(sidecar)
    bodies = [json.dumps({"n": i, "text": "é"}).encode() for i in range(3)]
    for i, body in enumerate(bodies):
        assert sidecar.deliver(body, delivery=f"d{i}").status == 200
    assert sidecar.deliver(b'{"action": "published"}', event="release", delivery="r1").status == 200
    wait_for(lambda: len(ran(out)) == 4, timeout=10)
    listing = wait_for(lambda: admin.settled("/admin/deliveries"))
    assert [d["delivery"] for d in listing["deliveries"]] == ["r1", "d2", "d1", "d0"]  # newest first
    assert listing["next_before"] is None
    first = listing["deliveries"][-1]
    assert first["jobs"] == [{"id": first["jobs"][0]["id"], "route": "keep", "state": "done", "attempts": 1,
                              "exit_code": 0, "replay_of": None}]
    # Filters and paging.
    page = admin.get("/admin/deliveries?event=push&limit=2")
    assert [d["delivery"] for d in page["deliveries"]] == ["d2", "d1"]
    rest = admin.get(f"/admin/deliveries?event=push&limit=2&before={page['next_before']}")
    assert [d["delivery"] for d in rest["deliveries"]] == ["d0"]
    failed = admin.get("/admin/deliveries?state=failed")["deliveries"]
    assert [d["delivery"] for d in failed] == ["r1"]
    by_route = admin.get("/admin/deliveries?route=broken&endpoint=/webhook")["deliveries"]
    assert [d["delivery"] for d in by_route] == ["r1"]
    assert admin.get("/admin/deliveries?endpoint=/other")["deliveries"] == []
    # One delivery in full, with its body on request.
    shown = admin.get(f"/admin/deliveries/{first['id']}?body=1")
    assert shown["body"] == bodies[0].decode() and shown["body_kept"] is True
    assert shown["jobs"][0]["outcome"] == "ok" and "body" not in admin.get(f"/admin/deliveries/{first['id']}")
    dead = admin.get(f"/admin/deliveries/{failed[0]['id']}")["jobs"][0]
    assert dead["state"] == "failed" and dead["exit_code"] == 3 and "no" in dead["output_tail"]

    # Replay: a new job under today's table, the same body, the audit line with remote and request id.
    replayed = admin.request("POST", f"/admin/deliveries/{first['id']}/replay",
                             headers={**AUTH, "X-Request-Id": "replay-1"})
    assert replayed.status == 202, replayed.body
    doc = replayed.json()
    assert doc["routes"] == ["keep"] and len(doc["jobs"]) == 1 and doc["delivery"] == "d0"
    wait_for(lambda: ran(out).count("d0 keep") == 2, timeout=10)
    assert lines(out / "bodies").count(bodies[0].decode()) == 2
    line = sidecar.wait_log(lambda e: e.get("msg") == "admin.replayed")
    assert line["request_id"] == "replay-1" and line["remote"] == "127.0.0.1" and line["jobs"] == doc["jobs"]
    jobs = wait_for(lambda: admin.settled(f"/admin/deliveries/{first['id']}"))["jobs"]
    assert [j["replay_of"] for j in jobs] == [None, first["id"]]

    # Retry: a dead letter runs again; anything else is refused.
    assert admin.request("POST", f"/admin/jobs/{jobs[0]['id']}/retry").status == 409
    retried = admin.request("POST", f"/admin/jobs/{dead['id']}/retry")
    assert retried.status == 202, retried.body
    wait_for(lambda: ran(out).count("r1 broken") == 2, timeout=10)
    line = sidecar.wait_log(lambda e: e.get("msg") == "admin.retried")
    assert line["job"] == dead["id"] and line["remote"] == "127.0.0.1" and line["request_id"]


def test_replay_is_refused_once_the_body_is_dropped(tmp_path: Path, sidecars: Callable[..., Sidecar],
                                                   backend: tuple[str, dict[str, str]]) -> None:
    top, env = backend
    out = tmp_path / "out"
    sidecar = sidecars(write_config(tmp_path, admin_table(top, keep_bodies_s=1)), env=env)
    admin = Admin(sidecar)
    assert sidecar.deliver(b'{"kept": "a while"}', delivery="k1").status == 200
    wait_for(lambda: "k1 keep" in ran(out), timeout=10)
    spool_id = wait_for(lambda: admin.settled("/admin/deliveries"))["deliveries"][0]["id"]
    # Within keep_bodies_s the body is there to replay; after it, 409 and no new job.
    assert admin.request("POST", f"/admin/deliveries/{spool_id}/replay").status == 202
    wait_for(lambda: ran(out).count("k1 keep") == 2, timeout=10)
    wait_for(lambda: admin.get(f"/admin/deliveries/{spool_id}")["body_kept"] is False, timeout=10)
    refused = admin.request("POST", f"/admin/deliveries/{spool_id}/replay")
    assert refused.status == 409 and b"no longer kept" in refused.body
    assert admin.get(f"/admin/deliveries/{spool_id}?body=1")["body"] is None
    assert len(admin.get(f"/admin/deliveries/{spool_id}")["jobs"]) == 2


def test_without_keep_bodies_a_finished_delivery_cannot_be_replayed(tmp_path: Path,
                                                                     sidecars: Callable[..., Sidecar]) -> None:
    out = tmp_path / "out"
    sidecar = sidecars(write_config(tmp_path, admin_table()), env={"ADMIN_TOKEN": TOKEN})
    admin = Admin(sidecar)
    assert sidecar.deliver(b"{}", delivery="gone").status == 200
    wait_for(lambda: "gone keep" in ran(out), timeout=10)
    spool_id = admin.get("/admin/deliveries")["deliveries"][0]["id"]
    wait_for(lambda: admin.get(f"/admin/deliveries/{spool_id}")["body_kept"] is False, timeout=5)
    assert admin.request("POST", f"/admin/deliveries/{spool_id}/replay").status == 409
    # `spool replay` says the same, and replays what still has its body (a dead letter keeps it).
    config = tmp_path / "config.yaml"
    refused = spool_cli(config, "replay", str(spool_id), env={"ADMIN_TOKEN": TOKEN})
    assert refused.returncode == 1 and "no longer kept" in refused.stderr
    assert sidecar.deliver(b'{"action": "x"}', event="release", delivery="dead").status == 200
    wait_for(lambda: "dead broken" in ran(out), timeout=10)
    dead_id = admin.get("/admin/deliveries?state=failed")["deliveries"][0]["id"]
    replayed = spool_cli(config, "replay", str(dead_id), env={"ADMIN_TOKEN": TOKEN})
    assert replayed.returncode == 0 and "for routes broken" in replayed.stdout, replayed.stderr
    wait_for(lambda: ran(out).count("dead broken") == 2, timeout=10)
    assert spool_cli(config, "replay", "9999", env={"ADMIN_TOKEN": TOKEN}).returncode == 1


def test_token_file_rotation_needs_no_restart(tmp_path: Path, sidecars: Callable[..., Sidecar]) -> None:
    volume = SecretVolume(tmp_path / "admin-secret")
    volume.publish("first-admin-token-0123456789")
    text = table(ROUTES, "admin: {{listen: '127.0.0.1:0', token_file: admin-secret/token}}\n")
    admin = Admin(sidecars(write_config(tmp_path, text)))
    old, new = ({"Authorization": f"Bearer {t}-admin-token-0123456789"} for t in ("first", "second"))
    assert admin.request("GET", "/admin/deliveries", headers=old).status == 200
    assert admin.request("GET", "/admin/deliveries", headers=new).status == 401
    volume.publish("second-admin-token-0123456789")
    assert admin.request("GET", "/admin/deliveries", headers=new).status == 200
    assert admin.request("GET", "/admin/deliveries", headers=old).status == 401
    admin.sidecar.wait_log(lambda e: e.get("msg") == "admin.token_reloaded")
    assert not any("admin-token-0123456789" in line for line in admin.sidecar.raw)


@pytest.mark.parametrize(("admin", "error"), [
    ("{listen: '127.0.0.1:9090'}", "needs exactly one of token_env or token_file"),
    ("{listen: '127.0.0.1:9090', token_env: ADMIN_TOKEN, token_file: t}", "needs exactly one of"),
    ("{listen: '127.0.0.1:9090', token_env: SHORT}", "shorter than 16 bytes"),
    ("{listen: '127.0.0.1:9090', token_env: UNSET}", "UNSET in the environment or the env file: not set"),
    ("{listen: '127.0.0.1:9090', token_file: missing}", "cannot read token file"),
    ("{listen: '0.0.0.0:8080', token_env: ADMIN_TOKEN}", "must differ from listen"),
    ("{token_env: ADMIN_TOKEN}", "missing required key 'listen'"),
    ("{listen: '127.0.0.1:9090', token_env: ADMIN_TOKEN, port: 1}", "port"),
])
def test_admin_config_errors(tmp_path: Path, admin: str, error: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(table("- {event: push, run: [true]}", f"admin: {admin}\n"))
    with pytest.raises(ConfigError) as e:
        config_mod.load(path, environ={"WEBHOOK_SECRET": "s", "ADMIN_TOKEN": TOKEN, "SHORT": "abc"})
    assert error in str(e.value) and TOKEN not in str(e.value)
    path.write_text(table("- {event: push, run: [true]}", "keep_bodies_s: -1\n"))
    with pytest.raises(ConfigError):
        config_mod.load(path, environ={"WEBHOOK_SECRET": "s"})
