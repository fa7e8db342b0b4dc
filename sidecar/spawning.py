"""How a hook process is started, whoever starts it: the contracts (a started Process, what Spawns one under
a ruleset, what Forks one for the sidecar) and the starts without a policy. The sandbox's policies
(sandbox.py) and the fork server (forkserver.py) play these roles; procs.start is their one caller."""

from __future__ import annotations

import subprocess
from collections.abc import Mapping, Sequence
from typing import Protocol


def popen(argv: Sequence[str], stdin: int, output: int, env: Mapping[str, str], cwd: str | None,
          stdout: int | None = None) -> subprocess.Popen[bytes]:
    """Start `argv` in a session of its own (its group is the run's), reading `stdin` and writing stdout
    and stderr to `output` (plain fds; stdout to `stdout` when given), with `env` alone and no other
    descriptor of the sidecar's."""
    return subprocess.Popen(list(argv), stdin=stdin, stdout=output if stdout is None else stdout, stderr=output,
                            env=dict(env), cwd=cwd, start_new_session=True, close_fds=True)


class Process(Protocol):
    """A started hook, as procs.Hook uses it: subprocess.Popen, or forkserver.Forked."""

    pid: int
    returncode: int | None

    def poll(self) -> int | None: ...
    def wait(self, timeout: float | None = None) -> int: ...
    def kill(self) -> None: ...


class Spawns(Protocol):
    """What starts a hook under a ruleset: a built Policy, or a Ruled that builds it on first use."""

    def spawn(self, argv: Sequence[str], stdin: int, output: int, env: Mapping[str, str], cwd: str | None,
              retry_denied: bool = True, stdout: int | None = None) -> Process: ...


class Forks(Protocol):
    """A process that forks hooks for the sidecar (forkserver.ForkServer): popen's arguments, and for a
    sandboxed hook a ruleset its child enters itself (-1: none, capabilities and no_new_privs only)."""

    def spawn(self, argv: Sequence[str], stdin: int, output: int, env: Mapping[str, str], cwd: str | None,
              stdout: int | None = None, ruleset: int = -1, sandboxed: bool = False) -> Process: ...


def spawn(policy: Spawns | None, argv: Sequence[str], stdin: int, output: int, env: Mapping[str, str],
          cwd: str | None, retry_denied: bool = True, stdout: int | None = None) -> Process:
    """Start a hook (popen's arguments) under `policy`; None: as the sidecar's other children."""
    if policy is None:
        return popen(argv, stdin, output, env, cwd, stdout)
    return policy.spawn(argv, stdin, output, env, cwd, retry_denied, stdout=stdout)


def plain(forks: Forks | None, argv: Sequence[str], stdin: int, output: int, env: Mapping[str, str],
          cwd: str | None, stdout: int | None = None) -> Process:
    """Start a hook as the sidecar's other children (no policy): by `forks` when given, else here."""
    if forks is not None:
        return forks.spawn(argv, stdin, output, env, cwd, stdout)
    return popen(argv, stdin, output, env, cwd, stdout)
