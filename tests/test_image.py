"""The image, built and run for real with podman (`make image-test` runs only this file).

podman builds the Dockerfile (on a Debian base made by tools/build-base-image.sh where nothing can be pulled)
and runs it as the chart's pod runs it: read-only root filesystem, user 10001, every capability dropped, the
chart's default config.yaml and hooks in a directory laid out as the kubelet lays out a ConfigMap volume
(mounted read-only), the spool and /tmp writable, the webhook secret passed as the chart passes it. A signed
delivery goes to the published port; `podman logs` must show both default hooks finishing with exit code 0,
and `podman stop` (SIGTERM) a drain and exit code 0.

Skips with the reason where podman is missing, the user is not root, or podman cannot start a container here;
REQUIRE_IMAGE_TEST=1 (set by `make image-test`) turns those skips into failures. tools/image.py's variables
(PODMAN, CONTAINER_RUNTIME, CONTAINER_ULIMITS, BUILD_CA_BUNDLE, BASE_IMAGE, IMAGE) adapt it to a machine.
"""

from __future__ import annotations

import http.client
import json
import os
import shlex
import shutil
import subprocess
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import pytest
import yaml

from .conftest import ROOT, SECRET, github_signature, wait_for
from .support import load_tool
from .test_packaging import chart_files

CHART = ROOT / "helm" / "webhook-sidecar"
VALUES = yaml.safe_load((CHART / "values.yaml").read_text())
CONFIG_DIR, SPOOL_DIR = "/etc/webhook-sidecar", "/var/lib/webhook-sidecar"
UID = 10001
PUSH_TO_MAIN = json.dumps({"ref": "refs/heads/main", "repository": {"full_name": "acme/web"}}).encode()


image_tools = load_tool("image")


def _cannot(reason: str) -> NoReturn:
    """Skip with `reason`, or fail with it when the run asked for the image test (REQUIRE_IMAGE_TEST=1)."""
    if os.environ.get("REQUIRE_IMAGE_TEST") == "1":
        pytest.fail(f"REQUIRE_IMAGE_TEST=1 but {reason}", pytrace=False)
    pytest.skip(reason)


@dataclass
class Built:
    engine: Any
    base_seconds: float | None
    build_seconds: float


@pytest.fixture(scope="module")
def built() -> Built:
    """The image, built from the working tree once per run; skips where no container can run here."""
    # pytest does not keep a module fixture's skip or failure: each test would build again. Keep it here.
    if isinstance(_BUILT.get("outcome"), BaseException):
        raise _BUILT["outcome"]
    try:
        return _BUILT.setdefault("outcome", _build())
    except BaseException as exc:  # pytest's skip and fail outcomes are BaseExceptions
        _BUILT["outcome"] = exc
        raise


_BUILT: dict[str, Any] = {}


def _build() -> Built:
    engine = image_tools.Engine.from_env()
    if not shutil.which(engine.podman[0]):
        _cannot(f"{engine.podman[0]} is not installed (apt-get install podman runc mmdebstrap; .ci/run does)")
    if os.geteuid() != 0:
        _cannot(f"podman runs containers here as root only (rootless needs subuid ranges); euid is {os.geteuid()}")
    info = engine.run("info", "--format", "{{.Host.OCIRuntime.Name}}", check=False)
    if info.returncode != 0:
        _cannot(f"podman does not work here ({shlex.join(engine.command('info'))}): {_last_line(info)}")
    if (engine.base_is_local() and not shutil.which("mmdebstrap")
            and not engine.exists(engine.base_image)):
        _cannot(f"the base image {engine.base_image} is missing and mmdebstrap, which builds it, is not installed")
    try:
        base_seconds = engine.ensure_base()
    except image_tools.EngineError as exc:
        pytest.fail(str(exc), pytrace=False)
    if engine.base_image:
        # The base and the run options alone: an engine that cannot start a container here is a skip, not a
        # failure of the image. The reason is podman's own last line (e.g. crun's cgroup or setrlimit error).
        probe = engine.run("run", "--rm", "--read-only", "--user", str(UID), *engine.limit_flags(),
                           "--publish", "127.0.0.1::8080", engine.base_image, "true", check=False)
        if probe.returncode != 0:
            _cannot(f"podman cannot run a container here ({shlex.join(engine.command('run'))} ...): "
                    + _last_line(probe))
    try:
        build_seconds = engine.build()
    except image_tools.EngineError as exc:
        pytest.fail(str(exc), pytrace=False)
    return Built(engine, base_seconds, build_seconds)


