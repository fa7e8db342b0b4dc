"""Command line: flags (each with a SIDECAR_* twin) -> actions. The only place that exits."""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

from . import __version__, logs, procs
from . import config as config_mod
from .errors import ConfigError
from .providers import PROVIDERS, Signed
from .reload import WATCH_MODES
from .service import DEFAULT_GRACE_S, Service
from .spool import JobRow, SpoolAdmin, SpoolDamaged, SpoolUnreachable
from .spool.sqlite import DB_NAME, Spool, integrity

EXIT_SPOOL_DAMAGED = 3


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(f"SIDECAR_{name}", default)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="webhook-sidecar", description="Verify, route and run webhook deliveries.")
    p.add_argument("--version", action="version", version=f"webhook-sidecar {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    def config_flags(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--config", default=_env("CONFIG", "config.yaml"),
                        help="routing table (SIDECAR_CONFIG, default config.yaml)")
        sp.add_argument("--env-file", default=_env("ENV_FILE"),
                        help="dotenv file with secrets (SIDECAR_ENV_FILE; default: .env beside the config)")

    serve = sub.add_parser("serve", help="receive deliveries and run hooks")
    config_flags(serve)
    serve.add_argument("--listen", default=_env("LISTEN"), help="host:port, overrides config (SIDECAR_LISTEN)")
    serve.add_argument("--log-level", default=_env("LOG_LEVEL", "info"), choices=logs.LEVELS,
                       help="SIDECAR_LOG_LEVEL, default info")
    serve.add_argument("--watch", default=_env("WATCH", "native"), choices=WATCH_MODES,
                       help="config reload: inotify (native), polling, or off; SIGHUP reloads in any mode"
                            " (SIDECAR_WATCH, default native)")
    serve.add_argument("--grace", type=float, default=float(_env("GRACE", str(DEFAULT_GRACE_S)) or DEFAULT_GRACE_S),
                       help="seconds running hooks may finish after SIGTERM (SIDECAR_GRACE, default 25)")
    serve.add_argument("--replica", default=_env("REPLICA") or socket.gethostname(),
                       help="this replica's name in a shared spool, given to hooks as WEBHOOK_REPLICA"
                            " (SIDECAR_REPLICA, default the hostname: the pod name)")
    serve.add_argument("--sandbox", default=_env("SANDBOX", "on"), choices=("on", "off"),
                       help="Landlock sandbox for hooks, where the kernel has it (SIDECAR_SANDBOX, default on)")

    check = sub.add_parser("check", help="validate the config and print every error")
    config_flags(check)
    check.add_argument("--offline", action="store_true",
                       help="validate a config whose secrets, secret files, scripts and TLS files are elsewhere"
                            " (a chart's rendered ConfigMap): syntax, keys, types, providers, routes")

    def signing_flags(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--provider", required=True, choices=sorted(PROVIDERS))
        sp.add_argument("--secret-env", default="WEBHOOK_SECRET", help="variable holding the secret")
        sp.add_argument("--env-file", default=_env("ENV_FILE"), help="dotenv file to read the secret from")
        sp.add_argument("--event", default="", help="event type to put in the provider's header")
        sp.add_argument("--delivery", default="", help="delivery id (default: a new UUID)")
        sp.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="endpoint option of the provider, as in config.yaml (e.g. header=X-Signature)")
        sp.add_argument("--content-type", default="application/json",
                        help="body type (twilio and mailgun sign forms and JSON differently)")
        sp.add_argument("--private-key-env", default=_env("PRIVATE_KEY_ENV"),
                        help="discord: variable holding the Ed25519 private key (64 hex digits) to sign with"
                             " (SIDECAR_PRIVATE_KEY_ENV, default DISCORD_PRIVATE_KEY)")

    sign = sub.add_parser("sign", help="print the headers a sender would add to the body on stdin")
    signing_flags(sign)

    send = sub.add_parser("send", help="sign a payload file, POST it, print the response")
    send.add_argument("url")
    send.add_argument("payload", help="file with the body to send ('-' for stdin)")
    signing_flags(send)
    send.add_argument("-H", "--header", action="append", default=[], help="extra 'Name: value' header")
    def spool_flags(sp: argparse.ArgumentParser, after: bool = False) -> None:
        # Accepted before and after the action (`spool --config c.yaml list` and `spool list --config c.yaml`).
        # After it, SUPPRESS: an absent flag must not overwrite the value given before the action.
        defaults = dict.fromkeys(("CONFIG", "ENV_FILE", "SPOOL_DIR"), argparse.SUPPRESS) if after else {
            "CONFIG": _env("CONFIG", "config.yaml"), "ENV_FILE": _env("ENV_FILE"), "SPOOL_DIR": None}
        sp.add_argument("--config", default=defaults["CONFIG"], help="config whose spool_dir to use")
        sp.add_argument("--env-file", default=defaults["ENV_FILE"],
                        help="dotenv file with secrets (SIDECAR_ENV_FILE; default: .env beside the config)")
        sp.add_argument("--spool-dir", default=defaults["SPOOL_DIR"],
                        help="the spool directory, instead of the config's spool_dir")

    spool = sub.add_parser("spool", help="inspect and re-run spooled jobs (works while the server runs)")
    spool_flags(spool)
    spool_sub = spool.add_subparsers(dest="spool_command", required=True)
    listing = spool_sub.add_parser("list", help="jobs, newest last")
    listing.add_argument("--failed", action="store_true", help="only dead letters")
    listing.add_argument("--pending", action="store_true", help="only queued or retrying jobs")
    listing.add_argument("--limit", type=int, default=100)
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    show = spool_sub.add_parser("show", help="one job in full, with its output tail")
    show.add_argument("id", type=int)
    show.add_argument("--payload", action="store_true", help="print the delivery's body instead")
    retry = spool_sub.add_parser("retry", help="put dead letters back in the queue")
    retry.add_argument("ids", type=int, nargs="*")
    retry.add_argument("--all-failed", action="store_true")
    spool_check = spool_sub.add_parser("check", help="sqlite's integrity check of the spool file (exit 1 when damaged)")
    purge = spool_sub.add_parser("purge", help="delete finished jobs older than a duration")
    purge.add_argument("--older-than", required=True, type=_duration, help="e.g. 90s, 30m, 12h, 7d")
    purge.add_argument("--failed-too", action="store_true", help="also delete dead letters (default: done only)")
    for action in (listing, show, retry, spool_check, purge):
        spool_flags(action, after=True)
    return p


