"""Hot reload: watch the config's directory, debounce, hash, validate, swap atomically.

Watch the directory, not the file: editors replace the file by rename, and a
Kubernetes ConfigMap volume never edits a file at all (config.yaml is a symlink
to ..data/config.yaml, and an update renames a new ..data symlink over the old
one). A hash of what the files hold decides whether anything changed, so
touches and the kubelet's periodic resyncs cost one read and no reload.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver

from . import config as config_mod
from . import logs, metrics
from .config import Config
from .errors import ConfigError
from .live import Live

WATCH_MODES = ("native", "poll", "off")
DEBOUNCE_S = 0.15
POLL_INTERVAL_S = 0.5
# With inotify the loop still re-hashes now and then: events can be lost (inotify
# limits on busy nodes, a watch on a directory that was replaced).
RESYNC_INTERVAL_S = 30.0
# A rejected table is loaded again this often (and at every event): what made it invalid may be a
# hook script created or made executable later, which no watched file's content shows.
REJECTED_RETRY_S = 1.0
# What can only change with a restart: the listening socket and what was built
# from these at start.
RESTART_KEYS = ("listen", "spool_dir", "spool_url_env", "spool_url", "spool_max_bytes", "lease_s", "max_workers",
                "max_queue", "admin_listen")

# Only events that end a change. Our own reads raise opened/closed-no-write events,
# and "modified" fires on every write() to any file in the directory (a log file
# beside config.yaml made each request 30 % dearer): an in-place edit is seen
# when the writer closes the file, a rename or the ConfigMap swap as a move.
CHANGE_EVENTS: list[type[FileSystemEvent]] = [
    FileCreatedEvent, FileMovedEvent, FileDeletedEvent, FileClosedEvent,
    DirCreatedEvent, DirMovedEvent, DirDeletedEvent,
]


def warn_unverified(config: Config) -> None:
    """`provider: none` (or `cloudevents` with `unauthenticated: true`) is an explicit choice, warned about
    at start and on every reload; so are the table's `check` warnings (patterns written as plain strings)."""
    for ep in config.endpoints.values():
        if not ep.provider.secret_needed(ep.provider.opts):
            logs.warning("endpoint.unverified", endpoint=ep.path,
                         detail=f"provider {ep.provider.name!r} accepts deliveries without any signature")
    for warning in config.warnings:
        logs.warning("config.warning", config=str(config.file), detail=str(warning))


def announce(old: Config, new: Config) -> None:
    """The live table's "warnings" stage: a new table is in use; what needs a restart; what is unverified."""
    metrics.CONFIG_RELOADS.labels("reloaded").inc()
    metrics.LAST_RELOAD.set_to_current_time()
    logs.info("config.reloaded", config=str(new.file), config_hash=new.digest,
              previous_hash=old.digest, endpoints=len(new.endpoints), routes=new.route_count)
    changed = [k for k in RESTART_KEYS if getattr(old, k) != getattr(new, k)]
    if changed:
        logs.warning("config.restart_needed", keys=changed,
                     detail="these settings keep their old values until the process restarts")
    warn_unverified(new)


def _fingerprint(paths: list[Path]) -> str:
    """A hash of what the files hold (through symlinks), missing files included."""
    h = hashlib.sha256()
    for path in paths:
        try:
            h.update(path.read_bytes())
        except OSError as e:
            h.update(f"<{type(e).__name__}>".encode())
        h.update(b"\0")
    return h.hexdigest()


class _Kick(FileSystemEventHandler):
    """Wake the reload loop when a name that matters shows up in an event."""

    def __init__(self, names: set[str], kick: threading.Event) -> None:
        self.names = names
        self.kick = kick

    def on_any_event(self, event: FileSystemEvent) -> None:
        for raw in (event.src_path, getattr(event, "dest_path", "")):
            name = os.path.basename(os.fsdecode(raw)) if raw else ""
            # ..data, ..data_tmp and ..<timestamp> are the ConfigMap swap.
            if name in self.names or name.startswith(".."):
                self.kick.set()
                return


