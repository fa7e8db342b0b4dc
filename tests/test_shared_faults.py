"""The shared spool under faults of the database and of the replica itself, end to end: a start with the
database down, credentials refused, a partition that drops packets (a blackholing proxy), and a pause
longer than the lease (the replica and its hook stopped, as a frozen container is).

Real sidecar processes, a real PostgreSQL (tests/pg.py); the proxy is a few threads on 127.0.0.1.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from pathlib import Path

from .conftest import Response, github_signature, wait_for, write_config
from .pg import PASSWORD, Postgres
from .support import SPOOL_URL_VAR as VAR
from .support import lines, metric, shared_table, spool_cli, where


def test_start_with_the_database_down_then_ready_when_it_comes(tmp_path: Path, sidecars) -> None:
    """A server of its own, stopped: the replica serves unready and opens the database once it runs."""
    own = Postgres()
    try:
        url = own.create_database()
        own.stop()
        config = write_config(tmp_path, shared_table(where("late")))
        s = sidecars(config, "--replica", "s1", env={VAR: url})
        assert s.request("GET", "/healthz").status == 200
        unready = s.request("GET", "/readyz")
        assert unready.status == 503 and unready.json()["error"] == "not ready: spool database unreachable"
        refused = s.deliver(b"{}", delivery="early")
        assert refused.status == 503 and refused.headers["retry-after"] == "5"
        # It retries with back-off, and says so.
        s.wait_log(lambda e: e.get("msg") == "spool.unavailable" and e.get("tries") == 2, timeout=5)
        own.start()
        up = time.monotonic()
        wait_for(lambda: s.request("GET", "/readyz").status == 200, timeout=10, interval=0.05)
        ready_after = time.monotonic() - up
        print(f"\nready {ready_after:.2f} s after the database started")
        assert ready_after < 6.0  # the longest back-off (5 s) and a connection
        assert s.deliver(b"{}", delivery="later").json()["status"] == "accepted"
        wait_for(lambda: lines(tmp_path / "out" / "ran") == ["later late s1"], timeout=10)
        assert s.proc.poll() is None and s.find_logs("spool.connected")[0]["tries"] >= 2
        assert PASSWORD not in "".join(s.raw)
    finally:
        own.destroy()


def test_refused_credentials_keep_it_unready_with_the_reason(tmp_path: Path, sidecars, pg: Postgres) -> None:
    config = write_config(tmp_path, shared_table(where("x")))
    wrong = pg.url(password="Wrong-" + PASSWORD)
    s = sidecars(config, env={VAR: wrong})
    down = s.request("GET", "/readyz")
    assert down.status == 503 and down.json()["error"] == "not ready: spool database refused the credentials"
    assert s.deliver(b"{}", delivery="d").status == 503
    logged = s.wait_log(lambda e: e.get("msg") == "spool.unavailable")
    assert "password authentication failed" in logged["error"]
    assert PASSWORD not in "".join(s.raw) and wrong not in "".join(s.raw)


class Proxy:
    """A TCP proxy on 127.0.0.1 to `port`. cut() makes it a blackhole: nothing is forwarded, sockets stay
    open (what a partition looks like to both ends, no error); heal() forwards what was held.

    With `trap` set, it cuts itself right after forwarding the COMMIT of a transaction that inserted a
    delivery: the commit lands, its answer does not (the outcome the sidecar cannot know)."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.forwarding = threading.Event()
        self.forwarding.set()
        self.trap = False
        self.cut_at = 0.0
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, url: str, port: int) -> str:
        return url.replace(f":{port}/", f":{self.port}/")

    def cut(self) -> None:
        self.cut_at = time.monotonic()
        self.forwarding.clear()

    def heal(self) -> None:
        self.forwarding.set()

    def close(self) -> None:
        self.forwarding.set()
        for s in [self.listener, *self.sockets]:
            s.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
                upstream = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                return
            self.sockets += [client, upstream]
            inserted = threading.Event()
            threading.Thread(target=self._pump, args=(client, upstream, inserted), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, None), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, inserted: threading.Event | None) -> None:
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                data = b""
            if not data:
                break
            self.forwarding.wait()  # a blackhole holds what it got; TCP would deliver it after the cut
            sprung = inserted is not None and self.trap and inserted.is_set() and b"COMMIT" in data
            if inserted is not None and b"INSERT INTO sidecar_deliveries" in data:
                inserted.set()
            elif inserted is not None and b"COMMIT" in data:
                inserted.clear()  # a pooled connection's later transactions (an outcome) are not the trap's
            try:
                dst.sendall(data)
            except OSError:
                break
            if sprung:
                self.trap = False
                self.cut()
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def test_a_partition_answers_503_within_the_deadline_and_a_landed_commit_dedupes(tmp_path: Path, sidecars,
                                                                                pg: Postgres, pg_url: str) -> None:
    proxy = Proxy(pg.port)
    try:
        config = write_config(tmp_path, shared_table(where("cut")))
        s = sidecars(config, "--replica", "b1", env={VAR: proxy.url(pg_url, pg.port)})
        out = tmp_path / "out"
        assert s.deliver(b"{}", delivery="before").status == 200
        wait_for(lambda: lines(out / "ran") == ["before cut b1"], timeout=10)

        # The next delivery's COMMIT reaches the database, then the network goes silent.
        proxy.trap = True
        answers: list[tuple[Response, float]] = []

        def send() -> None:
            started = time.monotonic()
            headers = {"X-GitHub-Event": "push", "X-GitHub-Delivery": "landed",
                       "X-Hub-Signature-256": github_signature(b"{}")}
            response = s.request("POST", "/webhook", b"{}", headers, timeout=30)  # beyond the 10 s deadline
            answers.append((response, time.monotonic() - started))

        sender = threading.Thread(target=send)
        sender.start()
        wait_for(lambda: proxy.cut_at, timeout=5)
        wait_for(lambda: s.request("GET", "/readyz").status == 503, timeout=5, interval=0.02)
        unready_after = time.monotonic() - proxy.cut_at
        refused_at = time.monotonic()
        refused = s.deliver(b"{}", delivery="refused")
        assert refused.status == 503 and refused.headers["retry-after"]
        assert time.monotonic() - refused_at < 1.0  # unready: refused at once, not after the deadline
        sender.join(20)
        landed, took = answers[0]
        print(f"\npartition: unready {unready_after:.2f} s after the cut; the POST in flight got"
              f" {landed.status} after {took:.2f} s")
        assert unready_after < 2.0
        assert landed.status == 503 and landed.headers["retry-after"]
        assert 9.5 < took < 12.0
        rejected = s.wait_log(lambda e: e.get("msg") == "request.rejected" and e.get("delivery") == "landed")
        assert rejected["error"] == "spool commit outcome unknown"

        proxy.heal()
        wait_for(lambda: s.request("GET", "/readyz").status == 200, timeout=10, interval=0.05)
        # The sender retries: the commit had landed, so it is a duplicate, and it runs once.
        assert s.deliver(b"{}", delivery="landed").json()["status"] == "duplicate"
        assert s.deliver(b"{}", delivery="refused").json()["status"] == "accepted"
        wait_for(lambda: {"landed cut b1", "refused cut b1"} <= set(lines(out / "ran")), timeout=10)
        time.sleep(0.3)  # a second run would show now
        assert sorted(lines(out / "ran")) == ["before cut b1", "landed cut b1", "refused cut b1"]
        assert metric(s, "webhook_sidecar_database_errors_total") > 0
    finally:
        proxy.close()


