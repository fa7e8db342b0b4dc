"""`webhook-sidecar spool list|show|retry|replay|purge|check`: the spool's jobs, while the server runs or not."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from . import admin_replay, cli_env
from . import config as config_mod
from .errors import ConfigError, SidecarError
from .spool import JobRow, SpoolAdmin, SpoolUnreachable, histories
from .spool.sqlite import DB_NAME, Spool, integrity


class NoSpool(Exception):
    """There is no spool where the config (or --spool-dir) places it."""


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The `spool` command and its actions; their flags are accepted before and after the action."""
    spool = sub.add_parser("spool", help="inspect and re-run spooled jobs (works while the server runs)")
    _flags(spool)
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
    replay = spool_sub.add_parser("replay", help="run a delivery again under the config's routes (new jobs)")
    replay.add_argument("id", type=int, help="the delivery's spool id (`delivery_id` in `spool show`)")
    spool_check = spool_sub.add_parser("check", help="sqlite's integrity check of the spool file (exit 1 when damaged)")
    purge = spool_sub.add_parser("purge", help="delete finished jobs older than a duration")
    purge.add_argument("--older-than", required=True, type=_duration, help="e.g. 90s, 30m, 12h, 7d")
    purge.add_argument("--failed-too", action="store_true", help="also delete dead letters (default: done only)")
    for action in (listing, show, retry, replay, spool_check, purge):
        _flags(action, after=True)


def _flags(sp: argparse.ArgumentParser, after: bool = False) -> None:
    # Accepted before and after the action (`spool --config c.yaml list` and `spool list --config c.yaml`).
    # After it, SUPPRESS: an absent flag must not overwrite the value given before the action.
    defaults = dict.fromkeys(("CONFIG", "ENV_FILE", "SPOOL_DIR"), argparse.SUPPRESS) if after else {
        "CONFIG": cli_env.env("CONFIG", "config.yaml"), "ENV_FILE": cli_env.env("ENV_FILE"), "SPOOL_DIR": None}
    sp.add_argument("--config", default=defaults["CONFIG"], help="config whose spool_dir to use")
    sp.add_argument("--env-file", default=defaults["ENV_FILE"],
                    help="dotenv file with secrets (SIDECAR_ENV_FILE; default: .env beside the config)")
    sp.add_argument("--spool-dir", default=defaults["SPOOL_DIR"],
                    help="the spool directory, instead of the config's spool_dir")


