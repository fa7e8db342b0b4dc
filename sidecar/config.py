"""config.yaml: load once, check everything, report every error with file, line and key.

The file is read by yamldoc.py (duplicates are errors, every value keeps its line);
this module checks what the values mean.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError
from .providers import PROVIDERS, Provider
from .tls import Files as TLSFiles
from .tls import TLSError
from .tls import load as load_tls
from .yamldoc import Doc as _Doc
from .yamldoc import Path_, _describe

DEFAULT_TIMEOUT_S = 60.0
DEFAULT_RETRIES = 3
RESERVED_PATHS = {"/healthz", "/readyz", "/metrics"}
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
ROUTE_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")

TOP_KEYS = {
    "listen", "max_body_bytes", "spool_dir", "endpoints", "max_workers", "max_queue",
    "request_timeout_s", "retry_backoff_s", "retry_backoff_max_s", "retention_hours",
    "max_connections", "max_connections_per_client", "spool_max_bytes", "spool_url_env", "spool_url_file", "lease_s",
    "tls",
}
ENDPOINT_KEYS = {"path", "provider", "secret_env", "secret_file", "routes"}
ROUTE_KEYS = {"name", "event", "if", "run", "timeout_s", "concurrency", "retries", "env", "sandbox", "broadcast"}



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


@dataclass(frozen=True)
class Endpoint:
    path: str
    provider: Provider
    secret_env: tuple[str, ...]
    routes: tuple[Route, ...]
    # Never printed: repr=False keeps secrets out of tracebacks and debug output.
    secrets: tuple[bytes, ...] = field(default=(), repr=False)
    secret_files: tuple[str, ...] = ()  # absolute paths, re-read on reload


@dataclass(frozen=True)
class Config:
    file: Path
    listen: str = "0.0.0.0:8080"
    max_body_bytes: int = 1024 * 1024
    spool_dir: Path = Path(".spool")
    max_workers: int = 4
    max_queue: int = 1000
    request_timeout_s: float = 10.0
    max_connections: int = 256
    # Default: half of max_connections. Behind an Ingress every sender shares the controller's
    # address, which then still has half the slots; a single direct address cannot take them all.
    max_connections_per_client: int = 128
    retry_backoff_s: float = 2.0
    retry_backoff_max_s: float = 300.0
    retention_hours: float = 168.0
    spool_max_bytes: int = 512 * 1024 * 1024
    # The shared (PostgreSQL) spool: the variable's name or the file's path (absolute), and the value
    # found there (a libpq URL, never logged).
    spool_url_env: str | None = None
    spool_url_file: str | None = None
    spool_url: str | None = field(default=None, repr=False)
    lease_s: float = 30.0
    tls: TLSFiles | None = None  # HTTPS on the listener: certificate and key, re-read when they change
    endpoints: Mapping[str, Endpoint] = field(default_factory=dict)
    digest: str = ""

    @property
    def base_dir(self) -> Path:
        return self.file.parent

    @property
    def route_count(self) -> int:
        return sum(len(e.routes) for e in self.endpoints.values())

    @property
    def secret_files(self) -> tuple[str, ...]:
        """Every file holding a secret: the endpoints', the spool URL's, the TLS key (hidden from hooks, watched)."""
        spool = (self.spool_url_file,) if self.spool_url_file else ()
        key = (self.tls.key_file,) if self.tls else ()
        return tuple(f for e in self.endpoints.values() for f in e.secret_files) + spool + key


def load(path: str | os.PathLike[str], env_file: str | os.PathLike[str] | None = None,
         environ: Mapping[str, str] | None = None, offline: bool = False) -> Config:
    """Load and check config.yaml; ConfigError lists every problem found.

    `offline`: secrets, secret files, scripts, sandbox paths and TLS files need not exist here."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError([f"{file}:1: (file): cannot read: {e}"]) from e
    environ = os.environ if environ is None else environ
    dotenv = read_env_file(Path(env_file)) if env_file else {}
    doc = _Doc(file, text)
    doc.offline = offline
    # Build even after YAML-level errors (duplicate keys) so every problem is reported at once.
    config = _build(doc, file, text, environ, dotenv, env_file) if doc.data is not None else None
    if doc.errors or config is None:
        found = [text for _, text in sorted(doc.errors, key=lambda e: e[0])]
        raise ConfigError(found or [f"{file}:1: (file): empty"])
    return config


