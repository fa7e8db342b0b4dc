"""The sidecar's side of the hook spawner (spawner_main.py): a small long-lived process that starts, feeds,
watches and reaps the hooks, so the sidecar's interpreter never forks and never watches a hook itself.

Each thread that runs hooks gets a connection of its own to the spawner (a socketpair whose far end goes
over the control socket): a run is one request frame (argv, environment, timeout, the route's sandbox
grants; the payload as the frame's blob, never on a command line) and one outcome frame back, read by the
thread that asked: no hand-off to another thread. A cancel is a frame on the same connection.

A spawner that dies is restarted by the first run that notices; the new one ends what the dead one's runs
left (its journal and markers) before it says it is ready, and every run that was going on the dead one
returns only then, as a transient failure (retried like a fork that found no process): a job never runs
again beside its old run. Its own watchdog kills those runs at once anyway.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from . import logs, runner, spawner_wire
from .runner import Request

READY_S = 30.0  # how long a starting spawner may take (reap leftovers, walk /, build the default ruleset)
MAIN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "spawner_main.py")
DIED = "the hook spawner ended during the run; its processes were killed"


class Spawner:
    """A running spawner process: start() one, run() hooks through it, close() it after the last run."""

    def __init__(self, init: Mapping[str, Any]) -> None:
        self.init = dict(init)
        self._lock = threading.Lock()
        self._local = threading.local()
        self.generation = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._ctl: socket.socket | None = None
        self._conns: list[socket.socket] = []  # every thread's connection, closed with the spawner
        self.ready: dict[str, Any] = {}

    def start(self) -> None:
        """Start the process and wait until it is ready (OSError when it cannot be)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-I", "-S", MAIN, str(theirs.fileno())], stdin=subprocess.DEVNULL,
                pass_fds=(theirs.fileno(),), env={}, cwd="/", start_new_session=True)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.send(json.dumps(self.init).encode())
        if not select.select([ours], [], [], READY_S)[0]:
            self._kill(ours)
            raise OSError(f"the hook spawner was not ready within {READY_S:.0f} s")
        data = ours.recv(1 << 16)
        if not data:
            self._kill(ours)
            raise OSError("the hook spawner ended while starting")
        self.ready = json.loads(data)
        self._ctl = ours
        self.generation += 1

    def _kill(self, ctl: socket.socket) -> None:
        ctl.close()
        if self.proc is not None:
            try:
                self.proc.kill()
            except OSError:
                pass
            self.proc.wait()

    def launch(self, req: Request, stdin: bytes, cancel: threading.Event | None) -> runner.Result:
        """Run one hook through the spawner; its outcome as runner.run gives it."""
        start = time.monotonic()
        try:
            generation, conn = self._connection()
        except OSError as e:
            return runner.not_started(e, time.monotonic() - start)
        frame = None
        try:
            spawner_wire.write(conn, req.header(), stdin)
            frame = self._outcome(conn, cancel)
        except OSError:
            pass
        if frame is None:
            self._restart(generation)
            return runner.Result(None, False, time.monotonic() - start, "", error=DIED, transient=True)
        fields, stdout = frame
        return runner.Result(**fields, stdout=stdout)

    def _outcome(self, conn: socket.socket, cancel: threading.Event | None) -> tuple[dict[str, Any], bytes] | None:
        """Wait for the run's outcome; a cancel is passed on once."""
        if cancel is not None:
            poller = select.poll()
            poller.register(conn, select.POLLIN)
            while not poller.poll(100):  # notice a cancel within 0.1 s
                if cancel.is_set():
                    spawner_wire.write(conn, {"cancel": 1})
                    break
        return spawner_wire.read(conn)

    def _connection(self) -> tuple[int, socket.socket]:
        """This thread's connection to the running spawner (made at its first run on it)."""
        mine = getattr(self._local, "conn", None)
        if mine is not None and mine[0] == self.generation:
            return int(mine[0]), mine[1]
        if mine is not None:
            with self._lock:
                if mine[1] in self._conns:
                    self._conns.remove(mine[1])
            mine[1].close()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with self._lock:
                if self._ctl is None:
                    raise OSError("the hook spawner is not running")
                socket.send_fds(self._ctl, [b"{}"], [theirs.fileno()])
                generation = self.generation
                self._conns.append(ours)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self._local.conn = (generation, ours)
        return generation, ours

    def _restart(self, generation: int) -> None:
        """The spawner of `generation` is gone (or stuck): start another, which ends the old one's runs
        before it is ready. Once per generation; the other runs of that one wait here for it."""
        with self._lock:
            if generation != self.generation or self._ctl is None:
                return
            old = self.proc
            self._kill(self._ctl)
            self._ctl = None
            logs.error("hooks.spawner_died", pid=old.pid if old else None, returncode=old.returncode if old else None,
                       detail="the process that runs hooks ended; a new one ends its runs' processes, then they"
                              " are retried")
            try:
                self.start()
            except OSError as e:
                logs.error("hooks.spawner_unavailable", error=str(e), detail="hooks fail (retried) until it starts")
                return
            logs.info("hooks.spawner", pid=self.ready.get("ready"), restarted=True)

    def rebuild(self, hidden: Sequence[str]) -> None:
        """A reload: the spawner's rulesets are walked and built again with these hidden paths."""
        self._send({"rebuild": list(hidden)})

    def close(self) -> None:
        """At shutdown, after the last run ended: the spawner removes its journal and exits."""
        self._send({"close": 1})
        if self.proc is not None:
            try:
                self.proc.wait(5.0)
            except subprocess.TimeoutExpired:
                self.proc.send_signal(signal.SIGKILL)
                self.proc.wait()
        with self._lock:
            if self._ctl is not None:
                self._ctl.close()
                self._ctl = None
            for conn in self._conns:
                conn.close()
            self._conns.clear()

    def _send(self, msg: Mapping[str, Any]) -> None:
        with self._lock:
            if self._ctl is not None:
                try:
                    self._ctl.send(json.dumps(msg).encode())
                except OSError:
                    pass


def start(init: Mapping[str, Any]) -> Spawner | None:
    """A ready spawner (logged), or None when none can be started (logged: hooks start in-process)."""
    spawner = Spawner(init)
    try:
        spawner.start()
    except (OSError, ValueError) as e:
        logs.warning("hooks.no_spawner", error=str(e), detail="hooks are started by the sidecar itself")
        return None
    logs.info("hooks.spawner", pid=spawner.ready.get("ready"))
    return spawner