def _last_line(out: subprocess.CompletedProcess[str]) -> str:
    return (out.stderr.strip() or out.stdout.strip() or f"exit status {out.returncode}").splitlines()[-1]


def kubelet_volume(directory: Path, files: dict[str, str], mode: int, group: int | None = None) -> None:
    """`files` laid out as the kubelet writes a ConfigMap or Secret volume with defaultMode `mode` (and the
    pod's fsGroup `group`): a ..<timestamp> directory, the ..data symlink to it, one symlink per key."""
    stamp = directory / "..2024_01_01_00_00_00.000000001"
    stamp.mkdir(parents=True)
    for name, text in files.items():
        (stamp / name).write_text(text)
        if group is not None:
            os.chown(stamp / name, 0, group)
        (stamp / name).chmod(mode)
    (directory / "..data").symlink_to(stamp.name)
    for name in files:
        (directory / name).symlink_to(f"..data/{name}")
    for path in (directory, stamp):
        path.chmod(0o755)  # a mount point's own mode is what user 10001 sees, not its parents'


def _names(value: Any) -> list[str]:
    return [] if not value else [value] if isinstance(value, str) else list(value)


@dataclass
class Container:
    engine: Any
    name: str
    port: int = 0

    def logs(self) -> list[dict[str, Any]]:
        out = self.engine.run("logs", self.name)
        lines = [line for line in (out.stdout + out.stderr).splitlines() if line.strip()]
        return [json.loads(line) if line.startswith("{") else {"msg": "(not json)", "line": line} for line in lines]

    def find(self, msg: str) -> list[dict[str, Any]]:
        return [entry for entry in self.logs() if entry.get("msg") == msg]

    def state(self) -> dict[str, Any]:
        return json.loads(self.engine.run("inspect", "--format", "{{json .State}}", self.name).stdout)

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def deliver(self, body: bytes, delivery: str, secret: str = SECRET) -> tuple[int, bytes]:
        """POST a GitHub push signed as GitHub signs it (conftest's own HMAC, not the sidecar's)."""
        return self.request("POST", "/webhook", body, {
            "Content-Type": "application/json", "X-GitHub-Event": "push", "X-GitHub-Delivery": delivery,
            "X-Hub-Signature-256": github_signature(body, secret)})