def _duration(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        if text[-1:] in units:
            return float(text[:-1]) * units[text[-1]]
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (use e.g. 90s, 30m, 12h, 7d)") from None


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
    value = cli_env.from_env(where, cli_env.env_file(args.env_file, args.config))
    if not value:
        raise ConfigError([f"{args.config}: spool_url_env: {where} is not set in the environment or the env file"])
    return where, value


def _sqlite_file(args: argparse.Namespace) -> Path:
    directory = Path(args.spool_dir) if args.spool_dir else config_mod.spool_dir_of(args.config)
    if not (directory / DB_NAME).is_file():
        raise NoSpool(f"no spool at {directory / DB_NAME}")
    return directory / DB_NAME


@contextmanager
def opened(args: argparse.Namespace) -> Iterator[SpoolAdmin]:
    """The backend the config names: its shared PostgreSQL spool, else the sqlite file (the one choice)."""
    shared = _spool_url(args)
    if shared:
        from .spool.postgres import Store  # only for a shared spool: sqlite users never load the driver
        store = Store(shared[1], shared[0], "spool-cli", 30.0, pool_size=2, serving=False)
        store.open()  # the CLI does not wait for the database: it says why it cannot
        try:
            yield store
        finally:
            store.close()
        return
    spool = Spool(_sqlite_file(args).parent, serving=False)
    try:
        yield spool
    finally:
        spool.close()


def run(args: argparse.Namespace) -> int:
    """`spool ACTION`: 0 done, 1 an error or a job not found, 2 a misuse."""
    try:
        if args.spool_command == "check":
            return _check(args)
        with opened(args) as spool:
            return _action(args, spool)
    except ConfigError as e:
        print("\n".join(e.errors), file=sys.stderr)
        return 1
    except (NoSpool, SpoolUnreachable) as e:
        print(f"webhook-sidecar: {e}", file=sys.stderr)
        return 1


def _check(args: argparse.Namespace) -> int:
    if _spool_url(args):
        print("webhook-sidecar: `spool check` checks an sqlite file; the shared spool is PostgreSQL's to keep",
              file=sys.stderr)
        return 2
    file = _sqlite_file(args)
    problems = integrity(file)
    for problem in problems:
        print(f"{file}: {problem}")
    print(f"{file}: " + ("ok" if not problems else f"{len(problems)} problem(s)"))
    return 1 if problems else 0


def _action(args: argparse.Namespace, spool: SpoolAdmin) -> int:
    if args.spool_command == "list":
        return _list(args, spool)
    if args.spool_command == "show":
        row = spool.job(args.id)
        if row is None:
            print(f"webhook-sidecar: no job {args.id}", file=sys.stderr)
            return 1
        if args.payload:
            sys.stdout.buffer.write(spool.body(args.id))
            return 0
        print(json.dumps({**job_dict(row), "delivery_id": histories.of(spool).delivery_of_job(args.id),
                          "output_tail": row.output_tail}, indent=2))
        return 0
    if args.spool_command == "replay":
        return _replay(args, spool)
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


def _replay(args: argparse.Namespace, spool: SpoolAdmin) -> int:
    """New jobs for a stored delivery, for the routes of the config that take it now; a running
    sidecar picks them up (within a second with the embedded spool)."""
    config = config_mod.load(args.config, cli_env.env_file(args.env_file, args.config), offline=True)
    try:
        done = admin_replay.replay(histories.of(spool), config, args.id)
    except SidecarError as e:
        print(f"webhook-sidecar: {e}", file=sys.stderr)
        return 1
    print(f"replayed delivery {done.delivery.id} ({done.delivery.delivery}): jobs {', '.join(map(str, done.jobs))}"
          f" for routes {', '.join(done.routes)}")
    return 0


def _list(args: argparse.Namespace, spool: SpoolAdmin) -> int:
    states: tuple[str, ...] = ("failed",) if args.failed else ("pending",) if args.pending else (
        "pending", "done", "failed", "superseded")
    jobs = spool.jobs(states, limit=args.limit)
    if args.json:
        for job in jobs:
            print(json.dumps(job_dict(job)))
        return 0
    shared = not isinstance(spool, Spool)  # the shared spool shows the replica holding or that ran each job
    print(f"{'ID':>6}  {'STATE':8} {'TRY':>3}  {'UPDATED':20} {'ENDPOINT':16} {'ROUTE':16} {'EVENT':16} "
          + (f"{'REPLICA':20} " if shared else "") + "DELIVERY")
    for j in jobs:
        print(f"{j.id:>6}  {j.state:8} {j.attempts:>3}  {_when(j.updated_at):20} {_cut(j.endpoint, 16)} "
              f"{_cut(j.route.name, 16)} {_cut(j.event, 16)} "
              + (f"{_cut(j.replica or '-', 20)} " if shared else "") + j.delivery)
    return 0


def job_dict(job: JobRow) -> dict[str, object]:
    return {"id": job.id, "state": job.state, "attempts": job.attempts, "endpoint": job.endpoint,
            "route": job.route.name, "event": job.event, "delivery": job.delivery, "provider": job.provider,
            "received": _when(job.received_at), "updated": _when(job.updated_at),
            "next_attempt": _when(job.next_at) if job.state == "pending" and job.next_at else None,
            "outcome": job.outcome, "exit_code": job.exit_code, "request_id": job.request_id,
            "run": list(job.route.argv), **({"replica": job.replica} if job.replica else {})}


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def _cut(text: str, width: int) -> str:
    """`text` in a column of `width`, a cut one marked with '~' (the full value is in `--json`)."""
    return f"{text[:width - 1]}~" if len(text) > width else f"{text:{width}}"
