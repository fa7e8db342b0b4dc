"""The request context hooks may get: `pass_headers` and `pass_query` on an endpoint, `env_from` on a
route. Credentials never pass: a header that carries one is a config error."""

from __future__ import annotations

import re
from typing import Any

from .config_secrets import ENV_NAME
from .yamldoc import Doc, Path_, _describe

HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,128}$")  # an RFC 9110 token
CREDENTIALS = {"authorization", "cookie", "proxy-authorization", "set-cookie"}
# A signature, token or HMAC header of any provider (X-Hub-Signature-256, X-Gitlab-Token,
# X-Shopify-Hmac-Sha256, webhook-signature, ...): what a hook must never be handed.
CREDENTIAL_WORDS = ("signature", "token", "hmac", "secret", "auth", "api-key", "apikey")
MAX_PATH = 256


def is_credential(name: str, signature_header: str = "") -> bool:
    lower = name.lower()
    return (lower in CREDENTIALS or any(w in lower for w in CREDENTIAL_WORDS)
            or (bool(signature_header) and lower == signature_header.lower()))


def pass_headers(doc: Doc, path: Path_, raw: dict[str, Any], signature_header: str = "") -> tuple[str, ...]:
    """The request headers stored with each delivery for hooks (WEBHOOK_HEADER_*), as configured."""
    names = doc.get(raw, path, "pass_headers", list, [])
    out: list[str] = []
    for i, name in enumerate(names):
        where = path + ("pass_headers", i)
        if not isinstance(name, str) or not HEADER_NAME.match(name):
            doc.error(where, f"must be a header name, got {_describe(name)}")
        elif is_credential(name, signature_header):
            doc.error(where, f"{name} carries a credential (a signature, token or cookie): it is never passed"
                             " to hooks")
        elif name.lower() not in (n.lower() for n in out):
            out.append(name)
    return tuple(out)


def pass_query(doc: Doc, path: Path_, raw: dict[str, Any]) -> bool:
    """Whether the raw query string is stored with each delivery for hooks (WEBHOOK_QUERY)."""
    return bool(doc.get(raw, path, "pass_query", bool, False))


def env_from(doc: Doc, path: Path_, raw: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    """`env_from: {VAR: payload.path}`: variables set from the payload for this route's hooks."""
    mapping = doc.get(raw, path, "env_from", dict, {})
    out: list[tuple[str, str]] = []
    for name, where_from in mapping.items():
        at = path + ("env_from", name)
        if not isinstance(name, str) or not ENV_NAME.match(name):
            doc.error(at, f"must be an environment variable name, got {name!r}")
        elif name.upper().startswith("WEBHOOK_"):
            doc.error(at, "names starting with WEBHOOK_ are the sidecar's own")
        elif not isinstance(where_from, str) or not where_from or len(where_from) > MAX_PATH:
            doc.error(at, f"must be a payload path such as repository.full_name, got {_describe(where_from)}")
        else:
            out.append((name, where_from))
    return tuple(out)


def header_variable(name: str) -> str:
    """The variable a passed header is in: X-GitHub-Hook-ID -> WEBHOOK_HEADER_X_GITHUB_HOOK_ID."""
    return "WEBHOOK_HEADER_" + re.sub(r"[^A-Z0-9]", "_", name.upper())
