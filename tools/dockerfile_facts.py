"""What the Dockerfile's final stage runs: parsed here once for tools/check_chart.py and tests/test_packaging.py.

Only the subset this repository's Dockerfile uses: line continuations, comments, `FROM` starting a stage,
and JSON-form ENTRYPOINT / CMD (the shell form would put /bin/sh -c in front of the server).
"""

from __future__ import annotations

import json
import posixpath
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class FinalStage:
    base: str
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    user: str = ""
    workdir: str = "/"
    expose: list[str] = field(default_factory=list)
    stopsignal: str = ""

    @property
    def argv(self) -> list[str]:
        """The container's command line: ENTRYPOINT followed by CMD."""
        return self.entrypoint + self.cmd

    @property
    def app_argv(self) -> list[str]:
        """argv without the init process (tini ... --) in front of the application."""
        argv = self.argv
        return argv[argv.index("--") + 1:] if "--" in argv else argv


def instructions(text: str) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) for each instruction, continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        keyword, _, args = full.partition(" ")
        out.append((keyword.upper(), args.strip()))
    return out


def _exec_form(args: str, keyword: str) -> list[str]:
    try:
        value = json.loads(args)
    except ValueError as e:
        raise ValueError(f"{keyword} must use the JSON (exec) form, got {args!r}") from e
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{keyword} must be a JSON list of strings, got {args!r}")
    return value


def _env_pairs(args: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for token in shlex.split(args):
        name, sep, value = token.partition("=")
        if not sep:
            raise ValueError(f"ENV must use the NAME=value form, got {args!r}")
        # $NAME / ${NAME} of an earlier ENV are expanded, as Docker does.
        env[name] = re.sub(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", lambda m: env.get(m.group(1), m.group(0)), value)
    return env


def final_stage(path: Path) -> FinalStage:
    """The last stage of the Dockerfile at `path` (the image that runs)."""
    stage: FinalStage | None = None
    for keyword, args in instructions(path.read_text(encoding="utf-8")):
        if keyword == "FROM":
            stage = FinalStage(base=args.split()[0])
        elif stage is None:
            continue
        elif keyword == "ENTRYPOINT":
            stage.entrypoint = _exec_form(args, keyword)
            stage.cmd = []  # Docker resets an inherited CMD when ENTRYPOINT is set
        elif keyword == "CMD":
            stage.cmd = _exec_form(args, keyword)
        elif keyword == "ENV":
            stage.env.update(_env_pairs(args))
        elif keyword == "USER":
            stage.user = args
        elif keyword == "WORKDIR":
            stage.workdir = posixpath.join(stage.workdir, args)
        elif keyword == "EXPOSE":
            stage.expose.extend(args.split())
        elif keyword == "STOPSIGNAL":
            stage.stopsignal = args
    if stage is None:
        raise ValueError(f"{path}: no FROM")
    return stage
