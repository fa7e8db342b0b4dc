"""adnanh/webhook as one more variant of the one-core bench (`bench/run.py --cpus 1 --adnanh PATH`).

Its binary is built elsewhere, from its own source; neither its code nor a script building it belongs
in this repository. The route is the sidecar's bench route in its terms (hooks.json below): the hook id
`webhook` under an empty URL prefix (so the same POST /webhook), a `payload-hmac-sha256` trigger rule
on X-Hub-Signature-256 with the same secret, and the same `/bin/sh -c` hook. It cannot pipe the payload
to the command's stdin, so it writes the raw body to a temporary file (`pass-file-to-command`, source
`raw-request-body`) whose name the command gets in $PAYLOAD_FILE, and the hook reads that file instead
of its stdin. It answers at once, without waiting for the command (its default,
`include-command-output-in-response: false`), and runs every command at once in a goroutine of its
own: no queue, nothing durable. It runs without -verbose (its default: no log), so what it accepted
is counted from the answers (2xx), not from a log.
"""

from __future__ import annotations

import json
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import workload
from servers import Budget, Served, get

BUILT = ("adnanh/webhook built from its source at tag 2.8.2 with Go 1.22 (Debian bookworm-backports "
         "golang-1.22-go): GOTOOLCHAIN=local GOPROXY=off GOFLAGS=-mod=vendor go build")
PAYLOAD = ("the raw body as a file: pass-file-to-command {source: raw-request-body, envname: PAYLOAD_FILE}, "
           'the hook reads "$PAYLOAD_FILE" (adnanh cannot pipe it to stdin)')
HOOK_SCRIPT = 'cat "$PAYLOAD_FILE" >/dev/null; echo x >> {count}'


def hooks_json(count: Path | str) -> list[dict]:
    """The hooks.json of the bench route: `count` is the file each run appends a line to."""
    return [{
        "id": workload.PATH.strip("/"),
        "execute-command": "/bin/sh",
        "pass-arguments-to-command": [{"source": "string", "name": "-c"},
                                      {"source": "string", "name": HOOK_SCRIPT.format(count=count)}],
        "pass-file-to-command": [{"source": "raw-request-body", "envname": "PAYLOAD_FILE"}],
        "trigger-rule": {"match": {"type": "payload-hmac-sha256", "secret": workload.SECRET,
                                   "parameter": {"source": "header", "name": "X-Hub-Signature-256"}}},
    }]


def version(binary: Path) -> str:
    out = subprocess.run([str(binary), "-version"], capture_output=True, text=True, timeout=10).stdout
    return out.strip().removeprefix("webhook version ") or "?"


def usable(binary: Path) -> bool:
    return binary.is_file() and bool(binary.stat().st_mode & 0o111)


def settings(binary: Path) -> dict:
    """What the results JSON says about it."""
    return {"binary": str(binary), "version": version(binary), "built": BUILT, "payload": PAYLOAD,
            "hooks_json": hooks_json("COUNT"), "accepted": "its 2xx answers (no log)"}


def describe() -> str:
    """The lines printed before the rounds: how it was built and configured."""
    return (f"adnanh: {BUILT}\n"
            f"adnanh: hooks.json {json.dumps(hooks_json('COUNT'))}\n"
            f"adnanh: payload to the hook: {PAYLOAD}; answers at once (include-command-output-in-response: "
            "false), runs each command at once (no queue, nothing durable), no -verbose (no log)")


def note(rounds: list[dict]) -> str:
    """The note under the table: what it answers to a bad signature, how its acceptances were counted."""
    answers = sorted({r["bad_signature_answer"] for r in rounds})
    return (f"adnanh: answers a bad signature with {' / '.join(repr(a) for a in answers)}: its row "
            "\"bad-signature answers/s\" counts those answers; its accepted deliveries are its 2xx answers "
            "as wrk counted them (no log); its CPU is its process's own and its reaped children's (the hooks)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Adnanh(Served):
    """One adnanh/webhook process serving hooks_json(count) on 127.0.0.1, in a directory of its own (its
    hooks.json, and TMPDIR for the payload files), optionally pinned (taskset; its commands inherit it)."""

    def __init__(self, budget: Budget, binary: Path, count: Path, cpus: str | None = None) -> None:
        self.budget = budget
        self.binary = binary
        self.cpus = cpus
        self.dir = Path(tempfile.mkdtemp(prefix="bench-adnanh-"))
        (self.dir / "tmp").mkdir()
        self.hooks = self.dir / "hooks.json"
        self.hooks.write_text(json.dumps(hooks_json(count), indent=1) + "\n")
        self.port = 0
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 15) -> None:
        """Start it on a free port and wait until it answers (a port taken meanwhile: another one)."""
        pin = ["taskset", "-c", self.cpus] if self.cpus is not None else []
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "TMPDIR": str(self.dir / "tmp")}
        for _ in range(3):
            self.port = free_port()
            with open(self.dir / "output.log", "ab") as out:
                self.proc = subprocess.Popen(  # taskset execs: the pid is webhook's
                    [*pin, str(self.binary), "-hooks", str(self.hooks), "-ip", "127.0.0.1",
                     "-port", str(self.port), "-urlprefix", ""],
                    stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.dir, env=env)
            self.budget.procs.append(self.proc)
            deadline = time.monotonic() + timeout
            while self.proc.poll() is None and time.monotonic() < deadline:
                try:
                    get(self.port, "/")  # any answer (404) will do
                    return
                except OSError:
                    time.sleep(0.005)
            self.stop()
        raise SystemExit(f"adnanh/webhook did not start:\n{(self.dir / 'output.log').read_text()[-3000:]}")

