"""Wire a loaded config, the HTTP server and the workers; stop cleanly on signals."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

from . import config as config_mod
from . import logs
from .reload import Reloader
from .server import SidecarServer
from .workers import Workers

DEFAULT_GRACE_S = 25.0


def parse_listen(listen: str) -> tuple[str, int]:
    """'host:port' or '[v6]:port' -> (host, port); ValueError when malformed."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"listen address must be host:port, got {listen!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


class Service:
    """One running sidecar: server thread plus workers, stopped by stop()."""

    def __init__(self, config_path: Path, env_file: Path | None, listen: str | None = None,
                 grace_s: float = DEFAULT_GRACE_S, watch: str = "native") -> None:
        self.config_path = config_path
        self.env_file = env_file
        self.grace_s = grace_s
        cfg = config_mod.load(config_path, env_file)
        self.workers = Workers(cfg.max_workers, cfg.max_queue)
        self.server = SidecarServer(parse_listen(listen or cfg.listen), cfg, self.workers)
        self.reloader = Reloader(cfg, env_file, self.server.swap, mode=watch)
        self._stopping = threading.Event()

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def run(self) -> int:
        """Serve until stop(); then let queued hooks finish within the grace period."""
        cfg = self.server.config
        for ep in cfg.endpoints.values():
            if not ep.provider.needs_secret:
                logs.warning("endpoint.unverified", endpoint=ep.path,
                             detail="provider 'none' accepts deliveries without any signature")
        host, port = self.server.server_address[:2]
        logs.info("server.listening", address=f"{host}:{port}", port=port, config=str(cfg.file),
                  config_hash=cfg.digest, endpoints=len(cfg.endpoints), routes=cfg.route_count,
                  watch=self.reloader.mode)
        self.reloader.start()
        self.server.serve_forever(poll_interval=0.2)
        self.reloader.stop()
        finished = self.workers.drain(self.grace_s)
        self.server.server_close()
        logs.info("server.stopped", drained=finished, pending=self.workers.depth)
        return 0

    def stop(self, reason: str = "stop") -> None:
        """Stop taking deliveries; safe to call from a signal handler, more than once."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        self.server.draining = True
        logs.info("server.draining", reason=reason, grace_s=self.grace_s)
        # shutdown() waits for serve_forever to return, so it must not run on
        # the thread that serves (the signal handler runs there).
        threading.Thread(target=self.server.shutdown, name="shutdown", daemon=True).start()

    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda signum, _frame: self.stop(signal.Signals(signum).name))
        signal.signal(signal.SIGHUP, lambda _signum, _frame: self.reloader.trigger())