def read_env_file(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    from dotenv import dotenv_values  # here: most deployments have no .env, and idle RSS counts

    return {k: v for k, v in dotenv_values(path).items() if v is not None}


def _build(doc: _Doc, file: Path, text: str, environ: Mapping[str, str], dotenv: Mapping[str, str],
           env_file: str | os.PathLike[str] | None = None) -> Config | None:
    top = doc.data
    if not isinstance(top, dict):
        doc.error((), f"the file must be a mapping with an 'endpoints' list, got {_describe(top)}")
        return None
    doc.unknown_keys(top, (), TOP_KEYS)
    listen = doc.get(top, (), "listen", str, Config.listen)
    if not re.fullmatch(r".*:\d{1,5}", listen):
        doc.error(("listen",), f"must be host:port, got {listen!r}")
    max_body = doc.get(top, (), "max_body_bytes", int, Config.max_body_bytes, minimum=1)
    spool_dir = doc.get(top, (), "spool_dir", str, str(Config.spool_dir))
    max_workers = doc.get(top, (), "max_workers", int, Config.max_workers, minimum=1)
    max_queue = doc.get(top, (), "max_queue", int, Config.max_queue, minimum=1)
    request_timeout = doc.get(top, (), "request_timeout_s", float, Config.request_timeout_s, minimum=0.1)
    max_connections = doc.get(top, (), "max_connections", int, Config.max_connections, minimum=1)
    per_client = doc.get(top, (), "max_connections_per_client", int, max(1, max_connections // 2), minimum=1)
    backoff = doc.get(top, (), "retry_backoff_s", float, Config.retry_backoff_s, minimum=0)
    backoff_max = doc.get(top, (), "retry_backoff_max_s", float, Config.retry_backoff_max_s, minimum=0)
    retention = doc.get(top, (), "retention_hours", float, Config.retention_hours, minimum=0.0001)
    spool_max_bytes = doc.get(top, (), "spool_max_bytes", int, Config.spool_max_bytes, minimum=0)
    lease_s = doc.get(top, (), "lease_s", float, Config.lease_s, minimum=1)
    spool_url_env, spool_url_file, spool_url = _spool_url(doc, top, file.parent, environ, dotenv)
    tls = _tls(doc, top, file.parent)
    raw_endpoints = doc.get(top, (), "endpoints", list, [], required=True)
    if "endpoints" in top and isinstance(top["endpoints"], list) and not top["endpoints"]:
        doc.error(("endpoints",), "needs at least one endpoint")

    secrets_used: list[str] = []
    endpoints: dict[str, Endpoint] = {}
    state = _state(top, file.parent, env_file)
    for i, raw in enumerate(raw_endpoints):
        ep = _endpoint(doc, ("endpoints", i), raw, file.parent, environ, dotenv, state)
        if ep is None:
            continue
        if ep.path in endpoints:
            doc.error(("endpoints", i, "path"), f"duplicate path {ep.path!r}")
            continue
        endpoints[ep.path] = ep
        secrets_used.extend(hashlib.sha256(s).hexdigest() for s in ep.secrets)
    if doc.errors:
        return None
    # The digest covers the text and the secrets' hashes, so a rotated secret in
    # .env is a change even when config.yaml is untouched.
    digest = hashlib.sha256("\0".join([text, *secrets_used]).encode()).hexdigest()
    return Config(
        file=file, listen=listen, max_body_bytes=max_body, spool_dir=file.parent / spool_dir,
        max_workers=max_workers, max_queue=max_queue, request_timeout_s=request_timeout,
        max_connections=max_connections, max_connections_per_client=per_client,
        retry_backoff_s=backoff, retry_backoff_max_s=backoff_max, retention_hours=retention,
        spool_max_bytes=spool_max_bytes, spool_url_env=spool_url_env, spool_url_file=spool_url_file,
        spool_url=spool_url, lease_s=lease_s,
        tls=tls, endpoints=endpoints, digest=digest[:16],
    )


def _tls(doc: _Doc, top: dict[str, Any], base: Path) -> TLSFiles | None:
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


def _endpoint(doc: _Doc, path: Path_, raw: Any, base: Path, environ: Mapping[str, str],
              dotenv: Mapping[str, str], state: State = ()) -> Endpoint | None:
    if not isinstance(raw, dict):
        doc.error(path, f"an endpoint must be a mapping, got {_describe(raw)}")
        return None
    ep_path = doc.get(raw, path, "path", str, "", required=True)
    if ep_path and (not ep_path.startswith("/") or "?" in ep_path or " " in ep_path):
        doc.error(path + ("path",), f"must start with '/' and hold no query or spaces, got {ep_path!r}")
    if ep_path in RESERVED_PATHS:
        doc.error(path + ("path",), f"{ep_path} is reserved for health and metrics")
    provider_name = doc.get(raw, path, "provider", str, "", required=True)
    cls = PROVIDERS.get(provider_name)
    if provider_name and cls is None:
        doc.error(path + ("provider",), f"unknown provider {provider_name!r} (known: {', '.join(sorted(PROVIDERS))})")
    allowed = ENDPOINT_KEYS | set(cls.options if cls else ())
    doc.unknown_keys(raw, path, allowed)

    options = {}
    for key, opt in (cls.options.items() if cls else ()):
        options[key] = doc.get(raw, path, key, opt.type, opt.default)

    secret_env, secrets = _secrets(doc, path, raw, cls, environ, dotenv)
    secret_files, file_secrets = _secret_files(doc, path, raw, cls, base)
    raw_routes = doc.get(raw, path, "routes", list, [], required=True)
    routes: list[Route] = []
    names: set[str] = set()
    for j, raw_route in enumerate(raw_routes):
        route = _route(doc, path + ("routes", j), raw_route, base, j, state)
        if route is None:
            continue
        if route.name in names and "name" not in raw_route:
            route = replace(route, name=f"{route.name}-{j}")
        if route.name in names:
            doc.error(path + ("routes", j, "name"), f"duplicate route name {route.name!r}")
        names.add(route.name)
        routes.append(route)
    if cls is None or not ep_path:
        return None
    try:
        provider = cls(**options)
    except ValueError as e:  # a provider's own cross-option checks
        doc.error(path, str(e))
        return None
    return Endpoint(path=ep_path, provider=provider, secret_env=secret_env, routes=tuple(routes),
                    secrets=secrets + file_secrets, secret_files=secret_files)


def _secrets(doc: _Doc, path: Path_, raw: dict[str, Any], cls: type[Provider] | None,
             environ: Mapping[str, str], dotenv: Mapping[str, str]) -> tuple[tuple[str, ...], tuple[bytes, ...]]:
    value = raw.get("secret_env")
    if value is None:
        if cls is not None and cls.needs_secret and "secret_file" not in raw:
            doc.error(path, f"missing required key 'secret_env' (provider {cls.name!r} verifies signatures)")
        return (), ()
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        doc.error(path + ("secret_env",), "must be an environment variable name or a non-empty list of them")
        return (), ()
    secrets = []
    for k, name in enumerate(names):
        where = path + ("secret_env",) + ((k,) if isinstance(value, list) else ())
        if not ENV_NAME.match(name):
            doc.error(where, f"not a valid environment variable name: {name!r}")
            continue
        secret = environ.get(name) or dotenv.get(name)
        if not secret:
            doc.local_error(where, f"secret {name} is not set in the environment or the env file")
            continue
        secret_b = secret.encode("utf-8")
        problem = cls.secret_problem(secret_b) if cls is not None else None
        if problem:
            doc.error(where, f"secret {name} {problem}")
            continue
        secrets.append(secret_b)
    return tuple(names), tuple(secrets)


def _secret_files(doc: _Doc, path: Path_, raw: dict[str, Any], cls: type[Provider] | None,
                  base: Path) -> tuple[tuple[str, ...], tuple[bytes, ...]]:
    """secret_file: one path or a list; each secret is the file's content without its trailing newline."""
    value = raw.get("secret_file")
    if value is None:
        return (), ()
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
        doc.error(path + ("secret_file",), "must be a file path or a non-empty list of them")
        return (), ()
    files, secrets = [], []
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
        secrets.append(secret_b)
    return tuple(files), tuple(secrets)


State = tuple[tuple[str, str], ...]  # (path, what it is): what hooks may never write


def _names(value: Any) -> list[str]:
    return [v for v in (value if isinstance(value, list) else [value]) if isinstance(v, str) and v]


def _state(top: dict[str, Any], base: Path, env_file: str | os.PathLike[str] | None) -> State:
    """The sidecar's state as this file places it: the config directory, the embedded spool, the env
    file, secret and TLS files (read from the raw document: every endpoint's, before any is checked)."""
    state = [(str(base), "the config directory")]
    if not any(k in top for k in ("spool_url_env", "spool_url_file")):
        given = top.get("spool_dir")
        spool = given if isinstance(given, str) else str(Config.spool_dir)
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


def _sandbox(doc: _Doc, path: Path_, raw: dict[str, Any], base: Path,
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


def _route(doc: _Doc, path: Path_, raw: Any, base: Path, index: int, state: State = ()) -> Route | None:
    if not isinstance(raw, dict):
        doc.error(path, f"a route must be a mapping, got {_describe(raw)}")
        return None
    doc.unknown_keys(raw, path, ROUTE_KEYS)
    event = doc.get(raw, path, "event", str, "", required=True)
    when = doc.get(raw, path, "if", dict, {})
    for key in when:
        if not key or any(not part for part in key.split(".")):
            doc.error(path + ("if", key), "must be a dotted payload path such as 'repository.full_name'")
    argv = _argv(doc, path, raw, base)
    timeout_s = doc.get(raw, path, "timeout_s", float, DEFAULT_TIMEOUT_S, minimum=0.001)
    concurrency = doc.get(raw, path, "concurrency", int, None, minimum=1)
    retries = doc.get(raw, path, "retries", int, DEFAULT_RETRIES, minimum=0)
    sandboxed, sandbox_read, sandbox_write = _sandbox(doc, path, raw, base, state)
    broadcast = doc.get(raw, path, "broadcast", bool, False)
    env = _route_env(doc, path, raw)
    default_name = Path(argv[0]).stem if argv else f"route{index}"
    name = doc.get(raw, path, "name", str, default_name)
    if not ROUTE_NAME.match(name):
        doc.error(path + ("name",), f"must be 1-64 of [A-Za-z0-9._-], got {name!r}")
    if not argv:
        return None
    return Route(name=name, event=event, when=tuple(when.items()), argv=argv, timeout_s=timeout_s,
                 concurrency=concurrency, retries=retries, env=env, sandbox=sandboxed,
                 sandbox_read=sandbox_read, sandbox_write=sandbox_write, broadcast=broadcast)


def _argv(doc: _Doc, path: Path_, raw: dict[str, Any], base: Path) -> tuple[str, ...]:
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


def _route_env(doc: _Doc, path: Path_, raw: dict[str, Any]) -> tuple[tuple[str, str], ...]:
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


SPOOL_KEYS = ("spool_dir", "spool_url_env", "spool_url_file")  # the spool: exactly one of them, or none


def _has_postgres_driver() -> bool:
    """psycopg and its pool are the [postgres] extra: looked up, not imported (idle memory)."""
    return all(importlib.util.find_spec(name) is not None for name in ("psycopg", "psycopg_pool"))


def _spool_url(doc: _Doc, top: dict[str, Any], base: Path, environ: Mapping[str, str],
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


def _checked_url(doc: _Doc, key: str, where: str, url: str | None) -> str | None:
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


def spool_source_of(path: str | os.PathLike[str]) -> tuple[str, str] | None:
    """Where a config's shared spool URL is, without validating the rest: ("spool_url_env", the
    variable) or ("spool_url_file", its absolute path); None for the embedded spool."""
    file = Path(path)
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise ConfigError([f"{path}:1: (file): cannot read: {e}"]) from e
    data = data if isinstance(data, dict) else {}
    if isinstance(data.get("spool_url_env"), str):
        return "spool_url_env", data["spool_url_env"]
    if isinstance(data.get("spool_url_file"), str) and data["spool_url_file"]:
        return "spool_url_file", os.path.abspath(file.parent / data["spool_url_file"])
    return None


def spool_dir_of(path: str | os.PathLike[str]) -> Path:
    """Where a config file keeps its spool, without validating the rest (no secrets needed)."""
    file = Path(path)
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise ConfigError([f"{file}:1: (file): cannot read: {e}"]) from e
    value = data.get("spool_dir") if isinstance(data, dict) else None
    return file.parent / (value if isinstance(value, str) else str(Config.spool_dir))
