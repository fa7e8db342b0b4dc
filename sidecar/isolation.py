"""Hook isolation at start and on reload: the sidecar's /proc closed, leftovers of a crash ended,
the Landlock sandbox built and announced. The mechanisms are procs.py's and sandbox.py's."""

from __future__ import annotations

import os
from pathlib import Path

from . import logs, procs, sandbox, watchdog
from .config import Config

RUNS_SUBDIR = "runs"  # the run records, inside the spool directory (hidden from hooks with it)


def hidden_state(cfg: Config, env_file: Path | None) -> list[str]:
    """What hooks must not reach: the spool directory, the env file and the secret files."""
    paths = [str(cfg.spool_dir), *cfg.secret_files]
    if env_file is not None:
        paths.append(str(env_file))
    return [os.path.abspath(p) for p in paths]


def start(cfg: Config, env_file: Path | None, sandboxed: bool | None = None) -> sandbox.Sandbox:
    """Call before any job can run: kills what a crashed sidecar's hooks left, then installs
    the process tracker and the sandbox that runner.run uses by default.

    `sandboxed` None: on unless SIDECAR_SANDBOX=off.
    """
    if sandboxed is None:
        sandboxed = os.environ.get("SIDECAR_SANDBOX", "on").lower() not in ("off", "0", "false", "no")
    procs.harden()
    # Records live beside the embedded spool (hidden from hooks with it). A shared spool has no
    # directory of ours (a ConfigMap is read-only): then the run markers alone find leftovers.
    run_dir: Path | None = cfg.spool_dir / RUNS_SUBDIR if getattr(cfg, "spool_url_env", None) is None else None
    try:
        if run_dir is not None:
            run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as e:
        logs.warning("hooks.no_run_records", directory=str(run_dir), error=str(e),
                     detail="leftovers of a crash are still found by their marker, not those that clear their env")
        run_dir = None
    tracker = procs.Tracker(run_dir, subreaper=True, key=os.path.abspath(cfg.file))
    for run in tracker.reap_leftovers():
        if not run.get("pids"):
            continue  # its processes were already gone: only the record was left
        logs.warning("hook.leftovers_killed", route=run.get("route"), delivery=run.get("delivery"),
                     pids=run.get("pids"), run=run.get("marker"),
                     detail="processes of a hook run of an earlier sidecar that did not stop cleanly")
    procs.install(tracker)
    watchdog.start(tracker)  # before any hook runs: its hooks end with this sidecar, however it ends
    box = sandbox.create(hidden_state(cfg, env_file), cfg.base_dir, enabled=sandboxed)
    box.set_table(cfg.endpoints)
    sandbox.install(box)
    if box.active:
        logs.info("hooks.sandboxed", landlock_abi=box.level, hidden=list(box.hidden), writable=list(box.write),
                  readable="everything else, read and execute", network="unrestricted",
                  config_dir=str(cfg.base_dir) + " (read-only)", **_route_options(cfg))
    else:
        logs.warning("hooks.unsandboxed", reason=box.reason,
                     detail="hooks can read and write whatever the sidecar's user can: spool, .env, secrets")
    for problem in box.exposed:
        logs.warning("hooks.state_exposed", problem=problem,
                     detail="Landlock can only grant: state inside a directory hooks may use cannot be hidden;"
                            " move it out (see README, Hooks)")
    _warn_route_grants(cfg, box)
    return box


def _warn_route_grants(cfg: Config, box: sandbox.Sandbox) -> None:
    """A route's own grant that covers hidden state opens it to that route's hooks: say so."""
    for ep in cfg.endpoints.values():
        for r in ep.routes:
            for problem in sandbox.exposed(box.hidden, r.sandbox_write, r.sandbox_read):
                logs.warning("hooks.state_exposed", route=r.name, problem=problem,
                             detail="granted by this route's sandbox option")


def reload(cfg: Config, env_file: Path | None) -> None:
    """A new table is live: hide its secret files too, and say which routes leave the default sandbox."""
    box = sandbox.installed()
    if box is None or not box.active:
        return
    box.set_table(cfg.endpoints)
    if box.refresh(hidden_state(cfg, env_file)):
        logs.info("hooks.sandbox_rebuilt", hidden=list(box.hidden))
        for problem in box.exposed:
            logs.warning("hooks.state_exposed", problem=problem)
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
