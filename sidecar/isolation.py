"""Hook isolation at start and on reload: the sidecar's /proc closed, leftovers of a crash ended,
the hooks' own HOME and TMPDIR made, the sandbox built and announced, all of it handed out as one
launcher (launcher.py). The mechanisms are procs.py's, sandbox.py's and landlock.py's."""

from __future__ import annotations

import atexit
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from . import forkserver, logs, procs, sandbox, watchdog
from .config import Config
from .launcher import Launcher

RUNS_SUBDIR = "runs"  # the run records, inside the spool directory (hidden from hooks with it)
PRIVATE_PREFIX = "webhook-sidecar-hooks-"


def _shared(cfg: Config) -> bool:
    return bool(cfg.spool_url_env or cfg.spool_url_file)


def hidden_state(cfg: Config, env_file: Path | None) -> list[str]:
    """What hooks must not reach: the embedded spool's directory, the env file and the secret files (the
    endpoints', the spool URL's, the TLS key)."""
    paths = [*cfg.secret_files]
    if not _shared(cfg):
        paths.append(str(cfg.spool_dir))
    if env_file is not None:
        paths.append(str(env_file))
    return [os.path.abspath(p) for p in paths]


def private_dir(state: Iterable[str]) -> Path | None:
    """A new directory for the hooks' HOME and TMPDIR (mode 0700, home/ and tmp/ in it), in the system's
    temp directory or the first other one that lies outside every state path; None if none can be made."""
    state = [os.path.realpath(s) for s in state]
    for base in dict.fromkeys((tempfile.gettempdir(), "/tmp", "/var/tmp", "/dev/shm")):
        real = os.path.realpath(base)
        if any(real == s or real.startswith(s.rstrip("/") + "/") for s in state):
            continue
        try:
            root = Path(tempfile.mkdtemp(prefix=PRIVATE_PREFIX, dir=base))  # 0700, ours alone
            for sub in ("home", "tmp"):
                (root / sub).mkdir(mode=0o700)
        except OSError:
            continue
        return root
    return None


def remove_private(root: Path) -> None:
    """Remove the hooks' directory, whatever modes the hooks left in it."""
    watchdog.remove_tree(str(root))


def start(cfg: Config, env_file: Path | None, sandboxed: bool = True) -> Launcher:
    """Call before any job can run: kills what a crashed sidecar's hooks left, then makes the launcher
    (a process tracker and watchdog, the sandbox, the hooks' own HOME and TMPDIR, the fork server when
    there is one) that every hook starts through.

    `sandboxed` False: --sandbox off (SIDECAR_SANDBOX=off, read by the CLI).
    """
    procs.harden()
    # Records live beside the embedded spool (hidden from hooks with it). A shared spool has no
    # directory of ours (a ConfigMap is read-only): then the run markers alone find leftovers.
    run_dir: Path | None = None if _shared(cfg) else cfg.spool_dir / RUNS_SUBDIR
    try:
        if run_dir is not None:
            run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as e:
        logs.warning("hooks.no_run_records", directory=str(run_dir), error=str(e),
                     detail="leftovers of a crash are still found by their marker, not those that clear their env")
        run_dir = None
    key = os.path.abspath(cfg.file)
    tracker = procs.Tracker(run_dir, key=key)
    for run in tracker.reap_leftovers():
        if not run.get("pids"):
            continue  # its processes were already gone: only the record was left
        logs.warning("hook.leftovers_killed", route=run.get("route"), delivery=run.get("delivery"),
                     pids=run.get("pids"), run=run.get("marker"),
                     detail="processes of a hook run of an earlier sidecar that did not stop cleanly")
    hidden = hidden_state(cfg, env_file)
    private = _private_dirs([*hidden, str(cfg.base_dir)])
    box = sandbox.create(hidden, cfg.base_dir, enabled=sandboxed, private=private or "")
    dirs = {"HOME": str(private / "home"), "TMPDIR": str(private / "tmp")} if private is not None else {}
    # Hooks start here: this process is their subreaper, and its watchdog ends them when it dies.
    procs.prctl(procs.PR_SET_CHILD_SUBREAPER, 1)
    tracker.subreaper = True
    guard = watchdog.start(tracker)  # before any hook runs: its hooks end with this sidecar, however it ends
    if guard is not None and private is not None:
        guard.remove_at_end(str(private))  # after a kill -9 too
    forks = _fork_server(tracker)
    _announce(cfg, box)
    return Launcher(tracker, box, dirs, guard, forks=forks)


