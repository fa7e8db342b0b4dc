"""The processes under test and the ceilings they are held against, and how to read their cost.

Sidecar        one `python -m sidecar serve` (of this tree or of another checkout: `root`), in a
               directory of its own, logging to a file; optionally pinned to CPUs (taskset) and run
               under a launcher (bench/cpuprofile.py, bench/stages.py) instead of `-m sidecar`.
CeilingServer  the bare stdlib handler of bench/ceiling.py (optionally durable, optionally pinned).
spawn_ceiling  Python spawning the hook from a thread pool (bench/ceiling.py spawn).
LogTail        the sidecar's JSON log lines counted by msg, reading only what is new.
answer         what a server answers one delivery (a probe: "401 {...}").
cpu_of, threads_cpu  CPU seconds from /proc: of a process and its reaped children, and per thread.
Budget         the whole run's time limit.
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
import workload  # noqa: E402

HOOK = ["/bin/true"]


def config_text(workers: int, extra_routes: tuple[str, ...] | list[str] = (), hook: Sequence[str] = HOOK) -> str:
    run = json.dumps(list(hook))  # a YAML flow sequence
    routes = "".join(f"      - event: {event}\n        name: {event}\n        run: {run}\n"
                     for event in extra_routes)
    return (
        "# written by bench/run.py\n"
        "spool_dir: spool\n"
        f"max_workers: {workers}\n"
        "max_queue: 100000\n"
        "endpoints:\n"
        f"  - path: {workload.PATH}\n"
        "    provider: github\n"
        "    secret_env: WEBHOOK_SECRET\n"
        "    routes:\n"
        f"      - event: {workload.EVENT}\n"
        "        name: noop\n"
        f"        run: {run}\n" + routes)


class Budget:
    """The whole run's time limit; a watchdog ends it (and the processes it started) when passed."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds
        self.procs: list[subprocess.Popen] = []
        self.skipped: list[str] = []
        timer = threading.Timer(seconds + 10, self._expire)
        timer.daemon = True
        timer.start()

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def allows(self, what: str, seconds: float) -> bool:
        if self.left() >= seconds:
            return True
        self.skipped.append(what)
        print(f"  (skipped {what}: {self.left():.0f} s of the budget left)", flush=True)
        return False

    def _expire(self) -> None:
        print("bench: over its time budget, stopping", file=sys.stderr, flush=True)
        for p in self.procs:
            if p.poll() is None:
                p.kill()
        os._exit(3)


