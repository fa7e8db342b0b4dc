"""Build (and run) the image with podman on a machine that may pull nothing: `make image`, tests/test_image.py.

    python3 tools/image.py build     # the base when missing (tools/build-base-image.sh), then the image
    python3 tools/image.py show      # the podman build command these variables give

Each quirk of a machine is a variable; the defaults are what the CI VM needs (field notes, "Building and
running the image here"). Set a variable to the empty string to drop its option.

    PODMAN             the engine command                                                  podman
    CONTAINER_RUNTIME  OCI runtime, `podman --runtime` (crun refuses cgroup v1 hybrid:     runc
                       "cgroups in hybrid mode not supported")
    CONTAINER_ULIMITS  rlimits of build steps and containers: root may not raise           nofile=20000:20000
                       RLIMIT_NOFILE to podman's default ("setrlimit 'RLIMIT_NOFILE':      nproc=32768:32768
                       Operation not permitted")
    BUILD_CA_BUNDLE    host CA bundle mounted over the build's own, for TLS to PyPI when   /etc/ssl/certs/
                       a local CA re-signs it (Debian's pip reads the system bundle)       ca-certificates.crt
    BASE_IMAGE         the Dockerfile's BASE_IMAGE build argument; a localhost/ name is    localhost/webhook-
                       built by tools/build-base-image.sh when missing                     sidecar-base:bookworm
    IMAGE              the name given to the image built                                   localhost/webhook-
                                                                                           sidecar:dev
    BUILD_CONTEXT      the directory built (its Dockerfile and .dockerignore)              the repository
Elsewhere, `docker build -t webhook-sidecar .` needs none of these (docs/container.md).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULTS = {
    "PODMAN": "podman",
    "CONTAINER_RUNTIME": "runc",
    "CONTAINER_ULIMITS": "nofile=20000:20000 nproc=32768:32768",
    "BUILD_CA_BUNDLE": "/etc/ssl/certs/ca-certificates.crt",
    "BASE_IMAGE": "localhost/webhook-sidecar-base:bookworm",
    "IMAGE": "localhost/webhook-sidecar:dev",
    "BUILD_CONTEXT": str(ROOT),
}
# Where the bundle goes in the build: the path Debian's python3-pip, openssl and apt read.
BUILD_CA_TARGET = "/etc/ssl/certs/ca-certificates.crt"


class EngineError(Exception):
    """A podman command failed; the message carries its command line and output."""


@dataclass(frozen=True)
class Engine:
    podman: tuple[str, ...]
    runtime: str
    ulimits: tuple[str, ...]
    ca_bundle: str
    base_image: str
    image: str
    context: Path

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Engine:
        """The engine as the variables above describe it (unset: the default; empty: no option)."""
        get = {name: environ.get(name, default) for name, default in DEFAULTS.items()}
        ca_bundle = get["BUILD_CA_BUNDLE"]
        if "BUILD_CA_BUNDLE" not in environ and not Path(ca_bundle).is_file():
            ca_bundle = ""  # the default applies where the file exists; a path given must exist
        return cls(podman=tuple(shlex.split(get["PODMAN"])) or ("podman",), runtime=get["CONTAINER_RUNTIME"],
                   ulimits=tuple(get["CONTAINER_ULIMITS"].split()), ca_bundle=ca_bundle,
                   base_image=get["BASE_IMAGE"], image=get["IMAGE"] or DEFAULTS["IMAGE"],
                   context=Path(get["BUILD_CONTEXT"] or ROOT))

    def command(self, *args: str) -> list[str]:
        """`podman [--runtime R] args...`"""
        runtime = ["--runtime", self.runtime] if self.runtime else []
        return [*self.podman, *runtime, *args]

    def limit_flags(self) -> list[str]:
        """The --ulimit options, for `podman build` and `podman run` alike."""
        return [flag for limit in self.ulimits for flag in ("--ulimit", limit)]

    def build_flags(self) -> list[str]:
        """Options of `podman build` beyond the tag and the context."""
        flags = self.limit_flags()
        if self.ca_bundle:
            flags += ["--volume", f"{self.ca_bundle}:{BUILD_CA_TARGET}:ro"]
        if self.base_image:
            flags += ["--build-arg", f"BASE_IMAGE={self.base_image}"]
        return flags

    def run(self, *args: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run `podman args...`; EngineError with its output when it fails and `check` is set."""
        cmd = self.command(*args)
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        if check and out.returncode != 0:
            raise EngineError(f"{shlex.join(cmd)} exited {out.returncode}:\n{out.stdout}{out.stderr}".rstrip())
        return out

    def exists(self, image: str) -> bool:
        return self.run("image", "exists", image, check=False).returncode == 0

    def base_is_local(self) -> bool:
        """Whether the base is ours to build (a localhost/ name) rather than one to pull."""
        return self.base_image.startswith("localhost/")

    def ensure_base(self, timeout: float = 600) -> float | None:
        """Build the local base image when it is missing; seconds taken, or None when there was nothing to do."""
        if not self.base_image or not self.base_is_local() or self.exists(self.base_image):
            return None
        started = time.monotonic()
        env = {**os.environ, "BASE_IMAGE": self.base_image, "PODMAN": shlex.join(self.command())}
        # Its own session: a signal mmdebstrap sends its process group on a failure stays there.
        out = subprocess.run(["bash", str(ROOT / "tools" / "build-base-image.sh")], env=env, capture_output=True,
                             text=True, timeout=timeout, check=False, start_new_session=True)
        if out.returncode != 0:
            raise EngineError(f"tools/build-base-image.sh exited {out.returncode}:\n{out.stdout}{out.stderr}".rstrip())
        return time.monotonic() - started

    def build_args(self) -> list[str]:
        """`build ...`: the context's Dockerfile as self.image. A local base is never pulled."""
        pull = "never" if self.base_is_local() else "missing"
        return ["build", "--quiet", f"--pull={pull}", *self.build_flags(), "--tag", self.image,
                "--file", str(self.context / "Dockerfile"), str(self.context)]

    def image_id(self, image: str) -> str:
        out = self.run("image", "inspect", "--format", "{{.Id}}", image, check=False)
        return out.stdout.strip() if out.returncode == 0 else ""

    def build(self, timeout: float = 900) -> float:
        """Build the image; seconds taken. The image it replaces is removed (unless a container uses it), so
        repeated builds of a changing checkout do not pile up untagged images."""
        previous = self.image_id(self.image)
        started = time.monotonic()
        self.run(*self.build_args(), timeout=timeout)
        seconds = time.monotonic() - started
        if previous and previous != self.image_id(self.image):
            self.run("image", "rm", previous, check=False)
        return seconds


def main(argv: list[str]) -> int:
    engine = Engine.from_env()
    if argv == ["show"]:
        print(shlex.join(engine.command(*engine.build_args())))
        return 0
    if argv != ["build"]:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        base_s = engine.ensure_base()
        print(f"image: base {engine.base_image or '(the Dockerfile default)'}: "
              + (f"built in {base_s:.0f} s" if base_s is not None else "present, not rebuilt"), file=sys.stderr)
        build_s = engine.build()
    except (EngineError, subprocess.TimeoutExpired) as exc:
        print(f"image: {exc}", file=sys.stderr)
        return 1
    print(f"image: built {engine.image} in {build_s:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
