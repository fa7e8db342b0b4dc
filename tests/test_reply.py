"""`reply:` end to end: a route's first run answers the sender with its stdout when it exits 0 in time;
otherwise the endpoint's own answer goes out and the run goes on as an ordinary job, never twice; a kill -9
during the wait runs the job once after the restart. Real sidecars, real hooks, a signed Slack slash
command."""

from __future__ import annotations

import hashlib
import hmac
import signal
import threading
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path

from .conftest import Response, Sidecar, wait_for, write_config
from .support import lines, table

SLACK_SECRET = "slack-signing-secret-for-tests"
# Counts its runs in $OUT/runs, then answers as the route's script says.
COUNT = 'cat > /dev/null; echo "$WEBHOOK_ATTEMPT $WEBHOOK_REPLY" >> "$OUT/$WEBHOOK_ROUTE.runs"; '


def config_text(timeout_s: float = 2.5) -> str:
    """/webhook replying at once; /slow and /failing falling back; /held for a kill -9; a Slack command."""
    quick = f"""- event: push
  name: quick
  run: [sh, -c, '{COUNT}echo "{{{{\\"text\\": \\"deployed $WEBHOOK_DELIVERY\\"}}}}"']
  env: {{{{OUT: {{out}}}}}}
  reply: {{{{timeout_s: {timeout_s}}}}}
"""
    return table(quick, "retry_backoff_s: 0.2\n", f"""  - path: /slow
    provider: github
    secret_env: WEBHOOK_SECRET
    routes:
      - event: push
        name: slow
        run: [sh, -c, '{COUNT}if [ ! -e "$OUT/hold" ]; then sleep 3; fi; echo late']
        env: {{{{OUT: {{out}}}}}}
        reply: {{{{timeout_s: 1}}}}
  - path: /failing
    provider: github
    secret_env: WEBHOOK_SECRET
    routes:
      - event: push
        name: failing
        retries: 0
        run: [sh, -c, '{COUNT}echo "not this"; exit 1']
        env: {{{{OUT: {{out}}}}}}
        reply: true
  - path: /held
    provider: github
    secret_env: WEBHOOK_SECRET
    routes:
      - event: push
        name: held
        run: [sh, -c, '{COUNT}if [ ! -e "$OUT/held.mark" ]; then touch "$OUT/held.mark"; sleep 60; fi; echo ok']
        env: {{{{OUT: {{out}}}}}}
        reply: {{{{timeout_s: 20}}}}
  - path: /slack
    provider: slack
    secret_env: SLACK_SECRET
    routes:
      - event: slash_command
        name: command
        run: [sh, -c, 'cat > /dev/null; echo "Deploying to production"']
        reply: true
""")


def start(sidecars: Callable[..., Sidecar], tmp_path: Path) -> Sidecar:
    return sidecars(write_config(tmp_path, config_text()), env={"SLACK_SECRET": SLACK_SECRET})


def runs(out: Path, route: str) -> list[str]:
    return lines(out / f"{route}.runs")


def test_a_quick_hook_answers_the_sender_with_its_stdout(tmp_path: Path, sidecars: Callable[..., Sidecar]) -> None:
    sidecar = start(sidecars, tmp_path)
    began = time.monotonic()
    r = sidecar.deliver(b"{}", delivery="q-1")
    took = time.monotonic() - began
    assert r.status == 200 and r.json() == {"text": "deployed q-1"}, r.body
    assert r.headers["content-type"] == "application/json"
    assert took < 2.5, took
    print(f"\nreply answered in {took * 1000:.0f} ms")
    line = sidecar.wait_log(lambda e: e.get("msg") == "hook.finished" and e.get("delivery") == "q-1")
    assert line["replied"] is True and line["state"] == "done"
    assert runs(tmp_path / "out", "quick") == ["1 1"]  # once, with WEBHOOK_REPLY=1 on the first attempt


def test_a_slow_or_failing_hook_falls_back_and_still_runs_once(tmp_path: Path,
                                                               sidecars: Callable[..., Sidecar]) -> None:
    sidecar = start(sidecars, tmp_path)
    out = tmp_path / "out"
    began = time.monotonic()
    r = sidecar.deliver(b"{}", delivery="s-1", path="/slow")
    took = time.monotonic() - began
    assert r.status == 200 and r.json()["status"] == "accepted", r.body  # the endpoint's own answer
    assert 0.9 <= took < 2.5, took  # within the reply's timeout (1 s), not the hook's 3 s
    line = sidecar.wait_log(lambda e: e.get("msg") == "hook.finished" and e.get("delivery") == "s-1", timeout=10)
    assert line["replied"] is False and line["state"] == "done"
    failing = sidecar.deliver(b"{}", delivery="f-1", path="/failing")
    assert failing.status == 200 and failing.json()["status"] == "accepted", failing.body
    sidecar.wait_log(lambda e: e.get("msg") == "hook.finished" and e.get("delivery") == "f-1")
    time.sleep(0.5)  # a second run would show up now
    assert runs(out, "slow") == ["1 1"] and runs(out, "failing") == ["1 1"]


def test_a_kill_9_during_the_wait_runs_the_job_once_after_the_restart(
        tmp_path: Path, sidecars: Callable[..., Sidecar]) -> None:
    first = start(sidecars, tmp_path)
    out = tmp_path / "out"
    answers: list[Response | BaseException] = []

    def post() -> None:
        try:
            answers.append(first.deliver(b"{}", delivery="k-1", path="/held"))
        except BaseException as e:  # the connection dies with the sidecar
            answers.append(e)

    sender = threading.Thread(target=post)
    sender.start()
    wait_for((out / "held.mark").exists, timeout=10)  # committed, and its run waits
    first.stop(signal.SIGKILL)
    sender.join(10)
    assert answers and not isinstance(answers[0], Response)  # the sender got no answer: it would retry
    second = start(sidecars, tmp_path)
    second.wait_log(lambda e: e.get("msg") == "hook.finished" and e.get("delivery") == "k-1", timeout=20)
    assert runs(out, "held") == ["1 1", "1 "]  # the killed run, then once after the restart (no sender waits)


def test_a_slack_slash_command_is_answered_from_the_hook(tmp_path: Path, sidecars: Callable[..., Sidecar]) -> None:
    sidecar = start(sidecars, tmp_path)
    body = urllib.parse.urlencode({"command": "/deploy", "text": "production", "trigger_id": "t-1",
                                   "user_name": "alice"}).encode()
    ts = str(int(time.time()))
    signature = "v0=" + hmac.new(SLACK_SECRET.encode(), f"v0:{ts}:".encode() + body, hashlib.sha256).hexdigest()
    r = sidecar.post("/slack", body, {"Content-Type": "application/x-www-form-urlencoded",
                                      "X-Slack-Request-Timestamp": ts, "X-Slack-Signature": signature})
    assert r.status == 200 and r.body == b"Deploying to production\n", r.body
    assert r.headers["content-type"] == "text/plain; charset=utf-8"


def test_two_replying_routes_on_one_endpoint_are_a_config_error(tmp_path: Path) -> None:
    from .support import cli_text
    quick = "      - event: push\n        name: quick\n"
    other = "      - event: push\n        name: other\n        run: /bin/true\n        reply: true\n"
    text = config_text().replace(quick, other + quick, 1)
    result = cli_text("check", "--config", str(write_config(tmp_path, text)),
                      env={"WEBHOOK_SECRET": "s", "SLACK_SECRET": "s"})
    assert result.returncode != 0 and "only one route of an endpoint may reply" in result.stdout + result.stderr
