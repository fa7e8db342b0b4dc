"""The hook spawner process: started by the sidecar (spawner.py) as `python -I -S` on this file, with an
empty environment, no descriptor of the sidecar's but its control socket and stdout (for its log lines).

It owns what a run needs of a process: the subreaper role, the run journal and markers (procs.Tracker),
its own watchdog (watchdog.py), the Landlock rulesets (sandbox.Sandbox, built here from the description the
sidecar sends: the hidden paths, the config directory, the hooks' private directory; a route's policy from
its read and write grants). Each of the sidecar's hook-running threads gets a connection of its own, served
by a thread here that starts, feeds, watches and reaps that thread's hooks (runner.run) and sends the
outcome back; a cancel on that connection ends the run as a shutdown does.

At start, before it says it is ready, it ends what a dead spawner's (or sidecar's) runs left
(Tracker.reap_leftovers): a restarted spawner never lets a job run again beside its old run. It ends
when the sidecar does: a `close` message (a clean stop, after the last run) or the control socket's end
(the sidecar died: it exits at once and its watchdog kills every run, then removes the hooks' directory).
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
from pathlib import Path
from typing import Any

if __name__ == "__main__":  # python -I -S: the package is not on the path
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sidecar import logs, procs, runner, sandbox, spawner_wire, watchdog

CONTROL_MAX = 1 << 20


class _Cancel(threading.Event):
    """The run's cancel: set by a cancel frame on its connection, or by the connection's end."""

    def __init__(self, conn: socket.socket) -> None:
        super().__init__()
        self.conn, self.gone = conn, False

    def is_set(self) -> bool:
        if not super().is_set() and _readable(self.conn):
            frame = spawner_wire.read(self.conn)
            self.gone = frame is None
            self.set()
        return super().is_set()


def _readable(conn: socket.socket) -> bool:
    import select

    return bool(select.select([conn], [], [], 0)[0])


class Spawner:
    def __init__(self, init: dict[str, Any]) -> None:
        run_dir = init.get("run_dir")
        procs.harden()  # the payloads it holds: not readable through /proc by the hooks
        self.tracker = procs.Tracker(Path(run_dir) if run_dir else None, subreaper=True, key=init["key"])
        for run in self.tracker.reap_leftovers():
            if run.get("pids"):
                logs.warning("hook.leftovers_killed", route=run.get("route"), delivery=run.get("delivery"),
                             pids=run.get("pids"), run=run.get("marker"),
                             detail="processes of a hook run of an earlier sidecar or spawner that did not stop"
                                    " cleanly")
        self.guard = watchdog.start(self.tracker)
        self.private = init.get("private") or ""
        box = init.get("sandbox")
        self.box = sandbox.create(box["hidden"], box["config_dir"], box["enabled"], box["private"]) if box else None

    def serve(self, conn: socket.socket) -> None:
        """One thread of the sidecar's: its runs, one at a time, until its connection ends."""
        with conn:
            while (frame := spawner_wire.read(conn)) is not None:
                req, payload = frame
                if "cancel" in req:
                    continue  # for a run that ended before the cancel came
                cancel = _Cancel(conn)
                result = self.run(req, payload, cancel)
                if cancel.gone:
                    return
                fields = {k: getattr(result, k) for k in RESULT_FIELDS}
                try:
                    spawner_wire.write(conn, fields, result.stdout)
                except OSError:
                    return

    def run(self, req: dict[str, Any], payload: bytes, cancel: threading.Event) -> runner.Result:
        grants = req.get("policy")
        policy = sandbox.Ruled(self.box, grants) if self.box is not None and grants is not None else None
        return runner.run(req["argv"], payload, req["env"], req["timeout_s"], cwd=req.get("cwd"), cancel=cancel,
                          cancel_grace_s=req["cancel_grace_s"], tracker=self.tracker, sandbox=policy,
                          route=req.get("route"), delivery=req.get("delivery"), reply_bytes=req.get("reply_bytes", 0))

    def control(self, msg: dict[str, Any]) -> bool:
        """A message from the sidecar; False when it says to stop."""
        if "rebuild" in msg and self.box is not None and self.box.enabled:
            self.box.rebuild(msg["rebuild"])
        return "close" not in msg


RESULT_FIELDS = ("exit_code", "timed_out", "duration_s", "output_tail", "error", "cancelled", "signal", "transient",
                 "leftovers")


def _ignore(_sig: int, _frame: object) -> None:
    pass


def main(fd: int) -> None:
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        # It ends with the sidecar (its control socket), never before. A handler, not SIG_IGN: an ignored
        # signal would stay ignored in every hook it starts.
        signal.signal(sig, _ignore)
    ctl = socket.socket(fileno=fd)
    data = ctl.recv(CONTROL_MAX)
    if not data:
        return
    import json

    init = json.loads(data)
    logs.configure(init.get("log_level", "info"))
    spawner = Spawner(init)
    box = spawner.box
    ctl.send(json.dumps({"ready": os.getpid(), "dropped": box.dropped if box else "",
                         "reason": box.reason if box else ""}).encode())
    while True:
        try:
            data, fds, _flags, _addr = socket.recv_fds(ctl, CONTROL_MAX, 4)
        except OSError:
            data, fds = b"", []
        for conn_fd in fds:
            conn = socket.socket(fileno=conn_fd)
            threading.Thread(target=spawner.serve, args=(conn,), name="spawner-conn", daemon=True).start()
        if not data:  # the sidecar is gone: its watchdog ends every run, then removes the hooks' directory
            if spawner.guard is not None and spawner.private:
                spawner.guard.remove_at_end(spawner.private)
            os._exit(0)
        if not spawner.control(json.loads(data)):
            spawner.tracker.close()
            return


if __name__ == "__main__":
    main(int(sys.argv[1]))
