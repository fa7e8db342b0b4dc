"""The command line as a user runs it: check, sign, send, serve, signals."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from .conftest import SECRET, Sidecar, write_config
from .support import cli, table

GITHUB_VECTOR_BODY = b"Hello, World!"
# https://docs.github.com/en/webhooks/using-webhooks/validating-webhook-deliveries#testing-the-webhook-payload-validation
GITHUB_VECTOR_SIG = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"


def test_check_accepts_the_example_config() -> None:
    result = cli("check", "--config", "config.yaml")
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().startswith("config.yaml: ok (1 endpoint(s), 2 route(s), hash ")


def test_check_lists_every_error_and_exits_1(tmp_path: Path) -> None:
    bad = tmp_path / "config.yaml"
    bad.write_text("endpoints:\n  - path: /x\n    provider: github\n    secret_env: MISSING_ONE\n    routes:\n"
                   "      - event: push\n        run: nope.sh\n")
    result = cli("check", "--config", str(bad))
    assert result.returncode == 1
    assert result.stdout.decode().splitlines() == [
        f"{bad}:4: endpoints[0].secret_env: secret MISSING_ONE is not set in the environment or the env file",
        f"{bad}:7: endpoints[0].routes[0].run: command not found on PATH: 'nope.sh' (scripts need a path such as"
        " hooks/x.sh)",
        f"{bad}: 2 error(s)",
    ]


def test_serve_refuses_an_invalid_config(tmp_path: Path) -> None:
    bad = tmp_path / "config.yaml"
    bad.write_text("endpoints: []\n")
    result = cli("serve", "--config", str(bad), "--listen", "127.0.0.1:0")
    assert result.returncode == 1
    assert f"{bad}:1: endpoints: needs at least one endpoint" in result.stderr.decode()


def test_secret_from_the_env_file_in_the_working_directory(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("ONLY_IN_FILE=abc\n")
    config = tmp_path / "config.yaml"
    config.write_text("endpoints:\n  - {path: /x, provider: github, secret_env: ONLY_IN_FILE, routes: []}\n")
    assert cli("check", "--config", "config.yaml", cwd=tmp_path).returncode == 0
    missing = cli("check", "--config", "config.yaml", "--env-file", "other.env", cwd=tmp_path)
    assert missing.returncode != 0
    assert b"env file other.env does not exist" in missing.stderr


def test_the_default_env_file_is_the_one_beside_the_config(tmp_path: Path) -> None:
    # Like every other relative path of the config: not the working directory's.
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / ".env").write_text("ONLY_IN_FILE=abc\n")
    config = tmp_path / "conf" / "config.yaml"
    config.write_text("endpoints:\n  - {path: /x, provider: github, secret_env: ONLY_IN_FILE, routes: []}\n")
    assert cli("check", "--config", "conf/config.yaml", cwd=tmp_path).returncode == 0
    (tmp_path / "conf" / ".env").rename(tmp_path / ".env")
    assert cli("check", "--config", "conf/config.yaml", cwd=tmp_path).returncode == 1


def test_send_without_a_secret_says_how_to_give_one(tmp_path: Path) -> None:
    (tmp_path / "p.json").write_text("{}")
    result = cli("send", "http://127.0.0.1:9/webhook", "p.json", "--provider", "github",
                 "--secret-env", "NOT_SET_ANYWHERE", cwd=tmp_path)
    assert result.returncode != 0
    assert b"NOT_SET_ANYWHERE is not set" in result.stderr and b"--secret-env" in result.stderr


def test_sign_prints_the_github_headers() -> None:
    result = cli("sign", "--provider", "github", "--event", "push", "--delivery", "d-1",
                 stdin=GITHUB_VECTOR_BODY)
    assert result.returncode == 0
    lines = result.stdout.decode().splitlines()
    assert f"X-Hub-Signature-256: {GITHUB_VECTOR_SIG}" in lines
    assert "X-GitHub-Event: push" in lines and "X-GitHub-Delivery: d-1" in lines


def test_sign_without_the_secret_fails_clearly() -> None:
    result = cli("sign", "--provider", "github", "--secret-env", "NOT_SET_ANYWHERE")
    assert result.returncode == 1
    assert b"secret NOT_SET_ANYWHERE is not set" in result.stderr


def test_github_documented_vector_passes_verification(basic: tuple[Sidecar, Path]) -> None:
    sidecar, _ = basic
    headers = {"X-GitHub-Event": "push", "X-Hub-Signature-256": GITHUB_VECTOR_SIG}
    # Verified (the secret is GitHub's example secret), then refused as not JSON: 400, not 401.
    assert sidecar.post("/webhook", GITHUB_VECTOR_BODY, headers).status == 400
    assert sidecar.post("/webhook", b"Hello, World?", headers).status == 401


def test_send_posts_a_signed_delivery(basic: tuple[Sidecar, Path], tmp_path: Path) -> None:
    sidecar, _ = basic
    payload = tmp_path / "push.json"
    payload.write_bytes(b'{"ref": "refs/heads/main"}')
    result = cli("send", f"http://127.0.0.1:{sidecar.port}/webhook", str(payload), "--provider", "github",
                 "--event", "push", "--delivery", "sent-1")
    assert result.returncode == 0, result.stderr
    first, body = result.stdout.decode().split("\n", 1)
    assert first == "200 OK"
    assert '"delivery":"sent-1"' in body and '"routes":["main_push","every"]' in body
    wrong = cli("send", f"http://127.0.0.1:{sidecar.port}/webhook", str(payload), "--provider", "github",
                env={"WEBHOOK_SECRET": "wrong"})
    assert wrong.returncode == 1 and wrong.stdout.decode().startswith("401 Unauthorized")


def test_sigterm_stops_with_exit_0_after_running_hooks_finish(tmp_path: Path, sidecars) -> None:
    config = write_config(tmp_path, table("""
        - event: "*"
          run: {scripts}/slow.sh
          env: {{OUT: {out}, SLEEP: "1"}}
    """))
    sidecar = sidecars(config)
    assert sidecar.deliver(b"{}", delivery="last").status == 200
    sidecar.wait_log(lambda e: e.get("msg") == "delivery.accepted")
    assert sidecar.stop(signal.SIGTERM) == 0
    assert (tmp_path / "out" / "last.done").exists()
    stopped = sidecar.wait_log(lambda e: e.get("msg") == "server.stopped")
    assert stopped["drained"] is True
    assert sidecar.find_logs("server.draining")[0]["reason"] == "SIGTERM"


def test_every_log_line_is_one_json_object(basic: tuple[Sidecar, Path]) -> None:
    sidecar, _ = basic
    import socket
    with socket.create_connection(("127.0.0.1", sidecar.port), timeout=5) as sock:
        sock.sendall(b"POST /webhook HTTP/1.1\r\nContent-Length: 2\r\nX-GitHub-Event: a\x00b\x1b[31m\r\n"
                     b"X-Request-Id: x\x85y\r\n\r\n{}")
        assert sock.recv(100).startswith(b"HTTP/1.1 401 ")
    sidecar.request("GET", "/nope%0a%7b%22msg%22")
    sidecar.wait_log(lambda e: e.get("path", "").startswith("/nope"))
    for line in sidecar.raw:
        assert line.startswith("{") and line.endswith("}\n") and "\n" not in line[:-1], "".join(sidecar.raw)
    assert all({"ts", "level", "msg"} <= set(e) for e in sidecar.logs)
    assert not any(SECRET in line for line in sidecar.raw)


def test_payload_and_signature_never_logged(basic: tuple[Sidecar, Path]) -> None:
    sidecar, _ = basic
    body = b'{"ref": "refs/heads/main", "marker": "PAYLOAD-MARKER-7f3a"}'
    sig = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    sidecar.deliver(body, delivery="no-leak")
    sidecar.wait_log(lambda e: e.get("msg") == "hook.finished" and e.get("delivery") == "no-leak")
    assert not any("PAYLOAD-MARKER" in line or sig in line for line in sidecar.raw)


def test_spool_flags_before_or_after_the_action(tmp_path: Path, sidecars) -> None:
    config = write_config(tmp_path, table("""
        - {{event: push, run: {scripts}/record.sh, env: {{OUT: {out}}}}}
    """, "spool_dir: from_config\n"))
    sidecar = sidecars(config)
    assert sidecar.deliver(b'{"ref": "x"}', delivery="cli-order").status == 200
    sidecar.wait_log(lambda e: e.get("msg") == "hook.finished")
    sidecar.stop()
    before = cli("spool", "--config", str(config), "list", "--json")
    after = cli("spool", "list", "--json", "--config", str(config), "--env-file", str(tmp_path / "none.env"))
    assert before.returncode == 0 and after.returncode == 0, (before.stderr, after.stderr)
    assert b"cli-order" in after.stdout and after.stdout == before.stdout
    # A flag after the action wins; one given only before it is not reset by the action's default.
    other = tmp_path / "other" / "config.yaml"
    other.parent.mkdir()
    other.write_text("spool_dir: elsewhere\n")
    assert cli("spool", "--config", str(other), "list", "--config", str(config)).stdout == \
        cli("spool", "list", "--config", str(config)).stdout
    missing = cli("spool", "--config", str(other), "list", "--failed")
    assert missing.returncode == 1 and f"no spool at {other.parent / 'elsewhere'}" in missing.stderr.decode()
    assert cli("spool", "--spool-dir", str(tmp_path / "from_config"), "list").returncode == 0
    assert cli("spool", "check", "--config", str(config)).returncode == 0  # after the action too


def test_spool_list_marks_cut_values(tmp_path: Path, sidecars) -> None:
    config = write_config(tmp_path, table("""
        - {{event: "*", run: {scripts}/record.sh, env: {{OUT: {out}}}}}
    """))
    sidecar = sidecars(config)
    assert sidecar.deliver(b"{}", event="repository_vulnerability_alert").status == 200
    sidecar.wait_log(lambda e: e.get("msg") == "hook.finished")
    rows = cli("spool", "list", "--config", str(config)).stdout.decode().splitlines()
    assert "repository_vuln~ " in rows[1] and "repository_vulnerability_alert" not in rows[1]


def test_send_writes_stripes_event_and_id_into_the_body(tmp_path: Path, sidecars) -> None:
    config = write_config(tmp_path, """
        endpoints:
          - {{path: /stripe, provider: stripe, secret_env: STRIPE_SECRET,
              routes: [{{event: "invoice.paid", run: {scripts}/record.sh, env: {{OUT: {out}}}}}]}}
    """)
    env = {"STRIPE_SECRET": "whsec_test"}
    sidecar = sidecars(config, env=env)
    (tmp_path / "p.json").write_text('{"object": "event", "type": "charge.succeeded"}')
    result = cli("send", f"http://127.0.0.1:{sidecar.port}/stripe", str(tmp_path / "p.json"), "--provider", "stripe",
                 "--secret-env", "STRIPE_SECRET", "--event", "invoice.paid", "--delivery", "evt_cli_1", env=env)
    assert result.returncode == 0, result.stderr
    assert b'"delivery":"evt_cli_1","routes":["record"]' in result.stdout  # routed by the type written in
    assert b"id set to 'evt_cli_1' in the body" in result.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a read-only tmpfs (needs root)")
def test_a_read_only_spool_directory_names_spool_dir_and_what_to_set(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)]).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        config = tmp_path / "config.yaml"
        config.write_text("spool_dir: ro/spool\nendpoints:\n  - {path: /x, provider: github, secret_env: S,"
                          " routes: []}\n")
        result = cli("serve", "--config", str(config), "--listen", "127.0.0.1:0", env={"S": "x"})
    finally:
        subprocess.run(["umount", str(ro)], check=True)
    assert result.returncode == 1
    assert (f"cannot write the spool at {ro / 'spool'} (spool_dir in {config}): Read-only file system. "
            "Set spool_dir to a writable directory") in result.stderr.decode()


def test_check_offline_skips_what_only_the_target_machine_has(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("tls: {cert_file: /etc/tls/crt.pem, key_file: /etc/tls/key.pem}\n"
                      "spool_url_file: /etc/spool/url\n"
                      "endpoints:\n"
                      "  - {path: /gh, provider: github, secret_env: NOT_HERE,"
                      " routes: [{event: push, run: hooks/x.sh}]}\n"
                      "  - {path: /st, provider: stripe, secret_file: /etc/secret/stripe,"
                      " routes: [{event: '*', run: [deploy-tool, --now]}]}\n")
    online = cli("check", "--config", str(config))
    assert online.returncode == 1 and b"NOT_HERE is not set" in online.stdout and b"no such file" in online.stdout
    offline = cli("check", "--offline", "--config", str(config))
    assert offline.returncode == 0, offline.stdout
    assert b"ok (2 endpoint(s), 2 route(s)" in offline.stdout and b"offline" in offline.stdout
    # What the file itself says is still checked.
    text = config.read_text().replace("provider: github", "provider: githb")
    config.write_text(text.replace("event: push", "evnt: push"))
    broken = cli("check", "--offline", "--config", str(config)).stdout.decode()
    assert f"{config}:4: endpoints[0].provider: unknown provider 'githb'" in broken
    assert "evnt: unknown key" in broken and "NOT_HERE" not in broken


def test_logs_name_the_config_by_its_absolute_path(tmp_path: Path) -> None:
    import sys
    (tmp_path / "config.yaml").write_text("endpoints:\n  - {path: /x, provider: github, secret_env: WEBHOOK_SECRET,"
                                          " routes: []}\n")
    proc = subprocess.Popen([sys.executable, "-m", "sidecar", "serve", "--config", "config.yaml", "--listen",
                             "127.0.0.1:0"], cwd=tmp_path, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "WEBHOOK_SECRET": SECRET})
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            entry = json.loads(line)
            if entry["msg"] == "server.listening":
                break
        assert entry["config"] == str(tmp_path / "config.yaml")
    finally:
        proc.kill()
        proc.wait(10)
        if proc.stdout:
            proc.stdout.close()
