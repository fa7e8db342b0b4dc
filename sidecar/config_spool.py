"""config.yaml's spool: the embedded sqlite directory, or a shared PostgreSQL database whose URL is in a
variable (`spool_url_env`) or a file (`spool_url_file`); and the look-ups the spool CLI makes without
validating the rest of the file."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from .config_secrets import ENV_NAME
from .errors import ConfigError
from .yamldoc import Doc

DEFAULT_SPOOL_DIR = ".spool"
SPOOL_KEYS = ("spool_dir", "spool_url_env", "spool_url_file")  # the spool: exactly one of them, or none


def _has_postgres_driver() -> bool:
    """psycopg and its pool are the [postgres] extra: looked up, not imported (idle memory)."""
    return all(importlib.util.find_spec(name) is not None for name in ("psycopg", "psycopg_pool"))


def spool_url(doc: Doc, top: dict[str, Any], base: Path, environ: Mapping[str, str],
              dotenv: Mapping[str, str]) -> tuple[str | None, str | None, str | None]:
    """The shared spool's (spool_url_env, spool_url_file as an absolute path, the URL found there)."""
    given = [k for k in SPOOL_KEYS if k in top]
    if len(given) > 1:
        doc.error((given[1],), f"{' and '.join(given)} exclude each other: the spool is either the embedded file"
                  " (spool_dir) or a shared PostgreSQL database whose URL is in a variable (spool_url_env)"
                  " or a file (spool_url_file)")
    env = doc.get(top, (), "spool_url_env", str, None)
    name = doc.get(top, (), "spool_url_file", str, None)
    driver = (env is None and name is None) or _has_postgres_driver()  # looked up once per load
    if not driver:
        doc.local_error(("spool_url_env" if env is not None else "spool_url_file",),
                        "the shared spool needs the PostgreSQL driver: pip install 'webhook-sidecar[postgres]'")
    if env is not None:
        if not ENV_NAME.match(env):
            doc.error(("spool_url_env",), f"not a valid environment variable name: {env!r}")
            return env, None, None
        url = environ.get(env) or dotenv.get(env)
        if not url:
            doc.local_error(("spool_url_env",), f"{env} is not set in the environment or the env file")
        return env, None, _checked_url(doc, "spool_url_env", env, url if driver else None)
    if name is None:
        return None, None, None
    if not name:
        doc.error(("spool_url_file",), "must be a file path")
        return None, None, None
    # abspath, not resolve(): a Secret volume's file is a symlink through ..data, which moves.
    path = os.path.abspath(base / name)
    try:
        url = read_spool_url_file(path)
    except (OSError, UnicodeDecodeError) as e:
        doc.local_error(("spool_url_file",), f"cannot read {path}: {getattr(e, 'strerror', None) or e}")
        return None, path, None
    if not url:
        doc.error(("spool_url_file",), f"{path} is empty")
    return None, path, _checked_url(doc, "spool_url_file", path, url if driver else None)


def _checked_url(doc: Doc, key: str, where: str, url: str | None) -> str | None:
    """`url` when it is a libpq URL (the only start error of a shared spool); its value is never shown."""
    if not url:
        return None
    from .spool.pg_schema import url_problem  # only with a shared spool: sqlite users never load the driver
    problem = url_problem(url)
    if problem:
        doc.error((key,), f"{where}: {problem}")
        return None
    return url


def read_spool_url_file(path: str | os.PathLike[str]) -> str:
    """A spool URL file's content (a Kubernetes Secret key) without surrounding whitespace."""
    return Path(path).read_text(encoding="utf-8").strip()


def _top(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The file's top-level mapping, unchecked ({} when it is something else)."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise ConfigError([f"{path}:1: (file): cannot read: {e}"]) from e
    return data if isinstance(data, dict) else {}


def spool_source_of(path: str | os.PathLike[str]) -> tuple[str, str] | None:
    """Where a config's shared spool URL is, without validating the rest: ("spool_url_env", the
    variable) or ("spool_url_file", its absolute path); None for the embedded spool."""
    data = _top(path)
    if isinstance(data.get("spool_url_env"), str):
        return "spool_url_env", data["spool_url_env"]
    if isinstance(data.get("spool_url_file"), str) and data["spool_url_file"]:
        return "spool_url_file", os.path.abspath(Path(path).parent / data["spool_url_file"])
    return None


def spool_dir_of(path: str | os.PathLike[str]) -> Path:
    """Where a config file keeps its spool, without validating the rest (no secrets needed)."""
    value = _top(path).get("spool_dir")
    return Path(path).parent / (value if isinstance(value, str) else DEFAULT_SPOOL_DIR)
