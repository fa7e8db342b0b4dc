"""config.yaml's secrets: an endpoint's `secret_env` variables and `secret_file` files, and the
listener's TLS certificate and key. Values are read here and never printed."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .providers import Provider
from .tls import Files as TLSFiles
from .tls import TLSError
from .tls import load as load_tls
from .yamldoc import Doc, Path_

ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def tls(doc: Doc, top: dict[str, Any], base: Path) -> TLSFiles | None:
    """tls: {cert_file, key_file}, relative to the config file; the pair must load now."""
    value = doc.get(top, (), "tls", dict, None)
    if value is None:
        return None
    doc.unknown_keys(value, ("tls",), {"cert_file", "key_file"})
    paths = {}
    for key in ("cert_file", "key_file"):
        name = doc.get(value, ("tls",), key, str, None, required=True)
        if name == "":
            doc.error(("tls", key), "must be a file path")
        elif name is not None:
            # abspath, not resolve(): a Secret volume's file is a symlink through ..data, which moves.
            paths[key] = os.path.abspath(base / name)
    if len(paths) < 2:
        return None
    files = TLSFiles(**paths)
    if doc.offline:
        return files
    try:
        load_tls(files)
    except TLSError as e:
        doc.error(("tls", e.key), e.reason)
    return files


def secrets(doc: Doc, path: Path_, raw: dict[str, Any], cls: type[Provider] | None,
            environ: Mapping[str, str], dotenv: Mapping[str, str]) -> tuple[tuple[str, ...], tuple[bytes, ...]]:
    """secret_env: one variable name or a list (rotation); each value from the environment, then the env file."""
    value = raw.get("secret_env")
    if value is None:
        if cls is not None and cls.secret_needed(raw) and "secret_file" not in raw:
            doc.error(path, f"missing required key 'secret_env' (provider {cls.name!r} verifies signatures)")
        return (), ()
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        doc.error(path + ("secret_env",), "must be an environment variable name or a non-empty list of them")
        return (), ()
    found = []
    for k, name in enumerate(names):
        where = path + ("secret_env",) + ((k,) if isinstance(value, list) else ())
        secret = named_secret(doc, where, name, environ, dotenv)
        if secret is None:
            continue
        secret_b = secret.encode("utf-8")
        problem = cls.secret_problem(secret_b) if cls is not None else None
        if problem:
            doc.error(where, f"secret {name} {problem}")
            continue
        found.append(secret_b)
    return tuple(names), tuple(found)


def named_secret(doc: Doc, where: Path_, name: Any, environ: Mapping[str, str],
                 dotenv: Mapping[str, str]) -> str | None:
    """The secret in variable `name` (the environment, then the env file), or None with the error in `doc`."""
    if not isinstance(name, str) or not ENV_NAME.match(name):
        doc.error(where, f"not a valid environment variable name: {name!r}")
        return None
    secret = environ.get(name) or dotenv.get(name)
    if not secret:
        doc.local_error(where, f"secret {name} is not set in the environment or the env file")
        return None
    return secret


def secret_files(doc: Doc, path: Path_, raw: dict[str, Any], cls: type[Provider] | None,
                 base: Path) -> tuple[tuple[str, ...], tuple[bytes, ...]]:
    """secret_file: one path or a list; each secret is the file's content without its trailing newline."""
    value = raw.get("secret_file")
    if value is None:
        return (), ()
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
        doc.error(path + ("secret_file",), "must be a file path or a non-empty list of them")
        return (), ()
    files, found = [], []
    for k, name in enumerate(names):
        where = path + ("secret_file",) + ((k,) if isinstance(value, list) else ())
        # abspath, not resolve(): a Secret volume's file is a symlink through ..data, which moves.
        file = os.path.abspath(base / name)
        try:
            secret_b = Path(file).read_bytes()
        except OSError as e:
            doc.local_error(where, f"cannot read secret file {file}: {e.strerror}")
            if doc.offline:
                files.append(file)
            continue
        secret_b = secret_b[:-2] if secret_b.endswith(b"\r\n") else secret_b.removesuffix(b"\n")
        problem = "is empty" if not secret_b else (cls.secret_problem(secret_b) if cls is not None else None)
        if problem:
            doc.error(where, f"secret file {file} {problem}")
            continue
        files.append(file)
        found.append(secret_b)
    return tuple(files), tuple(found)
