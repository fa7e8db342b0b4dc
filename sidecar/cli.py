"""Command line: flags (each with a SIDECAR_* twin) -> actions. The only place that exits."""

from __future__ import annotations

import argparse
import os
import socket
import sys
from pathlib import Path

from . import __version__, cli_explain, cli_sign, cli_spool, logs, procs
from . import config as config_mod
from .cli_env import env, env_file
from .errors import ConfigError
from .reload import WATCH_MODES
from .service import DEFAULT_GRACE_S, Service
from .spool import SpoolDamaged, SpoolUnreachable

EXIT_SPOOL_DAMAGED = 3


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="webhook-sidecar", description="Verify, route and run webhook deliveries.")
    p.add_argument("--version", action="version", version=f"webhook-sidecar {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    _serve_parser(sub)
    check = sub.add_parser("check", help="validate the config and print every error")
    config_flags(check)
    check.add_argument("--offline", action="store_true",
                       help="validate a config whose secrets, secret files, scripts and TLS files are elsewhere"
                            " (a chart's rendered ConfigMap): syntax, keys, types, providers, routes")
    cli_sign.add_parsers(sub)
    cli_spool.add_parser(sub)
    cli_explain.add_parser(sub, config_flags)
    return p


def config_flags(sp: argparse.ArgumentParser) -> None:
    """--config and --env-file, as `serve`, `check` and `explain` take them."""
    sp.add_argument("--config", default=env("CONFIG", "config.yaml"),
                    help="routing table (SIDECAR_CONFIG, default config.yaml)")
    sp.add_argument("--env-file", default=env("ENV_FILE"),
                    help="dotenv file with secrets (SIDECAR_ENV_FILE; default: .env beside the config)")


def _serve_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = sub.add_parser("serve", help="receive deliveries and run hooks")
    config_flags(serve)
    serve.add_argument("--listen", default=env("LISTEN"), help="host:port, overrides config (SIDECAR_LISTEN)")
    serve.add_argument("--log-level", default=env("LOG_LEVEL", "info"), choices=logs.LEVELS,
                       help="SIDECAR_LOG_LEVEL, default info")
    serve.add_argument("--watch", default=env("WATCH", "native"), choices=WATCH_MODES,
                       help="config reload: inotify (native), polling, or off; SIGHUP reloads in any mode"
                            " (SIDECAR_WATCH, default native)")
    serve.add_argument("--grace", type=float, default=float(env("GRACE", str(DEFAULT_GRACE_S)) or DEFAULT_GRACE_S),
                       help="seconds running hooks may finish after SIGTERM (SIDECAR_GRACE, default 25)")
    serve.add_argument("--replica", default=env("REPLICA") or socket.gethostname(),
                       help="this replica's name in a shared spool, given to hooks as WEBHOOK_REPLICA"
                            " (SIDECAR_REPLICA, default the hostname: the pod name)")
    serve.add_argument("--sandbox", default=env("SANDBOX", "on"), choices=("on", "off"),
                       help="Landlock sandbox for hooks, where the kernel has it (SIDECAR_SANDBOX, default on)")


def cmd_serve(args: argparse.Namespace) -> int:
    procs.few_arenas()  # before any thread starts
    logs.configure(args.log_level)
    try:
        service = Service(Path(args.config).absolute(), env_file(args.env_file, args.config), args.listen, args.grace,
                          args.watch, replica=args.replica, sandbox=args.sandbox == "on")
    except ConfigError as e:
        for line in e.errors:
            logs.error("config.invalid", detail=line)
        print(f"webhook-sidecar: {args.config} is invalid:\n  " + "\n  ".join(e.errors), file=sys.stderr)
        return 1
    except SpoolDamaged as e:
        logs.error("spool.damaged", spool=str(e.path), kept_as=str(e.aside), problems=e.problems[:5],
                   detail="the damaged file was set aside, not discarded; the next start creates an empty spool."
                          " Inspect it with `webhook-sidecar spool check` or sqlite3's .recover")
        print(f"webhook-sidecar: {e}", file=sys.stderr)
        return EXIT_SPOOL_DAMAGED
    except SpoolUnreachable as e:
        logs.error("spool.unreachable", detail=str(e))
        print(f"webhook-sidecar: {e}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as e:
        problem = _start_problem(e, args)
        logs.error("server.failed", error=str(e), detail=problem)
        print(f"webhook-sidecar: {problem}", file=sys.stderr)
        return 1
    service.install_signal_handlers()
    return service.run()


def _start_problem(e: OSError | ValueError, args: argparse.Namespace) -> str:
    """What failed at start, in words: a file the sidecar must write (the spool), else the listener."""
    filename = getattr(e, "filename", None)
    if not isinstance(e, OSError) or not filename:
        return f"cannot listen: {e}"
    where = os.path.abspath(os.fsdecode(filename))
    try:
        spool = os.path.abspath(config_mod.load(args.config, env_file(args.env_file, args.config)).spool_dir)
    except ConfigError:
        spool = ""
    if spool and (where == spool or where.startswith(spool + os.sep)):
        return (f"cannot write the spool at {spool} (spool_dir in {os.path.abspath(args.config)}): {e.strerror}."
                " Set spool_dir to a writable directory (in a container: a volume such as an emptyDir mounted"
                " there), or use spool_url_env for a shared PostgreSQL spool")
    return f"cannot write {where}: {e.strerror}"


def cmd_check(args: argparse.Namespace) -> int:
    try:
        dotenv = None if args.offline and not args.env_file else env_file(args.env_file, args.config)
        cfg = config_mod.load(args.config, dotenv, environ={} if args.offline else None, offline=args.offline)
    except ConfigError as e:
        print("\n".join(e.errors))
        print(f"{args.config}: {len(e.errors)} error(s)")
        return 1
    offline = "; offline: secrets, scripts and files not checked" if args.offline else ""
    print(f"{args.config}: ok ({len(cfg.endpoints)} endpoint(s), {cfg.route_count} route(s), hash {cfg.digest}"
          f"{offline})")
    for warning in cfg.warnings:
        print(warning)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    command = {"serve": cmd_serve, "check": cmd_check, "sign": cli_sign.cmd_sign, "send": cli_sign.cmd_send,
               "spool": cli_spool.run, "explain": cli_explain.run}[args.command]
    return command(args)
