"""docs/providers.md as a user reads it: every yaml block served by one sidecar, every sh block run against it.

Each `send` (and curl) line of the page must get 200 `accepted`: the page's config
examples load, its payloads route to a hook, and its command lines sign as the
senders do.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import ROOT, Sidecar, serving
from .provider_cases import DISCORD_PRIVATE, DISCORD_PUBLIC

DOC = ROOT / "docs" / "providers.md"
BLOCK = re.compile(r"```(yaml|sh)\n(.*?)```", re.S)
# Secrets in the form each provider needs; every other secret_env gets a plain random-looking string.
SPECIAL = {
    "GITLAB_SIGNING_TOKEN": "whsec_" + base64.b64encode(b"a 32-byte GitLab signing key!!!!").decode(),
    "WEBHOOK_SIGNING_SECRET": "whsec_" + base64.b64encode(b"standard webhooks test key").decode(),
    "STRIPE_WEBHOOK_SECRET": "whsec_test_secret",
    "DISCORD_PUBLIC_KEY": DISCORD_PUBLIC.decode(),
    "DISCORD_PRIVATE_KEY": DISCORD_PRIVATE.decode(),
    "ALERTMANAGER_BASIC": "alertmanager:correct horse",
}


def blocks(kind: str) -> list[str]:
    return [text for k, text in BLOCK.findall(DOC.read_text()) if k == kind]


@pytest.fixture(scope="module")
def documented(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Sidecar, Path, dict[str, str]]]:
    directory = tmp_path_factory.mktemp("docs")
    endpoints = "".join(blocks("yaml"))
    for script in set(re.findall(r"run: (hooks/[\w.]+)", endpoints)):
        path = directory / script
        path.parent.mkdir(exist_ok=True)
        path.write_text("#!/bin/sh\ncat > /dev/null\n")
        path.chmod(0o755)
    (directory / "config.yaml").write_text("request_timeout_s: 5\nendpoints:\n" + endpoints)
    names = set(re.findall(r"secret_env: (\w+)", endpoints)) | {"DISCORD_PRIVATE_KEY"}
    env = {name: SPECIAL.get(name, f"test secret for {name.lower()}") for name in names}
    with serving(directory / "config.yaml", env=env) as sidecar:
        yield sidecar, directory, env


def test_every_provider_has_a_section() -> None:
    from sidecar.providers import PROVIDERS

    text = DOC.read_text()
    for name in PROVIDERS:
        assert re.search(rf"provider: {re.escape(name)}\s", text), name
        assert f"--provider {name} " in text, name


@pytest.mark.parametrize("index", range(len(blocks("sh"))))
def test_every_sh_block_runs_against_a_running_sidecar(documented: tuple[Sidecar, Path, dict[str, str]],
                                                        index: int) -> None:
    sidecar, directory, env = documented
    script = blocks("sh")[index].replace("127.0.0.1:8080", f"127.0.0.1:{sidecar.port}")
    if ("openssl" in script and not shutil.which("openssl")) or ("curl" in script and not shutil.which("curl")):
        pytest.skip("openssl or curl is not installed")
    bin_dir = Path(sys.executable).parent  # where the venv's webhook-sidecar console script is
    run_env = {"PATH": f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}", **env}
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", script], capture_output=True, text=True,
                            cwd=directory, env=run_env, timeout=60)
    assert result.returncode == 0, (script, result.stdout, result.stderr)
    requests = len(re.findall(r"^(?:webhook-sidecar send|curl) ", script, re.M))
    # Accepted: the JSON status, or what the sender needs (discord, twilio; a slack slash command: empty).
    answers = sum(result.stdout.count(a) for a in ('"status":"accepted"', '\n{"type":5}\n', '<Response/>'))
    answers += len(re.findall(r"^200 OK\n\n", result.stdout, re.M))
    assert answers == requests, (script, result.stdout, result.stderr)