@pytest.fixture
def container(built: Built, tmp_path: Path) -> Iterator[Container]:
    """The image started as the chart's Deployment starts it, with the chart's default values."""
    engine = built.engine
    config = yaml.safe_load(VALUES["config"])
    # The ConfigMap: config.yaml and the hooks the chart adds (its example hooks that config.yaml runs, then
    # `hooks`), computed by test_packaging's chart_files, the one place that knows how the chart builds it.
    kubelet_volume(tmp_path / "config", chart_files(VALUES), 0o755)
    spool = tmp_path / "spool"  # the emptyDir; fsGroup 10001 makes it the group's
    spool.mkdir(mode=0o770)
    os.chown(spool, UID, UID)
    mounts = ["--volume", f"{tmp_path / 'config'}:{CONFIG_DIR}:ro", "--volume", f"{spool}:{SPOOL_DIR}"]

    env = {"SIDECAR_GRACE": str(VALUES["drain"]["graceSeconds"]), "SIDECAR_LOG_LEVEL": VALUES["logLevel"]}
    # Secrets as the chart passes them: the variables config.yaml names with secret_env (envFrom the Secret;
    # `--env NAME` takes the value from podman's environment, not its argv), and the files it names with
    # secret_file (the Secret's volume: mode 0440, group 10001, mounted read-only).
    secret_env: set[str] = set()
    secret_dirs: dict[str, dict[str, str]] = {}
    for endpoint in config["endpoints"]:
        secret_env.update(_names(endpoint.get("secret_env")))
        for path in _names(endpoint.get("secret_file")):
            secret_dirs.setdefault(os.path.dirname(path), {})[os.path.basename(path)] = SECRET
    assert secret_env or secret_dirs, "the chart's default config names no secret"
    for n, (directory, keys) in enumerate(sorted(secret_dirs.items())):
        kubelet_volume(tmp_path / f"secret-{n}", keys, 0o440, group=UID)
        mounts += ["--volume", f"{tmp_path / f'secret-{n}'}:{directory}:ro"]

    name = f"webhook-sidecar-test-{os.getpid()}-{time.monotonic_ns()}"
    run_env = {**os.environ, **dict.fromkeys(secret_env, SECRET)}
    cmd = engine.command(
        "run", "--detach", "--name", name, *engine.limit_flags(),
        # securityContext of values.yaml: read-only root, 10001:10001, no capabilities, no privilege gain.
        "--read-only", "--user", f"{UID}:{UID}", "--cap-drop", "all", "--security-opt", "no-new-privileges",
        "--tmpfs", "/tmp:rw,nosuid,nodev,mode=1777",
        *mounts, *[f for k, v in env.items() for f in ("--env", f"{k}={v}")],
        *[f for k in sorted(secret_env) for f in ("--env", k)],
        "--publish", "127.0.0.1::8080", engine.image)
    started = subprocess.run(cmd, env=run_env, capture_output=True, text=True, timeout=60, check=False)
    assert started.returncode == 0, f"{shlex.join(cmd)}:\n{started.stderr}"
    box = Container(engine, name)
    try:
        def listening() -> bool:
            state = box.state()
            assert state["Status"] != "exited", f"the container exited {state['ExitCode']}: {box.logs()}"
            return bool(box.find("server.listening"))

        wait_for(listening, 30, 0.2)
        address = engine.run("port", name, "8080/tcp").stdout.strip().splitlines()[0]
        box.port = int(address.rsplit(":", 1)[1])
        yield box
    finally:
        engine.run("rm", "--force", "--volumes", "--time", "0", name, check=False)


def hooks_finished(box: Container, delivery: str, routes: int = 2) -> dict[str, dict[str, Any]]:
    """hook.finished lines of `delivery` by route, once `routes` of them are in `podman logs`."""
    def finished() -> dict[str, dict[str, Any]] | None:
        runs = {e["route"]: e for e in box.find("hook.finished") if e.get("delivery") == delivery}
        return runs if len(runs) >= routes else None

    return wait_for(finished, 20, 0.2)


def test_the_image_is_the_dockerfile_s_non_root_sidecar(built: Built) -> None:
    engine = built.engine
    base = "present" if built.base_seconds is None else f"built in {built.base_seconds:.0f} s"
    print(f"base image {engine.base_image or '(Dockerfile default)'}: {base}; "  # shown by `make image-test`
          f"{engine.image}: built in {built.build_seconds:.0f} s")
    config = json.loads(engine.run("image", "inspect", "--format", "{{json .Config}}", engine.image).stdout)
    assert config["User"] == f"{UID}:{UID}"
    assert config["Entrypoint"] == ["/usr/bin/tini", "--", "webhook-sidecar"]
    assert "8080/tcp" in config["ExposedPorts"] and config["StopSignal"] == "SIGTERM"
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    out = engine.run("run", "--rm", "--read-only", *engine.limit_flags(), engine.image, "--version")
    assert version in out.stdout + out.stderr, out


# Run by the image's own interpreter: every module of the package, and every top-level module of each
# distribution it requires (psycopg's libpq, cryptography's Rust extension), must import in the image.
IMPORT_EVERYTHING = """
import importlib, importlib.metadata as md, pkgutil, re, sidecar
norm = lambda name: re.sub(r"[-_.]+", "-", name).lower()
required = {norm(re.split(r"[\\s\\[<>=;!~(]", r, maxsplit=1)[0]) for r in md.requires("webhook-sidecar") or []
            if "extra ==" not in r}
modules = sorted(m.name for m in pkgutil.walk_packages(sidecar.__path__, "sidecar.")
                 if not m.name.endswith("__main__"))
tops = sorted(top for top, dists in md.packages_distributions().items()
              if not top.startswith("_") and any(norm(d) in required for d in dists))
for name in modules + tops:
    importlib.import_module(name)
print(len(modules), "modules;", len(required), "requirements;", " ".join(tops))
"""