def _fork_server(tracker: procs.Tracker) -> forkserver.ForkServer | None:
    """The fork server, when built and not turned off (SIDECAR_FORKSERVER): hooks start through it."""
    binary = forkserver.find()
    if binary is None:
        logs.info("hooks.forkserver", state="off", detail="hooks start through subprocess in this process"
                  " (build the fork server with `make native`, or SIDECAR_FORKSERVER=off turns it off)")
        return None
    server = forkserver.ForkServer(binary)
    server.spared = tracker.spared
    try:
        server.start()
    except OSError as e:
        logs.warning("hooks.forkserver", state="off", binary=binary, error=str(e),
                     detail="hooks start through subprocess in this process")
        return None
    logs.info("hooks.forkserver", state="on", binary=binary, pid=server.proc.pid if server.proc else None)
    return server


def _private_dirs(state: list[str]) -> Path | None:
    """Make the hooks' HOME and TMPDIR; removed at a clean exit, and by the watchdog after a kill -9."""
    private = private_dir(state)
    if private is None:
        logs.warning("hooks.no_private_home", detail="no temp directory outside the sidecar's state could be"
                     " made: hooks get the sidecar's HOME and no TMPDIR, and may write neither")
        return None
    atexit.register(remove_private, private)  # after a kill -9: by the watchdog (this sidecar's)
    return private


def _announce(cfg: Config, box: sandbox.Sandbox) -> None:
    """The start log: what hooks may do, what was narrowed, and every promise that does not hold here."""
    if box.active:
        logs.info("hooks.sandboxed", landlock_abi=box.level, hidden=list(box.hidden), writable=list(box.write),
                  readable="everything else, read and execute", network="unrestricted",
                  config_dir=str(cfg.base_dir) + " (read-only)", home=box.private or None,
                  scoped=list(box.scoped) or None, capabilities=box.dropped or None, **_route_options(cfg))
        if not box.scoped:
            logs.warning("hooks.unscoped", landlock_abi=box.level,
                         detail="Landlock ABI 6 (Linux 6.12) is needed to keep hooks from signalling the sidecar"
                                " (SIGSTOP, SIGKILL) and from its abstract unix sockets; this kernel has"
                                f" ABI {box.level}")
    else:
        logs.warning("hooks.unsandboxed", reason=box.reason, capabilities=box.dropped or None, home=box.private or None,
                     detail="hooks can read and write whatever the sidecar's user can: spool, .env, secrets")
    if box.enabled and os.geteuid() == 0 and "bounding set emptied" not in box.dropped:
        logs.warning("hooks.capabilities_kept", capabilities=box.dropped or None,
                     detail="the sidecar runs as root and hooks keep what the sidecar could not drop")
    _log_narrowed(box)
    for problem in box.exposed:
        logs.warning("hooks.state_exposed", problem=problem,
                     detail="Landlock can only grant: state inside a directory hooks may use cannot be hidden;"
                            " move it out (see docs/hooks.md)")
    _warn_route_grants(cfg, box)


def _log_narrowed(box: sandbox.Sandbox) -> None:
    if not box.active:
        return
    for path, why in box.narrowed:
        logs.warning("hooks.narrowed", path=path, reason=why,
                     detail=f"hooks may not write {path}; they get their own $TMPDIR and $HOME ({box.private}),"
                            " and a route's sandbox.write grants more")


def _warn_route_grants(cfg: Config, box: sandbox.Sandbox) -> None:
    """A route's own grant that covers hidden state opens it to that route's hooks: say so."""
    for ep in cfg.endpoints.values():
        for r in ep.routes:
            for problem in sandbox.exposed(box.hidden, r.sandbox_write, r.sandbox_read):
                logs.warning("hooks.state_exposed", route=r.name, problem=problem,
                             detail="granted by this route's sandbox option")


def reload_sandbox(launcher: Launcher, cfg: Config, env_file: Path | None) -> None:
    """A new table is live: the sandbox is walked and built again (secret files and the config directory's
    entries may have moved), and which routes leave the default sandbox is said again."""
    box = launcher.sandbox
    if box is None or not box.enabled:
        return
    narrowed = list(box.narrowed)
    hidden = hidden_state(cfg, env_file)
    if box.rebuild(hidden):
        logs.info("hooks.sandbox_rebuilt", hidden=list(box.hidden))
        for problem in box.exposed:
            logs.warning("hooks.state_exposed", problem=problem)
    if box.narrowed != narrowed:
        _log_narrowed(box)
    options = _route_options(cfg)
    if options:
        logs.info("hooks.sandbox_routes", **options)
        _warn_route_grants(cfg, box)


def _route_options(cfg: Config) -> dict[str, object]:
    """Routes that opt out of the sandbox or widen it (logged at start and on every reload)."""
    off, wider = [], {}
    for ep in cfg.endpoints.values():
        for r in ep.routes:
            if not r.sandbox:
                off.append(r.name)
            elif r.sandbox_read or r.sandbox_write:
                wider[r.name] = {"read": list(r.sandbox_read), "write": list(r.sandbox_write)}
    out: dict[str, object] = {}
    if off:
        out["unsandboxed_routes"] = off
    if wider:
        out["widened_routes"] = wider
    return out