def _duration(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        if text[-1:] in units:
            return float(text[:-1]) * units[text[-1]]
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (use e.g. 90s, 30m, 12h, 7d)") from None


def _env_file(value: str | None, config: str | None = None) -> Path:
    """The env file: the one named (--env-file, SIDECAR_ENV_FILE), which must exist, else `.env` beside
    the config (like every other relative path of it), or in the working directory without a config.

    An explicit path, never find_dotenv(): an installed console script would search from its own
    location. The default may be missing (secrets may all be in the environment) and appear later."""
    if value:
        if not os.path.isfile(value):
            raise SystemExit(f"webhook-sidecar: env file {value} does not exist (--env-file / SIDECAR_ENV_FILE);"
                             " leave the option out to use .env beside the config when there is one")
        return Path(os.path.abspath(value))
    return Path(os.path.abspath(os.path.join(os.path.dirname(config) if config else "", ".env")))


def _from_env(name: str, env_file: Path) -> str | None:
    """A variable from the real environment first, then from the env file (read only if it exists)."""
    return os.environ.get(name) or config_mod.read_env_file(env_file).get(name)


def _secret(args: argparse.Namespace) -> bytes:
    cls = PROVIDERS[args.provider]
    if not cls.needs_secret:
        return b""
    # A provider whose endpoint holds a public key signs with a private key from its own variable.
    name = (args.private_key_env or cls.signing_key_env) if cls.signing_key_env else args.secret_env
    env_file = _env_file(args.env_file)
    value = _from_env(name, env_file)
    if not value:
        flag = "--private-key-env" if cls.signing_key_env else "--secret-env"
        raise SystemExit(f"webhook-sidecar: secret {name} is not set in the environment or in {env_file}:"
                         f" export it, put it in the env file (--env-file), or name another variable with {flag}")
    return value.encode()


def _provider_options(args: argparse.Namespace) -> dict[str, object]:
    """--option KEY=VALUE pairs, typed by the provider's own option table."""
    cls = PROVIDERS[args.provider]
    out: dict[str, object] = {}
    for item in args.option:
        key, sep, value = item.partition("=")
        if not sep or key not in cls.options:
            known = ", ".join(sorted(cls.options)) or "none"
            raise SystemExit(f"webhook-sidecar: --option {item!r}: expected KEY=VALUE with KEY one of: {known}")
        kind = cls.options[key].type
        out[key] = value.lower() in ("1", "true", "yes") if kind is bool else kind(value)
    return out


def _signed(args: argparse.Namespace, body: bytes, target: str = "/") -> Signed:
    """The request the provider's sender would make: target, headers and (for mailgun, linear) body."""
    try:
        provider = PROVIDERS[args.provider](**_provider_options(args))
        signed = provider.request(body, _secret(args), time.time(), event=args.event, delivery=args.delivery,
                                  target=target, content_type=args.content_type)
    except ValueError as e:
        raise SystemExit(f"webhook-sidecar: {e}") from e
    for note in signed.notes:
        print(f"webhook-sidecar: {note}", file=sys.stderr)
    return signed


def cmd_serve(args: argparse.Namespace) -> int:
    procs.few_arenas()  # before any thread starts
    logs.configure(args.log_level)
    try:
        service = Service(Path(args.config).absolute(), _env_file(args.env_file, args.config), args.listen, args.grace,
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
        spool = os.path.abspath(config_mod.load(args.config, _env_file(args.env_file, args.config)).spool_dir)
    except ConfigError:
        spool = ""
    if spool and (where == spool or where.startswith(spool + os.sep)):
        return (f"cannot write the spool at {spool} (spool_dir in {os.path.abspath(args.config)}): {e.strerror}."
                " Set spool_dir to a writable directory (in a container: a volume such as an emptyDir mounted"
                " there), or use spool_url_env for a shared PostgreSQL spool")
    return f"cannot write {where}: {e.strerror}"


def cmd_check(args: argparse.Namespace) -> int:
    try:
        env_file = None if args.offline and not args.env_file else _env_file(args.env_file, args.config)
        cfg = config_mod.load(args.config, env_file, environ={} if args.offline else None, offline=args.offline)
    except ConfigError as e:
        print("\n".join(e.errors))
        print(f"{args.config}: {len(e.errors)} error(s)")
        return 1
    offline = "; offline: secrets, scripts and files not checked" if args.offline else ""
    print(f"{args.config}: ok ({len(cfg.endpoints)} endpoint(s), {cfg.route_count} route(s), hash {cfg.digest}"
          f"{offline})")
    return 0


def cmd_sign(args: argparse.Namespace) -> int:
    body = sys.stdin.buffer.read()
    signed = _signed(args, body)
    for name, value in signed.headers.items():
        print(f"{name}: {value}")
    if signed.body != body:  # the signature lives in the body: print it after a blank line, as HTTP does
        sys.stdout.write("\n")
        sys.stdout.flush()
        sys.stdout.buffer.write(signed.body)
    return 0


def cmd_send(args: argparse.Namespace) -> int:
    body = sys.stdin.buffer.read() if args.payload == "-" else Path(args.payload).read_bytes()
    url = urlsplit(args.url)
    signed = _signed(args, body, (url.path or "/") + (f"?{url.query}" if url.query else ""))
    body = signed.body
    headers = {"Content-Type": args.content_type, **signed.headers}
    for extra in args.header:
        name, _, value = extra.partition(":")
        headers[name.strip()] = value.strip()
    conn_cls = http.client.HTTPSConnection if url.scheme == "https" else http.client.HTTPConnection
    conn = conn_cls(url.hostname or "127.0.0.1", url.port, timeout=30)
    try:
        conn.request("POST", signed.target, body=body, headers=headers)
        resp = conn.getresponse()
        text = resp.read().decode("utf-8", "replace")
    except OSError as e:
        print(f"webhook-sidecar: cannot send to {args.url}: {e}", file=sys.stderr)
        return 1
    finally:
        conn.close()
    print(f"{resp.status} {resp.reason}")
    print(text)
    return 0 if 200 <= resp.status < 300 else 1


def _job_dict(job: JobRow) -> dict[str, object]:
    return {"id": job.id, "state": job.state, "attempts": job.attempts, "endpoint": job.endpoint,
            "route": job.route.name, "event": job.event, "delivery": job.delivery, "provider": job.provider,
            "received": _when(job.received_at), "updated": _when(job.updated_at),
            "next_attempt": _when(job.next_at) if job.state == "pending" and job.next_at else None,
            "outcome": job.outcome, "exit_code": job.exit_code, "request_id": job.request_id,
            "run": list(job.route.argv), **({"replica": job.replica} if job.replica else {})}


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def _spool_url(args: argparse.Namespace) -> tuple[str, str] | None:
    """(where the URL is, the URL) when the config names a shared spool (`spool_url_env` or
    `spool_url_file`) and no --spool-dir is given."""
    if args.spool_dir:
        return None
    source = config_mod.spool_source_of(args.config)
    if source is None:
        return None
    key, where = source
    if key == "spool_url_file":
        try:
            url = config_mod.read_spool_url_file(where)
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError([f"{args.config}: spool_url_file: cannot read {where}: {e}"]) from e
        if not url:
            raise ConfigError([f"{args.config}: spool_url_file: {where} is empty"])
        return f"spool_url_file {where}", url
    value = _from_env(where, _env_file(args.env_file, args.config))
    if not value:
        raise ConfigError([f"{args.config}: spool_url_env: {where} is not set in the environment or the env file"])
    return where, value


def _shared_spool(args: argparse.Namespace, name: str, url: str) -> int:
    from .spool.postgres import Store  # only for a shared spool: sqlite users never load the driver
    if args.spool_command == "check":
        print("webhook-sidecar: `spool check` checks an sqlite file; the shared spool is PostgreSQL's to keep",
              file=sys.stderr)
        return 2
    try:
        store = Store(url, name, "spool-cli", 30.0, pool_size=2, serving=False)
        store.open()  # the CLI does not wait for the database: it says why it cannot
    except SpoolUnreachable as e:
        print(f"webhook-sidecar: {e}", file=sys.stderr)
        return 1
    try:
        return _spool_action(args, store)
    finally:
        store.close()


def cmd_spool(args: argparse.Namespace) -> int:
    try:
        shared = _spool_url(args)
        if shared:
            return _shared_spool(args, *shared)
        directory = Path(args.spool_dir) if args.spool_dir else config_mod.spool_dir_of(args.config)
    except ConfigError as e:
        print("\n".join(e.errors), file=sys.stderr)
        return 1
    if not (directory / DB_NAME).is_file():
        print(f"webhook-sidecar: no spool at {directory / DB_NAME}", file=sys.stderr)
        return 1
    if args.spool_command == "check":
        problems = integrity(directory / DB_NAME)
        for problem in problems:
            print(f"{directory / DB_NAME}: {problem}")
        print(f"{directory / DB_NAME}: " + ("ok" if not problems else f"{len(problems)} problem(s)"))
        return 1 if problems else 0
    spool = Spool(directory, serving=False)
    try:
        return _spool_action(args, spool)
    finally:
        spool.close()


def _spool_action(args: argparse.Namespace, spool: SpoolAdmin) -> int:
    if args.spool_command == "list":
        states: tuple[str, ...] = ("failed",) if args.failed else ("pending",) if args.pending else (
            "pending", "done", "failed")
        jobs = spool.jobs(states, limit=args.limit)
        if args.json:
            for job in jobs:
                print(json.dumps(_job_dict(job)))
            return 0
        shared = not isinstance(spool, Spool)  # the shared spool shows the replica holding or that ran each job
        print(f"{'ID':>6}  {'STATE':8} {'TRY':>3}  {'UPDATED':20} {'ENDPOINT':16} {'ROUTE':16} {'EVENT':16} "
              + (f"{'REPLICA':20} " if shared else "") + "DELIVERY")
        for j in jobs:
            print(f"{j.id:>6}  {j.state:8} {j.attempts:>3}  {_when(j.updated_at):20} {_cut(j.endpoint, 16)} "
                  f"{_cut(j.route.name, 16)} {_cut(j.event, 16)} "
                  + (f"{_cut(j.replica or '-', 20)} " if shared else "") + j.delivery)
        return 0
    if args.spool_command == "show":
        row = spool.job(args.id)
        if row is None:
            print(f"webhook-sidecar: no job {args.id}", file=sys.stderr)
            return 1
        if args.payload:
            sys.stdout.buffer.write(spool.body(args.id))
            return 0
        print(json.dumps({**_job_dict(row), "output_tail": row.output_tail}, indent=2))
        return 0
    if args.spool_command == "retry":
        if not args.ids and not args.all_failed:
            print("webhook-sidecar: give job ids or --all-failed", file=sys.stderr)
            return 2
        requeued = spool.retry(None if args.all_failed else args.ids)
        missing = sorted(set(args.ids) - set(requeued))
        print(f"requeued {len(requeued)} job(s)" + (f"; not dead letters: {missing}" if missing else ""))
        return 1 if missing else 0
    states = ("done", "failed") if args.failed_too else ("done",)
    print(f"purged {spool.purge(args.older_than, states)} job(s)")
    return 0


def _cut(text: str, width: int) -> str:
    """`text` in a column of `width`, a cut one marked with '~' (the full value is in `--json`)."""
    return f"{text[:width - 1]}~" if len(text) > width else f"{text:{width}}"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    command = {"serve": cmd_serve, "check": cmd_check, "sign": cmd_sign, "send": cmd_send,
               "spool": cmd_spool}[args.command]
    return command(args)