def test_every_module_and_dependency_imports_in_the_image(built: Built) -> None:
    engine = built.engine
    out = engine.run("run", "--rm", "--read-only", "--user", str(UID), *engine.limit_flags(),
                     "--entrypoint", "/opt/webhook-sidecar/bin/python", engine.image, "-c", IMPORT_EVERYTHING)
    modules, requirements, tops = out.stdout.split(";")
    required = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert int(requirements.split()[0]) == len(required), out.stdout
    assert int(modules.split()[0]) > 10 and "yaml" in tops.split(), out.stdout


def test_a_signed_delivery_runs_both_default_hooks_in_the_read_only_container(container: Container) -> None:
    status, body = container.request("GET", "/readyz")
    assert status == 200, body
    uid = container.engine.run("exec", container.name, "id", "-u").stdout.strip()
    assert uid == str(UID)

    status, body = container.deliver(PUSH_TO_MAIN, "img-1", secret="not the secret")
    assert status == 401, body
    status, body = container.deliver(PUSH_TO_MAIN, "img-1")
    assert status == 200, body
    assert json.loads(body)["status"] == "accepted"

    runs = hooks_finished(container, "img-1")
    assert {route: run["exit_code"] for route, run in runs.items()} == {"on_push": 0, "log_event": 0}, runs
    assert "deploying web: push delivery img-1" in runs["on_push"]["output_tail"]
    # The read-only root filesystem held: the hooks and the sidecar wrote only to the spool and /tmp.
    assert container.engine.run("exec", container.name, "touch", "/etc/webhook-sidecar/x",
                                check=False).returncode != 0


def test_podman_stop_drains_and_exits_0(container: Container) -> None:
    assert container.deliver(PUSH_TO_MAIN, "img-stop")[0] == 200
    hooks_finished(container, "img-stop")
    grace = VALUES["drain"]["graceSeconds"] + VALUES["drain"]["marginSeconds"]
    started = time.monotonic()
    container.engine.run("stop", "--time", str(grace), container.name, timeout=grace + 30)
    took = time.monotonic() - started
    state = container.state()
    assert state["ExitCode"] == 0, (state, container.logs())
    assert took < grace, f"podman stop took {took:.1f} s: SIGKILL after the grace, not a drain"
    draining, stopped = container.find("server.draining"), container.find("server.stopped")
    assert draining and draining[0]["reason"] == "SIGTERM", container.logs()
    assert stopped and stopped[0]["drained"] is True and stopped[0]["pending"] == 0, container.logs()


def test_the_chart_s_default_image_is_where_the_release_workflow_publishes_it() -> None:
    """No container engine needed: the names in values.yaml, Chart.yaml, pyproject.toml and release.yml agree."""
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "release.yml").read_text())
    assert workflow[True]["push"]["tags"] == ["v*"]  # YAML 1.1 reads the key `on` as True
    steps = {step["uses"].split("@")[0]: step for job in workflow["jobs"].values() for step in job["steps"]
             if "uses" in step}
    assert steps["docker/metadata-action"]["with"]["images"] == "ghcr.io/${{ github.repository }}"
    push = steps["docker/build-push-action"]["with"]
    assert push["push"] is True and set(push["platforms"].split(",")) == {"linux/amd64", "linux/arm64"}
    assert {"docker/setup-qemu-action", "docker/setup-buildx-action", "docker/login-action"} <= set(steps)

    repository = VALUES["image"]["repository"]
    owner, _, name = repository.removeprefix("ghcr.io/").partition("/")
    assert repository.startswith("ghcr.io/") and owner and name == "webhook-sidecar", repository
    chart_script = "\n".join(step.get("run", "") for step in workflow["jobs"]["chart"]["steps"])
    # The chart job points the packaged chart at the image just pushed by replacing this exact line.
    assert f"^  repository: {repository}$" in chart_script
    assert 'helm push "dist/webhook-sidecar-$VERSION.tgz" "oci://ghcr.io/$owner/charts"' in chart_script
    # An empty tag means the chart's appVersion: the tag the workflow pushes for this version.
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert VALUES["image"]["tag"] == "" and chart["appVersion"] == chart["version"] == version, (chart, version)
