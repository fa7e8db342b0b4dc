"""A route's `sandbox`: Landlock off, or the default plus read and write grants; and the sidecar's own
state (config directory, spool, env file, secret and TLS files) that no write grant may reach."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .config_spool import DEFAULT_SPOOL_DIR
from .yamldoc import Doc, Path_, _describe

State = tuple[tuple[str, str], ...]  # (path, what it is): what hooks may never write


def _names(value: Any) -> list[str]:
    return [v for v in (value if isinstance(value, list) else [value]) if isinstance(v, str) and v]


def state_of(top: dict[str, Any], base: Path, env_file: str | os.PathLike[str] | None) -> State:
    """The sidecar's state as this file places it: the config directory, the embedded spool, the env
    file, secret and TLS files (read from the raw document: every endpoint's, before any is checked)."""
    state = [(str(base), "the config directory")]
    if not any(k in top for k in ("spool_url_env", "spool_url_file")):
        given = top.get("spool_dir")
        spool = given if isinstance(given, str) else DEFAULT_SPOOL_DIR
        state.append((os.path.abspath(base / spool), "the spool"))
    if env_file:
        state.append((os.path.abspath(env_file), "the env file"))
    files = _names(top.get("spool_url_file"))
    tls = top.get("tls")
    if isinstance(tls, dict):
        files += _names(tls.get("key_file")) + _names(tls.get("cert_file"))
    endpoints = top.get("endpoints")
    for ep in endpoints if isinstance(endpoints, list) else []:
        if isinstance(ep, dict):
            files += _names(ep.get("secret_file"))
    state += [(os.path.abspath(base / f), "a secret file") for f in files]
    return tuple(state)


def _clash(grant: str, state: State) -> str:
    """Why a write grant may not be given: it contains, or lies inside, the sidecar's state (as given or
    resolved); "" when it reaches none."""
    for path, what in state:
        for g, p in ((grant, path), (os.path.realpath(grant), os.path.realpath(path))):
            how = "contains" if p == g or p.startswith(g.rstrip("/") + "/") else (
                "lies inside" if g.startswith(p.rstrip("/") + "/") else "")
            if how:
                return (f"{grant} {how} {what} ({path}): hooks may never write the sidecar's state;"
                        " grant a directory that holds none")
    return ""


def sandbox(doc: Doc, path: Path_, raw: dict[str, Any], base: Path,
            state: State = ()) -> tuple[bool, tuple[str, ...], tuple[str, ...]]:
    """sandbox: false (no Landlock for this route), or {read: [paths], write: [paths]} added to the default.

    A write grant may not reach the sidecar's state: Landlock grants whole hierarchies, so it would
    open the spool, .env or a secret to the route's hooks, or let them rewrite config.yaml.
    """
    value = doc.get(raw, path, "sandbox", (bool, dict), True)
    if isinstance(value, bool):
        return value, (), ()
    doc.unknown_keys(value, path + ("sandbox",), {"read", "write"})
    grants: list[tuple[str, ...]] = []
    for kind in ("read", "write"):
        items = doc.get(value, path + ("sandbox",), kind, list, [])
        paths = []
        for k, item in enumerate(items):
            where = path + ("sandbox", kind, k)
            if not isinstance(item, str) or not item:
                doc.error(where, f"must be a path, got {_describe(item)}")
                continue
            full = os.path.abspath(base / item)
            clash = _clash(full, state) if kind == "write" else ""
            if clash:
                doc.error(where, clash)
                continue
            if not os.path.exists(full):
                doc.local_error(where, f"no such file or directory: {full}")
                if not doc.offline:
                    continue
            paths.append(full)
        grants.append(tuple(paths))
    return True, grants[0], grants[1]
