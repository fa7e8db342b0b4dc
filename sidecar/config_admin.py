"""config.yaml's admin listener (`admin: {listen, token_env | token_file}`) and `keep_bodies_s`.

The token is read like an endpoint's secret: `token_env` from the environment, then the env file, at
every load; `token_file` is checked here and re-read by the listener when it changes (a rotated Secret).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config_secrets import ENV_NAME
from .yamldoc import Doc, Path_

ADMIN_KEYS = {"listen", "token_env", "token_file"}
MIN_TOKEN_BYTES = 16  # a bearer token guessable in a few tries is no token


@dataclass(frozen=True)
class Admin:
    """The second listener: /metrics and /admin/* (the token's value never printed)."""

    listen: str
    token_env: str | None = None
    token_file: str | None = None  # absolute; re-read by the listener when it changes
    token: bytes = field(default=b"", repr=False)  # token_env's value (token_file's is read by the listener)


def read_token_file(path: str) -> bytes:
    """A token file's content without its trailing newline (OSError when it cannot be read)."""
    data = Path(path).read_bytes()
    return data[:-2] if data.endswith(b"\r\n") else data.removesuffix(b"\n")


def keep_bodies_s(doc: Doc, top: dict[str, Any]) -> float:
    """How long finished deliveries keep their bodies for replay (0: dropped at once)."""
    return float(doc.get(top, (), "keep_bodies_s", float, 0.0, minimum=0))


def admin(doc: Doc, top: dict[str, Any], base: Path, environ: Mapping[str, str],
          dotenv: Mapping[str, str], listen: str) -> Admin | None:
    """`admin:` checked: a host:port other than the webhook listener's, and exactly one token source."""
    raw = doc.get(top, (), "admin", dict, None)
    if raw is None:
        return None
    path = ("admin",)
    doc.unknown_keys(raw, path, ADMIN_KEYS)
    where = doc.get(raw, path, "listen", str, "", required=True)
    if where and not re.fullmatch(r".*:\d{1,5}", where):
        doc.error(path + ("listen",), f"must be host:port, got {where!r}")
    elif where and where == listen:
        doc.error(path + ("listen",), f"must differ from listen ({listen}): the admin port is a second listener")
    env = doc.get(raw, path, "token_env", str, None)
    name = doc.get(raw, path, "token_file", str, None)
    if (env is None) == (name is None):
        doc.error(path, "needs exactly one of token_env or token_file (the bearer token /admin/* requires)")
        return None
    if env is not None:
        if not ENV_NAME.match(env):
            doc.error(path + ("token_env",), f"not a valid environment variable name: {env!r}")
            return None
        token = (environ.get(env) or dotenv.get(env) or "").encode("utf-8")
        _check(doc, path + ("token_env",), f"{env} in the environment or the env file", token, env_missing=True)
        return Admin(listen=where, token_env=env, token=token)
    if not name:
        doc.error(path + ("token_file",), "must be a file path")
        return None
    # abspath, not resolve(): a Secret volume's file is a symlink through ..data, which moves.
    file = os.path.abspath(base / str(name))
    try:
        _check(doc, path + ("token_file",), f"token file {file}", read_token_file(file))
    except OSError as e:
        doc.local_error(path + ("token_file",), f"cannot read token file {file}: {e.strerror}")
    return Admin(listen=where, token_file=file)


def _check(doc: Doc, path: Path_, what: str, token: bytes, env_missing: bool = False) -> None:
    if not token:
        if env_missing:
            doc.local_error(path, f"{what}: not set")
        else:
            doc.local_error(path, f"{what} is empty")
    elif len(token) < MIN_TOKEN_BYTES:
        doc.error(path, f"{what}: the token is shorter than {MIN_TOKEN_BYTES} bytes")