class Reloader:
    """Watches and validates: swaps the newest valid Config into `live`; the last good one stays on errors."""

    def __init__(self, live: Live, env_file: Path | None, mode: str = "native",
                 debounce_s: float = DEBOUNCE_S) -> None:
        if mode not in WATCH_MODES:
            raise ValueError(f"watch mode must be one of {', '.join(WATCH_MODES)}, got {mode!r}")
        self.live = live
        self.file = live.current.file  # loaded again on every change; the same path for the process's life
        self.env_file = env_file
        self.mode = mode
        self.debounce_s = debounce_s
        self.paths = self._watched(live.current)
        self._kicks: dict[str, _Kick] = {}  # watched directory -> its handler
        self.last_fingerprint = _fingerprint(self.paths)
        self.last_result = "loaded"
        self._rejected: list[str] = []  # the errors of the last rejection, logged once
        metrics.LAST_RELOAD.set_to_current_time()  # the table loaded at start
        self._force = False
        self._kick = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._observer: BaseObserver | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start watching; in every mode, including off, trigger() (SIGHUP) reloads."""
        if self.mode == "native":
            observer = Observer()
            self._observer = observer
            self._watch_dirs()
            observer.daemon = True
            observer.start()
        self._thread = threading.Thread(target=self._loop, name="reload", daemon=True)
        self._thread.start()
        # The file may have changed between load and the watch being in place.
        self._kick.set()

    def _watched(self, cfg: Config) -> list[Path]:
        """config.yaml, the env file and the secret files: a change to any of them is a reload. Not the TLS
        key: tls.Certificates follows the certificate pair itself, and a renewal is no change of the table."""
        key = cfg.tls.key_file if cfg.tls else None
        files = [Path(f) for f in cfg.secret_files if f != key]
        return [cfg.file] + ([self.env_file] if self.env_file else []) + files

    def _watch_dirs(self) -> None:
        """Watch the directory of every watched file (a secret file's may be new after a reload)."""
        if self._observer is None:
            return
        for path in self.paths:
            directory = os.path.abspath(path.parent)
            if directory in self._kicks:
                self._kicks[directory].names.add(path.name)
                continue
            self._kicks[directory] = _Kick({path.name}, self._kick)
            try:
                self._observer.schedule(self._kicks[directory], directory, recursive=False,
                                        event_filter=CHANGE_EVENTS)
            except OSError as e:  # the 30 s resync still sees it
                logs.warning("config.watch_failed", directory=directory, error=str(e))

    def stop(self) -> None:
        self._stop.set()
        self._kick.set()
        if self._observer is not None:
            self._observer.stop()

    def trigger(self) -> None:
        """Reload now even if nothing seems to have changed (SIGHUP does this)."""
        self._force = True
        self._kick.set()

    def _loop(self) -> None:
        interval = {"poll": POLL_INTERVAL_S, "native": RESYNC_INTERVAL_S}.get(self.mode)
        while not self._stop.is_set():
            rejected = interval is not None and self.last_result == "rejected"
            kicked = self._kick.wait(min(interval, REJECTED_RETRY_S) if rejected and interval else interval)
            if self._stop.is_set():
                return
            if kicked:
                # Debounce: one update is a burst of events; wait for quiet.
                while True:
                    self._kick.clear()
                    if not self._kick.wait(self.debounce_s):
                        break
            # A rejected table may become valid without a change to config.yaml (a missing hook
            # script appears, or is made executable): while rejected, every turn loads it again.
            force, self._force = self._force, False
            try:
                self.check(force=force or (interval is not None and self.last_result == "rejected"))
            except Exception:  # never let the watcher die; the next event retries
                logs.error("config.reload_failed", exc_info=True)

    def check(self, force: bool = False) -> str:
        """Reload when the watched files' content changed; 'unchanged', 'reloaded' or 'rejected'."""
        with self._lock:
            fingerprint = _fingerprint(self.paths)
            if fingerprint == self.last_fingerprint and not force:
                return "unchanged"
            self.last_fingerprint = fingerprint
            try:
                new = config_mod.load(self.file, self.env_file)
            except ConfigError as e:
                again = self.last_result == "rejected" and e.errors == self._rejected
                self.last_result, self._rejected = "rejected", e.errors
                if again:
                    return "rejected"  # the same errors as a second ago: said once
                metrics.CONFIG_RELOADS.labels("rejected").inc()
                retried = ("loaded again every second and at every change of config.yaml, the env file"
                           " and the secret files" if self.mode != "off" else "loaded again at the next SIGHUP")
                logs.error("config.rejected", config=str(self.file), errors=e.errors,
                           config_hash=self.live.current.digest,
                           detail=f"still serving the last good table; {retried}")
                return "rejected"
            self.last_result = "loaded"
            if new.digest == self.live.current.digest:
                return "unchanged"
            if (paths := self._watched(new)) != self.paths:  # secret files added or moved
                self.paths = paths
                self.last_fingerprint = _fingerprint(paths)
                self._watch_dirs()  # before the swap announces it: a change right after is seen
            self.live.swap(new)  # only this thread swaps, under self._lock
            return "reloaded"