class LogTail:
    """Counts the sidecar's JSON log lines by msg, reading only what is new each time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.partial = b""
        self.counts: collections.Counter[str] = collections.Counter()
        self.statuses: collections.Counter[int] = collections.Counter()
        self.outcomes: collections.Counter[str] = collections.Counter()
        self.last_hook_ts = 0.0
        self.first: dict[str, dict] = {}

    def read(self) -> LogTail:
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        self.offset += len(data)
        lines = (self.partial + data).split(b"\n")
        self.partial = lines.pop()
        for line in lines:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            msg = rec.get("msg", "")
            self.counts[msg] += 1
            self.first.setdefault(msg, rec)
            if isinstance(rec.get("status"), int):
                self.statuses[rec["status"]] += 1
            if msg == "hook.finished":
                self.outcomes[str(rec.get("outcome"))] += 1
                self.last_hook_ts = max(self.last_hook_ts, _ts(rec.get("ts", "")))
        return self


def _ts(text: str) -> float:
    try:
        return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.UTC).timestamp()
    except ValueError:
        return 0.0


class Served:
    """A server process the bench started, in a directory of its own: its pid, memory, stop and cleanup."""

    dir: Path
    proc: subprocess.Popen | None

    @property
    def pid(self) -> int:
        """The running server's pid (after start())."""
        assert self.proc is not None, "not started"
        return self.proc.pid

    def status(self) -> dict[str, int]:
        """VmRSS and VmHWM in KiB."""
        return vm_status(self.pid)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            terminate(self.proc)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class Sidecar(Served):
    """One `python -m sidecar serve` in its own directory, logs to a file (a full pipe would stall it)."""

    def __init__(self, budget: Budget, workers: int, log_level: str, cpu_profile: Path | None = None,
                 log_beside_config: bool = False, *, root: Path = ROOT, cpus: str | None = None,
                 hook: Sequence[str] = HOOK, launcher: Sequence[str] | None = None,
                 config: str | None = None) -> None:
        """`config`: the config.yaml text (default: config_text's one route running `hook`)."""
        self.budget = budget
        self.dir = Path(tempfile.mkdtemp(prefix="bench-sidecar-"))
        # config.yaml (and spool_dir under it) in a directory of its own, the log in another: the
        # sidecar watches the config's directory (and watchdog its parent) for reloads, so a log
        # written there would wake the watcher on every line, which no deployment does.
        for sub in ("conf", "logs"):
            (self.dir / sub).mkdir()
        self.config = self.dir / "conf" / "config.yaml"
        self.hook = list(hook)
        self.config.write_text(config if config is not None else config_text(workers, hook=hook))
        self.spool = self.dir / "conf" / "spool"
        self.log_path = self.dir / ("conf" if log_beside_config else "logs") / "sidecar.log"
        self.cpu_profile = cpu_profile
        self.log_level = log_level
        self.workers = workers
        self.root = root  # the checkout whose sidecar/ runs (PYTHONPATH), this one by default
        self.cpus = cpus  # taskset -c CPUS: the sidecar and every hook it starts
        self.launcher = launcher  # a script run instead of `-m sidecar` (its own args first)
        self.port = 0
        self.proc: subprocess.Popen | None = None

    def start(self) -> float:
        """Spawn; return the perf_counter time of the spawn."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("SIDECAR_")}
        env.update(WEBHOOK_SECRET=workload.SECRET,
                   PYTHONPATH=str(self.root) + os.pathsep + env.get("PYTHONPATH", ""))
        if self.launcher is not None:
            entry = list(self.launcher)
        elif self.cpu_profile is not None:
            entry = [str(HERE / "cpuprofile.py"), str(self.cpu_profile)]
        else:
            entry = ["-m", "sidecar"]
        pin = ["taskset", "-c", self.cpus] if self.cpus is not None else []
        with open(self.log_path, "wb") as out, open(self.dir / "logs" / "stderr.log", "wb") as err:
            t0 = time.perf_counter()
            self.proc = subprocess.Popen(  # taskset execs: the pid is the sidecar's
                [*pin, sys.executable, *entry, "serve", "--config", str(self.config),
                 "--listen", "127.0.0.1:0", "--log-level", self.log_level],
                stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=self.dir, env=env)
        self.budget.procs.append(self.proc)
        return t0

    def wait_port(self, timeout: float = 15) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with open(self.log_path, "rb") as f:
                for line in f:
                    if b'"server.listening"' in line:
                        self.port = int(json.loads(line)["port"])
                        return self.port
            if self.proc and self.proc.poll() is not None:
                break
            time.sleep(0.002)
        raise SystemExit(f"sidecar did not start:\n{self.log_path.read_text()[-3000:]}"
                         f"{(self.dir / 'logs' / 'stderr.log').read_text()[-3000:]}")

    def wait_ready(self, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if get(self.port, "/readyz") == 200:
                    return
            except OSError:
                pass
            time.sleep(0.002)
        raise SystemExit(f"sidecar never became ready:\n{self.log_path.read_text()[-3000:]}")


TICK = os.sysconf("SC_CLK_TCK")


def terminate(proc: subprocess.Popen) -> None:
    """SIGTERM (a sidecar drains), then SIGKILL if it is not gone within 30 s."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _stat(pid: int) -> tuple[float, float, int]:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
    return (utime + stime) / TICK, (cutime + cstime) / TICK, int(fields[1])