def _alive(pgid: int) -> bool:
    """Whether any process of the group lives (zombies do not)."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] not in "ZX":
                return True
    return False


def test_after_a_pause_longer_than_the_lease_the_run_ends_first(tmp_path: Path, sidecars, pg_url: str) -> None:
    """p1 and its hook are stopped (SIGSTOP: what a frozen cgroup does to both) while p2 takes the job
    over; thawed, p1 must end its run at once, before anything else. The window is printed."""
    config = write_config(tmp_path, shared_table("""
- event: push
  name: paused
  run: [sh, -c, 'cat >/dev/null; echo "$$ $WEBHOOK_REPLICA $WEBHOOK_ATTEMPT" >> "$OUT/started";
    if [ "$WEBHOOK_REPLICA" = p1 ]; then sleep 60; fi']
  env: {{OUT: {out}}}
""").replace("lease_s: 2", "lease_s: 1"))
    out = tmp_path / "out"
    p1 = sidecars(config, "--replica", "p1", env={VAR: pg_url})
    assert p1.deliver(b"{}", delivery="frozen").status == 200
    hook = int(wait_for(lambda: lines(out / "started"), timeout=10)[0].split()[0])
    p2 = sidecars(config, "--replica", "p2", env={VAR: pg_url})
    os.killpg(hook, signal.SIGSTOP)
    p1.proc.send_signal(signal.SIGSTOP)
    try:
        p2.wait_log(lambda e: e.get("msg") == "job.taken_over" and e.get("taken_from") == "p1", timeout=10)
    finally:
        thawed = time.monotonic()
        os.killpg(hook, signal.SIGCONT)
        p1.proc.send_signal(signal.SIGCONT)
    while _alive(hook) and time.monotonic() - thawed < 10:
        time.sleep(0.001)
    window = time.monotonic() - thawed
    print(f"\npause: the expired run's processes were gone {window * 1000:.0f} ms after the thaw")
    assert window < 0.5
    fenced = p1.wait_log(lambda e: e.get("msg") == "job.fenced", timeout=5)
    assert fenced["delivery"] == "frozen"
    p1.wait_log(lambda e: e.get("msg") == "hook.interrupted", timeout=5)
    done = p2.wait_log(lambda e: e.get("msg") == "hook.finished", timeout=10)
    assert (done["delivery"], done["state"], done["attempt"]) == ("frozen", "done", 2)
    time.sleep(0.5)
    assert not p1.find_logs("hook.finished")  # its run was cut, never recorded as an attempt
    listing = spool_cli(config, "list", "--json", env={VAR: pg_url})
    assert '"state": "done"' in listing.stdout and '"replica": "p2"' in listing.stdout
