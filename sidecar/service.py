"""Wire a loaded config, the HTTP server and the workers; stop cleanly on signals."""

from __future__ import annotations

import signal
import socket
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from . import attempts, isolation, logs, metrics
from . import config as config_mod
from .admin import AdminServer
from .jobs import QueuePolicy
from .launcher import Launcher
from .live import Live
from .queue_local import LocalQueue
from .reload import Reloader, announce, warn_unverified
from .scheduler import Executor
from .server import SidecarServer
from .spool import Scheduler
from .spool.sqlite import Spool

if TYPE_CHECKING:
    from collections.abc import Callable

DEFAULT_GRACE_S = 25.0


def parse_listen(listen: str) -> tuple[str, int]:
    """'host:port' or '[v6]:port' -> (host, port); ValueError when malformed."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"listen address must be host:port, got {listen!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def _local(cfg: config_mod.Config, config: Callable[[], config_mod.Config]) -> QueuePolicy:
    spool = Spool(cfg.spool_dir, cfg.spool_max_bytes, reserve_bytes=2 * cfg.max_body_bytes + 65536,
                  keep_bodies_s=cfg.keep_bodies_s)
    return LocalQueue(spool, cfg.max_queue, config)


def _leased(cfg: config_mod.Config, config: Callable[[], config_mod.Config], replica: str) -> QueuePolicy:
    # Imported here: sqlite users never load the database driver (idle memory).
    from .queue_leased import LeasedQueue
    from .spool.postgres import Store
    # Named in messages by where the URL comes from, never by its value.
    source = cfg.spool_url_env or f"spool_url_file {cfg.spool_url_file}"
    store = Store(cfg.spool_url or "", source, replica, cfg.lease_s, pool_size=cfg.max_workers + 16)
    store.keep_bodies_s = cfg.keep_bodies_s
    # Serves at once, the database reachable or not: unready (POSTs 503) until it can be used.
    return LeasedQueue(store, cfg.max_queue, config, max_bytes=cfg.spool_max_bytes)


def open_workers(cfg: config_mod.Config, config: Callable[[], config_mod.Config],
                 known: attempts.KnownRoutes, replica: str, launcher: Launcher) -> Scheduler:
    """The one scheduler over the queue the config names: the embedded file, or shared PostgreSQL.
    A backend is a store and its policy: one more is one more line here."""
    policy = _leased(cfg, config, replica) if cfg.spool_url else _local(cfg, config)
    return Executor(policy, cfg.max_workers, cfg.max_queue, config, known, replica, launcher=launcher)


class Service:
    """One running sidecar: server thread plus workers, stopped by stop()."""

    def __init__(self, config_path: Path, env_file: Path | None, listen: str | None = None,
                 grace_s: float = DEFAULT_GRACE_S, watch: str = "native", replica: str = "",
                 sandbox: bool | None = None) -> None:
        self.grace_s = grace_s
        cfg = config_mod.load(config_path, env_file)
        # Before the workers exist: what a crashed sidecar's hooks left is ended before any job runs.
        self.launcher = isolation.start(cfg, env_file, sandbox is not False)
        # Every table this process loads: the only routes a spooled job may run as stored.
        self.known = attempts.routes_of([cfg])
        # The one owner of the table in use; a swap fans out in a fixed order (see live.py).
        self.live = live = Live(cfg)
        live.subscribe("routes", lambda _old, new: self.known.add(new))
        live.subscribe("sandbox", lambda _old, new: isolation.reload_sandbox(self.launcher, new, env_file))
        live.subscribe("warnings", announce)
        self.replica = replica or socket.gethostname()
        self.workers = open_workers(cfg, lambda: live.current, self.known, self.replica, self.launcher)
        self.server = SidecarServer(parse_listen(listen or cfg.listen), live, self.workers)  # its "limits"
        # /metrics and /admin/* on a second listener when configured (a change of `admin` needs a restart).
        self.admin = AdminServer(parse_listen(cfg.admin.listen), live, self.workers) if cfg.admin else None
        self.server.metrics_here = self.admin is None
        metrics.track_ready(lambda: self.server.is_ready[0])
        self.reloader = Reloader(live, env_file, mode=watch)
        self._stopping = threading.Event()
        self._drained = False

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def run(self) -> int:
        """Serve until stop(); running hooks get the grace period, queued ones stay spooled."""
        cfg = self.live.current
        warn_unverified(cfg)
        # Watch before announcing: a change made right after "listening" must not be missed.
        self.reloader.start()
        if self.admin is not None:
            host, port = self.admin.socket.getsockname()[:2]
            threading.Thread(target=self.admin.serve_forever, kwargs={"poll_interval": 0.2}, name="admin",
                             daemon=True).start()
            logs.info("admin.listening", address=f"{host}:{port}", port=port,
                      token="token_env" if cfg.admin and cfg.admin.token_env else "token_file")
        host, port = self.server.socket.getsockname()[:2]
        logs.info("server.listening", address=f"{host}:{port}", port=port, config=str(cfg.file),
                  config_hash=cfg.digest, endpoints=len(cfg.endpoints), routes=cfg.route_count,
                  watch=self.reloader.mode, spool=self.workers.spool.location, pending=self.workers.depth)
        self.server.serve_forever(poll_interval=0.2)
        self.reloader.stop()
        if self.admin is not None:
            self.admin.shutdown()
            self.admin.server_close()
        self.server.server_close()
        self.workers.close()
        self.launcher.close()  # every run has ended: no journal left to recover from
        logs.info("server.stopped", drained=self._drained, pending=self.workers.depth)
        return 0

    def stop(self, reason: str = "stop") -> None:
        """Drain and stop; safe to call from a signal handler, more than once.

        While draining, the server keeps answering: /readyz and new POSTs get 503,
        so senders retry elsewhere or later. Running hooks get the grace period,
        then are interrupted; they and all queued jobs stay in the spool.
        """
        if self._stopping.is_set():
            return
        self._stopping.set()
        self.server.draining = True
        if self.admin is not None:
            self.admin.draining = True  # its /readyz too
        logs.info("server.draining", reason=reason, grace_s=self.grace_s, running=self.workers.running,
                  pending=self.workers.depth)
        # Not on this thread: a signal handler runs on the serving thread, and
        # shutdown() waits for serve_forever to return.
        threading.Thread(target=self._drain_then_shutdown, name="drain", daemon=True).start()

    def _drain_then_shutdown(self) -> None:
        self._drained = self.workers.stop(self.grace_s)
        self.server.shutdown()

    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda signum, _frame: self.stop(signal.Signals(signum).name))
        signal.signal(signal.SIGHUP, lambda _signum, _frame: self.reloader.trigger())
