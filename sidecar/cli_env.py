"""Where the CLI's values come from besides its flags: the SIDECAR_* twins and the env file."""

from __future__ import annotations

import os
from pathlib import Path

from . import config as config_mod


def env(name: str, default: str | None = None) -> str | None:
    """A flag's SIDECAR_* twin."""
    return os.environ.get(f"SIDECAR_{name}", default)


def env_file(value: str | None, config: str | None = None) -> Path:
    """The env file: the one named (--env-file, SIDECAR_ENV_FILE), which must exist, else `.env` beside
    the config (like every other relative path of it), or in the working directory without a config.

    An explicit path, never find_dotenv(): an installed console script would search from its own
    location. The default may be missing (secrets may all be in the environment) and appear later."""
    if value:
        if not os.path.isfile(value):
            raise SystemExit(f"webhook-sidecar: env file {value} does not exist (--env-file / SIDECAR_ENV_FILE);"
                             " leave the option out to use .env beside the config when there is one")
        return Path(os.path.abspath(value))
    return Path(os.path.abspath(os.path.join(os.path.dirname(config) if config else "", ".env")))


def from_env(name: str, file: Path) -> str | None:
    """A variable from the real environment first, then from the env file (read only if it exists)."""
    return os.environ.get(name) or config_mod.read_env_file(file).get(name)
