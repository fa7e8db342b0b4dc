"""A route's `forward:` (instead of `run:`): a POST of the delivery to the application next door.
The target is checked here (forward.Target says what is wrong, naming the key); `sign.secret_env` is
read like an endpoint's `secret_env`, from the environment then the env file, and never printed."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .config_secrets import named_secret
from .forward import Target
from .yamldoc import Doc, Path_

FORWARD_KEYS = {"url", "timeout_s", "headers", "pass_headers", "sign", "format", "ca_file"}


def forward(doc: Doc, path: Path_, raw: dict[str, Any], base: Path, timeout_s: float,
            secrets: tuple[Mapping[str, str], Mapping[str, str]]) -> Target | None:
    """The route's forward target; None when it has none or it is wrong (the error is in `doc`)."""
    value = doc.get(raw, path, "forward", dict, None)
    if value is None:
        return None
    at = path + ("forward",)
    doc.unknown_keys(value, at, FORWARD_KEYS)
    url = doc.get(value, at, "url", str, "", required=True)
    headers = doc.get(value, at, "headers", dict, {})
    for name, header in headers.items():
        if isinstance(header, bool) or not isinstance(header, (str, int, float)):
            doc.error(at + ("headers", name), "must be a string")
    passed = doc.get(value, at, "pass_headers", list, [])
    ca_file = doc.get(value, at, "ca_file", str, None)
    if ca_file is not None:
        ca_file = os.path.abspath(base / ca_file)
        if not doc.offline and not os.access(ca_file, os.R_OK):
            doc.local_error(at + ("ca_file",), f"cannot read {ca_file}")
    keys = _sign(doc, at, value, secrets)
    try:
        return Target(url=url, headers={str(k): str(v) for k, v in headers.items()},
                      timeout_s=doc.get(value, at, "timeout_s", float, timeout_s, minimum=0.001), ca_file=ca_file,
                      sign=keys, mode=doc.get(value, at, "format", str, "raw"),
                      pass_headers=[str(p) for p in passed])
    except ValueError as e:
        key, _, reason = str(e).partition(": ")
        doc.error(at + ((key,) if key in FORWARD_KEYS else ()), reason or str(e))
        return None


def _sign(doc: Doc, at: Path_, value: dict[str, Any], secrets: tuple[Mapping[str, str], Mapping[str, str]]
          ) -> list[str]:
    sign = doc.get(value, at, "sign", dict, None)
    if sign is None:
        return []
    doc.unknown_keys(sign, at + ("sign",), {"secret_env"})
    names = doc.get(sign, at + ("sign",), "secret_env", (str, list), None, required=True)
    names = [names] if isinstance(names, str) else names or []
    environ, dotenv = secrets
    keys = []
    for k, name in enumerate(names):
        where = at + ("sign", "secret_env") + ((k,) if len(names) > 1 else ())
        secret = named_secret(doc, where, name, environ, dotenv)
        if secret is not None:
            keys.append(secret)
    return keys
