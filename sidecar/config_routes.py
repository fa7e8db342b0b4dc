"""An endpoint's routes: which event runs which command, with what limits, environment and sandbox."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import config_context, config_forward, config_reply, lanes
from .conditions import Rule, compile_rule
from .config_sandbox import State, sandbox
from .config_secrets import ENV_NAME
from .forward import Target
from .replies import ReplySpec
from .yamldoc import Doc, Path_, _describe

DEFAULT_TIMEOUT_S = 60.0
DEFAULT_RETRIES = 3
ROUTE_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
ROUTE_KEYS = {"name", "event", "if", "any", "run", "timeout_s", "concurrency", "retries", "env", "sandbox", "broadcast",
              "env_from", "forward", "lane", "reply"}


@dataclass(frozen=True)
class Route:
    """One row of the routing table: which event runs which command."""

    name: str
    event: str
    when: tuple[tuple[str, Any], ...]
    argv: tuple[str, ...]
    timeout_s: float = DEFAULT_TIMEOUT_S
    concurrency: int | None = None
    retries: int = DEFAULT_RETRIES
    env: tuple[tuple[str, str], ...] = ()
    # Landlock for this route's hooks (sandbox.py): off, or the default plus these paths.
    sandbox: bool = True
    sandbox_read: tuple[str, ...] = ()
    sandbox_write: tuple[str, ...] = ()
    broadcast: bool = False  # with a shared spool: once on every live replica
    # event, `if` and `any` compiled (conditions.py); None for a route built in code: `event` and `when`.
    rule: Rule | None = None
    env_from: tuple[tuple[str, str], ...] = ()  # (VAR, payload path): read at acceptance, stored
    forward: Target | None = None  # instead of argv: POST the delivery here (config_forward.py)
    lane: lanes.Lane | None = None  # one job per key's value at a time; latest/debounce coalesce (lanes.py)
    reply: ReplySpec | None = None  # its first run's stdout answers the sender (replies.py)


def route(doc: Doc, path: Path_, raw: Any, base: Path, index: int, state: State = (),
          secrets: tuple[Mapping[str, str], Mapping[str, str]] = ({}, {})) -> Route | None:
    """One entry of an endpoint's `routes`; None when it cannot run (its errors are in `doc`)."""
    if not isinstance(raw, dict):
        doc.error(path, f"a route must be a mapping, got {_describe(raw)}")
        return None
    doc.unknown_keys(raw, path, ROUTE_KEYS)
    rule = compile_rule(doc, path, raw)
    when = raw.get("if") if isinstance(raw.get("if"), dict) else {}
    timeout_s = doc.get(raw, path, "timeout_s", float, DEFAULT_TIMEOUT_S, minimum=0.001)
    target = config_forward.forward(doc, path, raw, base, timeout_s, secrets)
    if "forward" in raw and "run" in raw:
        doc.error(path + ("forward",), "a route has run or forward, never both")
    argv = () if "forward" in raw else _argv(doc, path, raw, base)
    concurrency = doc.get(raw, path, "concurrency", int, None, minimum=1)
    retries = doc.get(raw, path, "retries", int, DEFAULT_RETRIES, minimum=0)
    sandboxed, sandbox_read, sandbox_write = sandbox(doc, path, raw, base, state)
    broadcast = doc.get(raw, path, "broadcast", bool, False)
    env = _route_env(doc, path, raw)
    env_from = config_context.env_from(doc, path, raw)
    lane = lanes.parse(doc, path, raw)
    reply = config_reply.reply(doc, path, raw)
    default_name = Path(argv[0]).stem if argv else f"route{index}"
    name = doc.get(raw, path, "name", str, default_name)
    if not ROUTE_NAME.match(name):
        doc.error(path + ("name",), f"must be 1-64 of [A-Za-z0-9._-], got {name!r}")
    if not argv and target is None:
        return None
    return Route(name=name, event=",".join(rule.events), when=_frozen(when), rule=rule, argv=argv, timeout_s=timeout_s,
                 concurrency=concurrency, retries=retries, env=env, sandbox=sandboxed,
                 sandbox_read=sandbox_read, sandbox_write=sandbox_write, broadcast=broadcast, env_from=env_from,
                 forward=target, lane=lane, reply=reply)


def _frozen(value: Any) -> Any:
    """`if` as written, hashable (a Route is a dict key): mappings and lists as tuples."""
    if isinstance(value, dict):
        return tuple((k, _frozen(v)) for k, v in value.items())
    if isinstance(value, list):
        return tuple(_frozen(v) for v in value)
    return value


def _argv(doc: Doc, path: Path_, raw: dict[str, Any], base: Path) -> tuple[str, ...]:
    run = doc.get(raw, path, "run", (str, list), None, required=True)
    if run is None:
        return ()
    items = [run] if isinstance(run, str) else run
    if not items or not all(isinstance(a, (str, int, float)) and not isinstance(a, bool) for a in items):
        doc.error(path + ("run",), "must be a script path or a non-empty list of strings")
        return ()
    argv = [str(a) for a in items]
    program = argv[0]
    if "/" in program:
        # abspath, not resolve(): on a ConfigMap volume the script is reached through
        # the ..data symlink, and the timestamped directory behind it is deleted on
        # the next update. Keep the path that survives updates.
        resolved = Path(os.path.abspath(base / program))
        argv[0] = str(resolved)
        if not resolved.is_file():
            hint = " (to pass arguments, write run as a list)" if isinstance(run, str) and " " in program else ""
            doc.local_error(path + ("run",), f"no such file: {resolved}{hint}")
            return tuple(argv) if doc.offline else ()
        if not os.access(resolved, os.X_OK):
            doc.local_error(path + ("run",), f"not executable: {resolved} (chmod +x it)")
            return tuple(argv) if doc.offline else ()
    elif shutil.which(program) is None:
        doc.local_error(path + ("run",),
                        f"command not found on PATH: {program!r} (scripts need a path such as hooks/x.sh)")
        return tuple(argv) if doc.offline else ()
    return tuple(argv)


def _route_env(doc: Doc, path: Path_, raw: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    env = doc.get(raw, path, "env", dict, {})
    out = []
    for key, value in env.items():
        if not ENV_NAME.match(key) or key.startswith("WEBHOOK_"):
            doc.error(path + ("env", key), "must be a variable name not starting with WEBHOOK_")
        elif isinstance(value, bool) or not isinstance(value, (str, int, float)):
            doc.error(path + ("env", key), f"must be a string, got {_describe(value)}")
        else:
            out.append((key, str(value)))
    return tuple(out)