HELPERS = ("python", "forkserver")  # the comm of a long-lived helper process (not a hook)


def _helpers(pid: int) -> list[int]:
    """The long-lived helper processes under `pid` (the hook spawner or fork server, watchdogs), not hooks."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if _stat(int(entry.name))[2] == pid and (entry / "comm").read_text().startswith(HELPERS):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def cpu_of(pid: int) -> tuple[float, float]:
    """(CPU seconds of the process and its helper processes (a hook spawner, watchdogs), CPU seconds of
    their reaped children: the hooks) from /proc/PID/stat."""
    own, kids, _ = _stat(pid)
    for helper in _helpers(pid):
        try:
            h_own, h_kids, _ = _stat(helper)
            own, kids = own + h_own, kids + h_kids
            for nested in _helpers(helper):
                own += _stat(nested)[0]
        except OSError:
            continue
    return own, kids


def get(port: int, path: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def post(port: int, event: str) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("POST", workload.PATH, body=workload.BODY,
                     headers={**workload.headers(True, event), "X-GitHub-Delivery": uuid.uuid4().hex})
        resp = conn.getresponse()
        data = resp.read()
        try:
            return resp.status, json.loads(data)
        except ValueError:
            return resp.status, {}
    finally:
        conn.close()


def answer(port: int, valid: bool) -> str:
    """What a server answers one delivery (signed with the right secret or the wrong one): "STATUS body"."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("POST", workload.PATH, body=workload.BODY,
                     headers={**workload.headers(valid), "X-GitHub-Delivery": uuid.uuid4().hex})
        resp = conn.getresponse()
        return f"{resp.status} {resp.read()[:80].decode(errors='replace')}".strip()
    finally:
        conn.close()


def threads_cpu(pid: int) -> dict[str, float]:
    """CPU seconds of the live threads of `pid` by kind (thread name, numbers merged): what each
    kind of thread costs, without any instrumentation."""
    out: collections.defaultdict[str, float] = collections.defaultdict(float)
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return {}
    for tid in tids:
        try:
            text = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:
            continue  # ended meanwhile
        fields = text.rsplit(")", 1)[1].split()
        out[thread_kind(text[text.index("(") + 1:text.rindex(")")])] += (int(fields[11]) + int(fields[12])) / TICK
    return dict(out)


def thread_kind(comm: str) -> str:
    """'worker-3' -> 'worker-N', 'Thread-12 (proc' -> 'Thread-N (proc' (comm is cut at 15 bytes)."""
    return re.sub(r"[0-9]+", "N", comm)


class CeilingServer:
    """bench/ceiling.py server: the bare stdlib handler (with `durable`: a sqlite commit per request)."""

    def __init__(self, budget: Budget, durable: Path | None = None, cpus: str | None = None) -> None:
        pin = ["taskset", "-c", cpus] if cpus is not None else []
        self.proc = subprocess.Popen(
            [*pin, sys.executable, str(HERE / "ceiling.py"), "server",
             *(["--durable", str(durable)] if durable else [])],
            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
        budget.procs.append(self.proc)
        assert self.proc.stdout is not None
        self.port = int(json.loads(self.proc.stdout.readline())["port"])

    def status(self) -> dict[str, int]:
        return vm_status(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def vm_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM in KiB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


def spawn_ceiling(args: argparse.Namespace) -> dict:
    out = subprocess.run([sys.executable, str(HERE / "ceiling.py"), "spawn", "--workers", str(args.workers),
                          "--count", str(args.spawn_count), *HOOK], capture_output=True, text=True, timeout=120)
    if out.returncode:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout)


def wait_for_hooks(log: LogTail, seconds: float) -> bool:
    """Wait until every accepted delivery's hook has finished (a quiet machine for what comes next)."""
    deadline = time.monotonic() + seconds
    while log.read().counts["hook.finished"] < log.counts["delivery.accepted"]:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True
