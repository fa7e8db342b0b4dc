"""config.yaml: load once, check everything, report every error with file, line and key.

The file is read by yamldoc.py (duplicates are errors, every value keeps its line); this module checks
the top level and the endpoints; routes (config_routes), sandbox grants (config_sandbox), secrets and
TLS (config_secrets) and the spool (config_spool) are checked in their own modules.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from . import config_admin, config_context, config_respond, config_routes, config_secrets, config_spool
from .answers import Answer
from .config_routes import DEFAULT_RETRIES, DEFAULT_TIMEOUT_S, Route
from .config_sandbox import State, state_of
from .config_spool import read_spool_url_file, spool_dir_of, spool_source_of
from .errors import ConfigError
from .providers import PROVIDERS, Provider
from .tls import Files as TLSFiles
from .yamldoc import Doc as _Doc
from .yamldoc import Path_, _describe

RESERVED_PATHS = {"/healthz", "/readyz", "/metrics"}

TOP_KEYS = {
    "listen", "max_body_bytes", "spool_dir", "endpoints", "max_workers", "max_queue",
    "request_timeout_s", "retry_backoff_s", "retry_backoff_max_s", "retention_hours",
    "max_connections", "max_connections_per_client", "spool_max_bytes", "spool_url_env", "spool_url_file", "lease_s",
    "tls", "admin", "keep_bodies_s",
}
ENDPOINT_KEYS = {"path", "provider", "secret_env", "secret_file", "routes", "pass_headers", "pass_query",
                 "respond"}

__all__ = [
    "DEFAULT_RETRIES", "DEFAULT_TIMEOUT_S", "Config", "ConfigError", "Endpoint", "Route", "load", "read_env_file",
    "read_spool_url_file", "spool_dir_of", "spool_source_of",
]


@dataclass(frozen=True)
class Endpoint:
    path: str
    provider: Provider
    secret_env: tuple[str, ...]
    routes: tuple[Route, ...]
    # Never printed: repr=False keeps secrets out of tracebacks and debug output.
    secrets: tuple[bytes, ...] = field(default=(), repr=False)
    secret_files: tuple[str, ...] = ()  # absolute paths, re-read on reload
    pass_headers: tuple[str, ...] = ()  # request headers stored with each delivery for hooks
    pass_query: bool = False  # the raw query string stored with each delivery for hooks
    respond: Answer | None = None  # replaces the provider's answer to accepted/ignored/duplicate deliveries


@dataclass(frozen=True)
class Config:
    file: Path
    listen: str = "0.0.0.0:8080"
    max_body_bytes: int = 1024 * 1024
    spool_dir: Path = Path(config_spool.DEFAULT_SPOOL_DIR)
    max_workers: int = 4
    max_queue: int = 100000
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
    admin: config_admin.Admin | None = None  # the second listener: /metrics and /admin/*
    keep_bodies_s: float = 0.0  # finished deliveries keep their bodies this long, for replay
    endpoints: Mapping[str, Endpoint] = field(default_factory=dict)
    digest: str = ""
    # Valid but probably not meant (a plain string that looks like a pattern): `check` prints them.
    warnings: tuple[str, ...] = ()

    @property
    def base_dir(self) -> Path:
        return self.file.parent

    @property
    def route_count(self) -> int:
        return sum(len(e.routes) for e in self.endpoints.values())

    @property
    def admin_listen(self) -> str | None:
        """Where the admin listener is (a change needs a restart), or None without one."""
        return self.admin.listen if self.admin else None

    @property
    def secret_files(self) -> tuple[str, ...]:
        """Every file holding a secret: the endpoints', the spool URL's, the TLS key (hidden from hooks, watched)."""
        spool = (self.spool_url_file,) if self.spool_url_file else ()
        key = (self.tls.key_file,) if self.tls else ()
        token = (self.admin.token_file,) if self.admin and self.admin.token_file else ()
        return tuple(f for e in self.endpoints.values() for f in e.secret_files) + spool + key + token


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
    return replace(config, warnings=tuple(text for _, text in sorted(doc.warnings, key=lambda w: w[0])))


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
    spool_url_env, spool_url_file, spool_url = config_spool.spool_url(doc, top, file.parent, environ, dotenv)
    tls = config_secrets.tls(doc, top, file.parent)
    admin = config_admin.admin(doc, top, file.parent, environ, dotenv, listen)
    raw_endpoints = doc.get(top, (), "endpoints", list, [], required=True)
    if "endpoints" in top and isinstance(top["endpoints"], list) and not top["endpoints"]:
        doc.error(("endpoints",), "needs at least one endpoint")

    secrets_used: list[str] = []
    endpoints: dict[str, Endpoint] = {}
    state = state_of(top, file.parent, env_file)
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
    if admin and admin.token:
        secrets_used.append(hashlib.sha256(admin.token).hexdigest())
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
        tls=tls, admin=admin, keep_bodies_s=config_admin.keep_bodies_s(doc, top), endpoints=endpoints,
        digest=digest[:16],
    )


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

    secret_env, secrets = config_secrets.secrets(doc, path, raw, cls, environ, dotenv)
    secret_files, file_secrets = config_secrets.secret_files(doc, path, raw, cls, base)
    passed = config_context.pass_headers(doc, path, raw, str(options.get("header") or ""))
    raw_routes = doc.get(raw, path, "routes", list, [], required=True)
    routes: list[Route] = []
    names: set[str] = set()
    for j, raw_route in enumerate(raw_routes):
        route = config_routes.route(doc, path + ("routes", j), raw_route, base, j, state, (environ, dotenv))
        if route is None:
            continue
        if route.name in names and "name" not in raw_route:
            route = replace(route, name=f"{route.name}-{j}")
        if route.name in names:
            doc.error(path + ("routes", j, "name"), f"duplicate route name {route.name!r}")
        names.add(route.name)
        if route.reply is not None and any(r.reply is not None for r in routes):
            doc.error(path + ("routes", j, "reply"), "only one route of an endpoint may reply")
        routes.append(route)
    if cls is None or not ep_path:
        return None
    try:
        provider = cls(**options)
    except ValueError as e:  # a provider's own cross-option checks
        doc.error(path, str(e))
        return None
    return Endpoint(path=ep_path, provider=provider, secret_env=secret_env, routes=tuple(routes),
                    secrets=secrets + file_secrets, secret_files=secret_files, pass_headers=passed,
                    pass_query=config_context.pass_query(doc, path, raw),
                    respond=config_respond.respond(doc, path, raw))
