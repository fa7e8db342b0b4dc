"""The container as Kubernetes runs it, without a container engine: the Dockerfile's own command, the chart's
default config.yaml and hook scripts laid out as the kubelet lays out a ConfigMap volume, its Secret as a
Secret volume of files, the image's and the chart's environment; the `helm test` pod's script against it; the
chart README up to date. tools/check-packaging.sh checks the chart itself (schema, render, lint, Kubernetes
schemas) and the Dockerfile.

Paths of the image (/etc/webhook-sidecar, /var/lib/webhook-sidecar, /tmp, the secrets' mount path) are mapped
into a temp dir, the listen address becomes 127.0.0.1:0, and `webhook-sidecar` is this venv's console script;
nothing else changes.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from sidecar import sandbox

from .conftest import ROOT, SECRET, Sidecar, wait_for
from .pg import PASSWORD, server
from .support import outside_writable_dirs

CHART = ROOT / "helm" / "webhook-sidecar"
CONFIG_DIR, SPOOL_DIR = "/etc/webhook-sidecar", "/var/lib/webhook-sidecar"
VALUES = yaml.safe_load((CHART / "values.yaml").read_text())
SECRETS_DIR = VALUES["secrets"]["mountPath"].rstrip("/")
SPOOL_URL_DIR = "/run/secrets/webhook-sidecar-spool"  # spool.postgres: the URL's Secret, config.yaml's spool_url_file
IMAGE_DIRS = (CONFIG_DIR, SPOOL_DIR, "/tmp", SECRETS_DIR, SPOOL_URL_DIR)
PUSH_TO_MAIN = json.dumps({"ref": "refs/heads/main", "repository": {"full_name": "acme/web"}}).encode()


def _dockerfile_facts() -> Any:
    spec = importlib.util.spec_from_file_location("dockerfile_facts", ROOT / "tools" / "dockerfile_facts.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


STAGE = _dockerfile_facts().final_stage(ROOT / "Dockerfile")


class Image:
    """The image's filesystem, as far as the sidecar touches it, under a temp dir."""

    def __init__(self, root: Path) -> None:
        self.root = root
        for directory in IMAGE_DIRS:
            self.path(directory).mkdir(parents=True)
        self.generation = 0

    def path(self, image_path: str) -> Path:
        return self.root / image_path.lstrip("/")

    def map(self, text: str) -> str:
        """Image paths in `text` (an argument, a config file) -> their place under the temp dir."""
        # One pass, and only where a path starts: the temp dir itself may lie under /tmp.
        pattern = r"(?<![\w/.-])(" + "|".join(map(re.escape, IMAGE_DIRS)) + r")(?![\w.-])"
        return re.sub(pattern, lambda m: str(self.path(m.group(1))), text)

    def configmap(self, files: dict[str, str]) -> None:
        """The ConfigMap volume: config.yaml (image paths mapped) and the hooks, mode 0755."""
        self.volume(CONFIG_DIR, {name: self.map(text) if name == "config.yaml" else text
                                 for name, text in files.items()}, 0o755)

    def secret(self, keys: dict[str, str]) -> None:
        """The Secret volume: one file per key, mode 0440 (readable through the pod's fsGroup)."""
        self.volume(SECRETS_DIR, keys, 0o440)

    def volume(self, image_path: str, files: dict[str, str], mode: int) -> None:
        """Write `files` as the kubelet's atomic writer does: a new ..<timestamp> directory, its files with the
        volume's defaultMode, the ..data symlink swapped to it by rename, one symlink per key; then the previous
        ..<timestamp> directory is deleted."""
        volume = self.path(image_path)
        self.generation += 1
        stamp = volume / f"..2024_01_01_00_00_{self.generation:02d}.000000001"
        stamp.mkdir()
        for name, text in files.items():
            (stamp / name).write_text(text)
            (stamp / name).chmod(mode)
        data, data_tmp = volume / "..data", volume / "..data_tmp"
        old = data.resolve() if data.is_symlink() else None
        data_tmp.symlink_to(stamp.name)
        data_tmp.rename(data)
        for name in files:
            if not (volume / name).is_symlink():
                (volume / name).symlink_to(f"..data/{name}")
        if old:
            shutil.rmtree(old)

    def snapshot(self) -> dict[str, bytes]:
        """Every file and directory outside the writable volumes, with its content."""
        writable = [self.path(d) for d in (SPOOL_DIR, "/tmp")]
        return {str(p.relative_to(self.root)): (p.read_bytes() if p.is_file() else b"")
                for p in sorted(self.root.rglob("*"))
                if not any(p == w or w in p.parents for w in writable)}


def chart_files(values: dict[str, Any]) -> dict[str, str]:
    """The ConfigMap's data as the chart builds it: config.yaml, the example hooks it runs (exampleHooks), then
    `hooks`."""
    runs = {run.removeprefix("./") for run in run_paths(values["config"]) if run.startswith("./")}
    examples = {path.name: path.read_text() for path in (CHART / "files" / "hooks").iterdir()
                if values["exampleHooks"] and path.name in runs}
    return {"config.yaml": values["config"], **examples, **values["hooks"]}


def run_paths(config: str) -> list[str]:
    """What config.yaml's routes run: a path, or an argv list's first word."""
    runs = []
    for endpoint in yaml.safe_load(config)["endpoints"]:
        for route in endpoint.get("routes") or []:
            run = route["run"]
            runs.append(run[0] if isinstance(run, list) else run)
    return runs


def image_command(image: Image) -> list[str]:
    argv = [image.map(a) for a in STAGE.app_argv]
    assert argv[0] == "webhook-sidecar", f"the image runs {STAGE.argv}"
    script = Path(sys.executable).with_name("webhook-sidecar")
    argv[:1] = [str(script)] if script.exists() else [sys.executable, "-m", "sidecar"]
    listen = argv.index("--listen")
    argv[listen + 1] = "127.0.0.1:0"
    return argv


def container_env(image: Image) -> dict[str, str]:
    """The image's ENV, the chart's container env, and the variables its Secret would inject."""
    env = {name: image.map(value) for name, value in STAGE.env.items() if name != "PATH"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}"
    env["SIDECAR_GRACE"] = str(VALUES["drain"]["graceSeconds"])
    env["SIDECAR_LOG_LEVEL"] = VALUES["logLevel"]
    if VALUES["secrets"]["asEnv"]:
        env.update(dict.fromkeys(secret_names(VALUES), SECRET))
    return env


def secret_names(values: dict[str, Any]) -> set[str]:
    """The keys of the chart's Secret: every secret_env of the table, every secret_file under the mount path
    (its file name), and those given in secrets.values."""
    names = set(values["secrets"]["values"])
    for endpoint in yaml.safe_load(values["config"])["endpoints"]:
        for key in ("secret_env", "secret_file"):
            items = endpoint.get(key) or []
            for item in [items] if isinstance(items, str) else items:
                if key == "secret_env":
                    names.add(item)
                elif item.startswith(SECRETS_DIR + "/"):
                    names.add(item.removeprefix(SECRETS_DIR + "/"))
    return names


def start(image: Image, env: dict[str, str] | None = None) -> Sidecar:
    """Start the image's command as the container would (with `env`, else container_env's); wait for its
    server.listening line."""
    proc = subprocess.Popen(image_command(image), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env or container_env(image), cwd=image.path(STAGE.workdir))
    sidecar = Sidecar(proc)
    threading.Thread(target=sidecar._read, daemon=True).start()

    def listening() -> dict[str, Any] | None:
        if proc.poll() is not None:
            raise AssertionError(f"the image's command exited {proc.returncode}:\n{''.join(sidecar.raw)}")
        return next((e for e in list(sidecar.logs) if e.get("msg") == "server.listening"), None)

    try:
        sidecar.port = wait_for(listening, 15)["port"]
    except BaseException:
        stop(sidecar)
        raise
    return sidecar


def stop(sidecar: Sidecar) -> None:
    if sidecar.proc.poll() is None:
        sidecar.proc.kill()
        sidecar.proc.wait(10)
    if sidecar.proc.stdout:
        sidecar.proc.stdout.close()


@pytest.fixture
def image(tmp_path: Path) -> Image:
    image = Image(tmp_path / "image")
    image.configmap(chart_files(VALUES))
    # The kubelet writes the Secret's values as they are, without a newline.
    image.secret(dict.fromkeys(secret_names(VALUES), SECRET))
    return image


@pytest.fixture
def container(image: Image) -> Iterator[Sidecar]:
    sidecar = start(image)
    yield sidecar
    stop(sidecar)


def hook_runs(sidecar: Sidecar, delivery: str, routes: int = 2) -> dict[str, dict[str, Any]]:
    """The hook.finished lines of `delivery` by route, once all `routes` of the default table have run."""
    def finished() -> dict[str, dict[str, Any]] | None:
        runs = {e["route"]: e for e in sidecar.find_logs("hook.finished") if e.get("delivery") == delivery}
        return runs if len(runs) == routes else None

    return wait_for(finished)


def test_the_dockerfile_runs_the_sidecar_under_an_init_on_port_8080() -> None:
    assert STAGE.entrypoint[:2] == ["/usr/bin/tini", "--"], "PID 1 must reap the orphans of hook scripts"
    assert STAGE.app_argv == ["webhook-sidecar", "serve", "--config", f"{CONFIG_DIR}/config.yaml",
                              "--listen", "0.0.0.0:8080"]
    assert STAGE.expose == ["8080"] and STAGE.stopsignal == "SIGTERM"
    assert STAGE.user.split(":")[0].isdigit() and int(STAGE.user.split(":")[0]) != 0
    assert STAGE.env["PYTHONDONTWRITEBYTECODE"] == "1"


def test_the_image_command_serves_the_chart_default_config(container: Sidecar) -> None:
    assert container.request("GET", "/healthz").status == 200
    ready = container.request("GET", "/readyz")
    assert ready.status == 200, ready.body

    resp = container.deliver(PUSH_TO_MAIN, event="push", delivery="pkg-1")
    assert resp.status == 200, resp.body
    assert resp.json()["status"] == "accepted"
    # Both default routes ran their ConfigMap scripts: executable, found through the ..data symlinks.
    runs = hook_runs(container, "pkg-1")
    assert {name: run["exit_code"] for name, run in runs.items()} == {"on_push": 0, "log_event": 0}, runs
    assert "deploying web: push delivery pkg-1" in runs["on_push"]["output_tail"]


def test_nothing_is_written_outside_the_spool_and_tmp(image: Image, container: Sidecar) -> None:
    """The chart mounts the root filesystem and the ConfigMap read-only: only the spool and /tmp may change."""
    before = image.snapshot()
    assert container.deliver(PUSH_TO_MAIN, event="push", delivery="pkg-ro").status == 200
    hook_runs(container, "pkg-ro")
    assert container.stop() == 0
    assert image.snapshot() == before


def test_sigterm_drains_and_exits_0_within_the_pod_grace(container: Sidecar) -> None:
    assert container.deliver(PUSH_TO_MAIN, event="push", delivery="pkg-term").status == 200
    hook_runs(container, "pkg-term")
    pod_grace = sum(VALUES["drain"][k] for k in ("preStopSleepSeconds", "graceSeconds", "marginSeconds"))
    assert container.stop(signal.SIGTERM, timeout=pod_grace) == 0


def test_a_hook_edited_in_the_configmap_runs_without_a_restart(image: Image, container: Sidecar) -> None:
    """The kubelet swaps ..data to a new directory and deletes the old one: the next run uses the new script."""
    files = chart_files(VALUES)
    files["on_push.sh"] = "#!/bin/sh\ncat >/dev/null\necho edited in the configmap\n"
    image.configmap(files)
    assert container.deliver(PUSH_TO_MAIN, event="push", delivery="pkg-edit").status == 200
    runs = hook_runs(container, "pkg-edit")
    assert runs["on_push"]["exit_code"] == 0, runs["on_push"]
    assert "edited in the configmap" in runs["on_push"]["output_tail"]


@pytest.mark.skipif(not (shutil.which("openssl") and shutil.which("curl") and shutil.which("bash")),
                    reason="the NOTES.txt command needs bash, openssl and curl")
def test_the_signed_curl_command_of_notes_is_accepted(container: Sidecar) -> None:
    """NOTES.txt's BODY=, SIG= and curl lines, run as a user would, against the image's command."""
    notes = (CHART / "templates" / "NOTES.txt").read_text()
    lines = [line.strip() for line in notes.splitlines() if line.strip().startswith(("BODY=", "SIG=", "curl "))]
    assert [line.split("=")[0].split()[0] for line in lines] == ["BODY", "SIG", "curl"], lines
    assert not any("{{" in line for line in lines), "these lines must run as printed"
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "WEBHOOK_SECRET": SECRET,
           "WEBHOOK_URL": f"http://127.0.0.1:{container.port}/webhook"}
    out = subprocess.run(["bash", "-euo", "pipefail", "-c", "\n".join(lines)], env=env, capture_output=True,
                         text=True, timeout=30, check=False)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["status"] == "accepted", out.stdout


def test_a_rotated_secret_file_is_used_without_a_restart(image: Image, container: Sidecar) -> None:
    """`kubectl apply` of a changed Secret: the kubelet swaps the volume's ..data; the sidecar re-reads the file."""
    assert container.deliver(PUSH_TO_MAIN, event="push", delivery="pkg-old").status == 200
    image.secret(dict.fromkeys(secret_names(VALUES), "rotated secret"))
    wait_for(lambda: container.deliver(PUSH_TO_MAIN, event="push", secret="rotated secret").status == 200, 5, 0.1)
    assert container.deliver(PUSH_TO_MAIN, event="push", delivery="pkg-stale").status == 401


def helm_test_script(image: Image) -> str:
    """The `helm test` pod's shell script (templates/tests/test-delivery.yaml), as the chart's defaults render
    it, with image paths mapped."""
    template = (CHART / "templates" / "tests" / "test-delivery.yaml").read_text()
    block = template.split("      args:\n        - |\n", 1)[1]
    lines = []
    for line in block.splitlines():
        if line.strip() and not line.startswith(" " * 10):
            break
        lines.append(line[10:])
    secret_file = yaml.safe_load(VALUES["config"])["endpoints"][0].get("secret_file") or ""
    secret = secret_file if isinstance(secret_file, str) else secret_file[0]
    script = "\n".join(line for line in lines if line.strip() not in ("{{- if $secret.file }}", "{{- end }}"))
    script = script.replace("{{ $secret.file | quote }}", json.dumps(secret))
    assert "{{" not in script, f"template syntax this test does not render:\n{script}"
    return image.map(script)


def test_the_helm_test_pod_passes_against_the_default_install(image: Image, container: Sidecar) -> None:
    endpoint = yaml.safe_load(VALUES["config"])["endpoints"][0]
    assert isinstance(endpoint.get("secret_file"), str), "the default install reads its secret from a file"
    env = {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
           "URL": f"http://127.0.0.1:{container.port}", "ENDPOINT": endpoint["path"],
           "PROVIDER": endpoint["provider"], "EVENT": VALUES["tests"]["event"], "PAYLOAD": VALUES["tests"]["payload"]}
    out = subprocess.run(["/bin/sh", "-ec", helm_test_script(image)], env=env, capture_output=True, text=True,
                         timeout=60, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "200 OK" in out.stdout
    # Verified and answered: GitHub's ping by the sidecar itself (no hook runs), another event by its routes.
    seen = container.wait_log(lambda e: str(e.get("delivery", "")).startswith("helm-test-"))
    assert seen["msg"] in ("delivery.answered", "delivery.accepted", "delivery.ignored"), seen
    assert seen["event"] == VALUES["tests"]["event"] and seen["status"] == 200


def test_the_helm_test_pod_fails_on_a_wrong_secret(tmp_path: Path, image: Image, container: Sidecar) -> None:
    """The check can fail: signed with a secret the sidecar does not have, the test pod exits non-zero."""
    endpoint = yaml.safe_load(VALUES["config"])["endpoints"][0]
    wrong = tmp_path / "wrong-secrets"
    wrong.mkdir()
    for name in secret_names(VALUES):
        (wrong / name).write_text("not the sidecar's secret")
    script = helm_test_script(image).replace(str(image.path(SECRETS_DIR)), str(wrong))
    env = {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
           "URL": f"http://127.0.0.1:{container.port}", "ENDPOINT": endpoint["path"],
           "PROVIDER": endpoint["provider"], "EVENT": "ping", "PAYLOAD": "{}"}
    out = subprocess.run(["/bin/sh", "-ec", script], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "401" in out.stdout


def _chart_readme() -> Any:
    spec = importlib.util.spec_from_file_location("chart_readme", ROOT / "tools" / "chart_readme.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_chart_readme_is_generated_from_values_yaml() -> None:
    """`helm show readme` prints helm/webhook-sidecar/README.md: it must be what values.yaml gives."""
    readme = _chart_readme()
    assert (CHART / "README.md").read_text() == readme.render(), "stale: run python tools/chart_readme.py"
    rows = readme.rows(textwrap.dedent("""\
        # Section comment, not a description.
        # -- Pods to run.
        replicaCount: 1
        config: |
          # -- inside a block scalar: not a key
          endpoints: []
        secrets:
          # -- Key -> secret,
          # continued.
          values: {}
          asEnv: false
        # -- A documented map is one row.
        probes:
          startup: {periodSeconds: 2}
        list:
          - name: x
            nested: 1
        """))
    assert rows == [("replicaCount", 1, "Pods to run."),
                    ("config", "# -- inside a block scalar: not a key\nendpoints: []\n", ""),
                    ("secrets.values", {}, "Key -> secret, continued."), ("secrets.asEnv", False, ""),
                    ("probes", {"startup": {"periodSeconds": 2}}, "A documented map is one row."),
                    ("list", [{"name": "x", "nested": 1}], "")]


# --- the packaging checks and `make chart`, as a newcomer runs them ------------------------------------------
DEBIAN_PYTHON = "/usr/bin/python3"


def plain_env(**extra: str) -> dict[str, str]:
    """This environment with PATH=/usr/bin:/bin: no pyenv, no virtualenv, no HELM of the user's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYENV", "VIRTUAL_ENV", "HELM", "REQUIRE_"))}
    return {**env, "PATH": "/usr/bin:/bin", **extra}


def test_the_packaging_checks_pass_with_debian_python_alone(tmp_path: Path) -> None:
    """Stock Debian bookworm: /usr/bin/python3 (3.11) and no other Python on PATH. The whole of
    tools/check-packaging.sh runs from a fresh venv of that Python, helm included where a pinned binary exists."""
    probe = subprocess.run([DEBIAN_PYTHON, "-c", "import sys, venv, ensurepip; print(*sys.version_info[:2], sep='.')"],
                           capture_output=True, text=True, check=False) if os.path.exists(DEBIAN_PYTHON) else None
    if probe is None or probe.returncode != 0:
        pytest.skip(f"{DEBIAN_PYTHON} is missing or has no venv module (Debian: apt-get install python3-venv)")
    version = probe.stdout.strip()
    if tuple(map(int, version.split("."))) < (3, 11):
        pytest.skip(f"{DEBIAN_PYTHON} is Python {version}; the project needs 3.11 or later")
    with_helm = (platform.system(), platform.machine()) == ("Linux", "x86_64")  # where the pinned helm exists
    env = plain_env(VENV=str(tmp_path / "venv"), HELM_VENV=str(tmp_path / "venv-helm"),
                    REQUIRE_HELM="1" if with_helm else "")
    subprocess.run([DEBIAN_PYTHON, "-m", "venv", str(tmp_path / "venv")], env=env, check=True, timeout=120)
    out = subprocess.run(["bash", "tools/check-packaging.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=600, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"setting up {tmp_path / 'venv-helm'} with Python {version}" in out.stdout, out.stdout
    if with_helm:
        assert "check_chart: helm/webhook-sidecar: ok with helm v4.3.1" in out.stdout, out.stdout
    else:
        assert "helm checks skipped: no helm for" in out.stdout, out.stdout
    assert out.stdout.rstrip().endswith("check-packaging: ok"), out.stdout


def make_chart(tmp_path: Path, values: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    """`make chart VALUES=my-values.yaml OUT=...` as a user runs it."""
    if not shutil.which("make"):
        pytest.skip("make is not installed (Debian: apt-get install make)")
    (tmp_path / "my-values.yaml").write_text(yaml.safe_dump(values))
    return subprocess.run(["make", "--no-print-directory", "chart", f"VALUES={tmp_path / 'my-values.yaml'}",
                           f"OUT={tmp_path / 'out'}"], cwd=ROOT, env=plain_env(), capture_output=True, text=True,
                          timeout=300, check=False)


MY_CONFIG = """\
spool_dir: /var/lib/webhook-sidecar
endpoints:
  - path: /hooks/github
    provider: github
    secret_file: /run/secrets/webhook-sidecar/GITHUB_SECRET
    routes:
      - event: release
        if: {action: published}
        run: ./on_release.sh
"""


def _check_has_offline() -> bool:
    script = Path(sys.executable).with_name("webhook-sidecar")
    argv = [str(script)] if script.exists() else [sys.executable, "-m", "sidecar"]
    out = subprocess.run([*argv, "check", "--help"], capture_output=True, text=True, timeout=30, check=False)
    return "--offline" in out.stdout


# `make chart` ends with `webhook-sidecar check --offline` (design.md, CLI): until the CLI has it, only the
# rendering half can be tested.
NEEDS_OFFLINE = pytest.mark.skipif(not _check_has_offline(), reason="webhook-sidecar check has no --offline yet")


@NEEDS_OFFLINE
def test_make_chart_renders_my_values_and_checks_the_config_the_pods_get(tmp_path: Path) -> None:
    hook = "#!/bin/sh\njq -r .release.tag_name\n"
    out = make_chart(tmp_path, {"config": MY_CONFIG, "hooks": {"on_release.sh": hook}})
    assert out.returncode == 0, out.stdout + out.stderr
    assert "ok (1 endpoint(s), 1 route(s)" in out.stdout, out.stdout
    config = tmp_path / "out" / "config"
    assert sorted(p.name for p in config.iterdir()) == ["config.yaml", "on_release.sh"]
    assert (config / "config.yaml").read_text() == MY_CONFIG
    assert (config / "on_release.sh").read_text() == hook and (config / "on_release.sh").stat().st_mode & 0o777 == 0o755
    manifest = tmp_path / "out" / "manifest.yaml"
    assert manifest.stat().st_mode & 0o777 == 0o600, "the manifest holds the Secret's values"
    kinds = {doc["kind"] for doc in yaml.safe_load_all(manifest.read_text()) if doc}
    assert {"Deployment", "ConfigMap", "Secret"} <= kinds
    assert "make chart VALUES=" in (CHART / "templates" / "NOTES.txt").read_text()


# The shared spool as docs/kubernetes.md ("Several replicas") sets it: CloudNativePG's Secret, key `uri`.
SHARED = {"replicaCount": 2, "spool": {"postgres": {"existingSecret": "hooks-spool-app", "key": "uri"}}}


def rendered_pod(out: Path) -> dict[str, Any]:
    """The pod spec of the Deployment `make chart` rendered into `out`."""
    docs = [doc for doc in yaml.safe_load_all((out / "manifest.yaml").read_text()) if doc]
    return next(doc for doc in docs if doc["kind"] == "Deployment")["spec"]["template"]["spec"]


@NEEDS_OFFLINE
def test_make_chart_with_the_shared_spool_gives_the_url_as_a_read_only_file(tmp_path: Path) -> None:
    """spool.postgres: config.yaml names the mounted file (spool_url_file), no variable holds the URL, and the config
    the pods get passes `webhook-sidecar check --offline`."""
    out = make_chart(tmp_path, SHARED)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "config.yaml: ok (1 endpoint(s), 2 route(s)" in out.stdout, out.stdout
    config = yaml.safe_load((tmp_path / "out" / "config" / "config.yaml").read_text())
    assert config["spool_url_file"] == f"{SPOOL_URL_DIR}/uri", config
    assert "spool_dir" not in config and "spool_url_env" not in config, config
    pod = rendered_pod(tmp_path / "out")
    sidecar = pod["containers"][0]
    assert [e["name"] for e in sidecar["env"]] == ["SIDECAR_GRACE", "SIDECAR_LOG_LEVEL", "SIDECAR_REPLICA"]
    assert "envFrom" not in sidecar
    mount = next(m for m in sidecar["volumeMounts"] if m["mountPath"] == SPOOL_URL_DIR)
    assert mount["readOnly"] is True
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert volume == {"name": mount["name"], "secret": {"secretName": "hooks-spool-app", "defaultMode": 0o440,
                                                        "items": [{"key": "uri", "path": "uri"}]}}


@NEEDS_OFFLINE
def test_the_pod_as_rendered_with_the_shared_spool_reads_its_url_from_the_file_alone(tmp_path: Path) -> None:
    """`make chart` with spool.postgres, then the container as that manifest runs it, on a real PostgreSQL: the
    ConfigMap and both Secret volumes laid out as the kubelet lays them out, the container's env as rendered. It
    turns ready, delivers through the shared spool, a hook cannot read the URL's file (with Landlock), and the
    sidecar's environment (/proc/<pid>/environ) holds no password."""
    url = server().create_database()
    table = yaml.safe_load(VALUES["config"])
    peek = '#!/bin/sh\n# May a hook read the URL? Exit 3 if so.\ncat >/dev/null\nif cat "$1"; then exit 3; fi\n'
    table["endpoints"][0]["routes"].append({"event": "*", "name": "peek", "run": ["./peek.sh", f"{SPOOL_URL_DIR}/uri"]})
    values = {**SHARED, "config": yaml.safe_dump(table, sort_keys=False), "hooks": {"peek.sh": peek}}
    out = make_chart(tmp_path, values)
    assert out.returncode == 0, out.stdout + out.stderr

    # Outside /tmp, which hooks may write: the sandbox cannot hide what lies there (as in a pod, where it does not).
    image = Image(outside_writable_dirs() / "image")
    image.configmap({p.name: p.read_text() for p in (tmp_path / "out" / "config").iterdir()})
    image.secret(dict.fromkeys(secret_names({**VALUES, **values}), SECRET))
    pod = rendered_pod(tmp_path / "out")
    sidecar_spec = pod["containers"][0]
    mount = next(m for m in sidecar_spec["volumeMounts"] if m["mountPath"] == SPOOL_URL_DIR)
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])["secret"]
    image.volume(SPOOL_URL_DIR, {item["path"]: url for item in volume["items"]}, volume["defaultMode"])
    env = {k: v for k, v in container_env(image).items() if not k.startswith("SIDECAR_")}
    for var in sidecar_spec["env"]:
        source = var.get("valueFrom") or {}
        assert set(source) <= {"fieldRef"}, f"{var['name']} comes from {source}"
        env[var["name"]] = "hooks-webhook-sidecar-5d8f7-x2kq9" if source else var["value"]

    sidecar = start(image, env)
    try:
        wait_for(lambda: sidecar.request("GET", "/readyz").status == 200, 15, 0.1)
        connected = sidecar.wait_log(lambda e: e.get("msg") == "spool.connected")
        assert connected["replica"] == "hooks-webhook-sidecar-5d8f7-x2kq9", connected
        assert sidecar.deliver(PUSH_TO_MAIN, event="push", delivery="pkg-shared").status == 200
        runs = hook_runs(sidecar, "pkg-shared", routes=3)
        assert runs["on_push"]["exit_code"] == 0 and runs["log_event"]["exit_code"] == 0, runs
        if sandbox.abi() > 0:  # else the sidecar's start log says hooks are not sandboxed
            assert runs["peek"]["exit_code"] == 0, runs["peek"]
            assert PASSWORD not in json.dumps(runs), "a hook printed the database password"
        environ = Path(f"/proc/{sidecar.proc.pid}/environ").read_bytes()
        assert PASSWORD.encode() not in environ and b"postgresql://" not in environ
        assert PASSWORD not in "".join(sidecar.raw), "the password reached the log"
    finally:
        stop(sidecar)
        shutil.rmtree(image.root.parent, ignore_errors=True)


@pytest.mark.parametrize(("values", "expected"), [
    pytest.param({"config": MY_CONFIG.replace("provider: github", "provider: githb").replace("if:", "iff:")},
                 ["config.yaml:4:", "githb", "config.yaml:8:", "iff"], marks=NEEDS_OFFLINE, id="a broken config.yaml"),
    pytest.param({"replicas": 2}, ["replicas"], id="a misspelt value"),  # the schema refuses it, through Helm
])
def test_make_chart_fails_on_broken_values_and_says_where(tmp_path: Path, values: dict[str, Any],
                                                           expected: list[str]) -> None:
    out = make_chart(tmp_path, values)
    assert out.returncode != 0, out.stdout
    for needle in expected:
        assert needle in out.stdout + out.stderr, out.stdout + out.stderr



# --- the runbooks the chart's alerts link to ------------------------------------------------------------------
def _runbooks() -> dict[str, str]:
    """docs/kubernetes.md's Runbooks section: the text under each "### Runbook: <alert>" heading."""
    docs = (ROOT / "docs" / "kubernetes.md").read_text()
    section = docs.split("\n## Runbooks\n", 1)[1].split("\n## ", 1)[0]
    parts = re.split(r"^### Runbook: (\w+)\n", section, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def test_each_alert_has_a_runbook_whose_commands_logs_and_metrics_exist() -> None:
    """The PrometheusRule's runbook_url (values prometheusRule.runbookUrl + #runbook-<alert>, checked rendered by
    tools/check_chart.py) lands on a runbook that says what the alert means, what to check and what to do, with
    CLI commands, log events and metrics this sidecar has."""
    alerts = [r["alert"] for g in yaml.safe_load((CHART / "files" / "alerts.yaml").read_text())["groups"]
              for r in g["rules"]]
    runbooks = _runbooks()
    assert list(runbooks) == alerts, "one runbook per alert of files/alerts.yaml, in its order"
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert VALUES["prometheusRule"]["runbookUrl"] == f"{chart['home']}/blob/main/docs/kubernetes.md"

    sources = "\n".join(p.read_text() for p in (ROOT / "sidecar").rglob("*.py"))
    metrics = {"webhook_sidecar" + m for m in re.findall(r'f"\{PREFIX\}(_\w+)"', sources)}
    script = Path(sys.executable).with_name("webhook-sidecar")
    cli = [str(script)] if script.exists() else [sys.executable, "-m", "sidecar"]
    helps: dict[tuple[str, ...], str] = {}
    for alert, text in runbooks.items():
        for part in ("- **Means:**", "- **Check:**", "- **Do:**"):
            assert part in text, f"runbook {alert} lacks {part}"
        for command in re.findall(r"`ws\s([^`]+)`", text):  # ws = the sidecar's CLI in its container
            words = command.split()
            path = tuple(w for w in words if re.fullmatch(r"[a-z]+", w))
            if path not in helps:
                helps[path] = subprocess.run([*cli, *path, "--help"], capture_output=True, text=True, timeout=30,
                                             check=True).stdout
            for flag in (w for w in words if w.startswith("--")):
                assert flag in helps[path], f"runbook {alert}: `webhook-sidecar {command}`: no {flag}"
        for grep in re.findall(r"`wslogs\s+\|\s+grep\s([^`]+)`", text):
            for event in re.findall(r"[a-z]+\\?\.[a-z_]*", grep):
                event = event.replace("\\", "")
                assert f'"{event}' in sources, f"runbook {alert}: no log event {event} in sidecar/"
        for metric in re.findall(r"`(webhook_sidecar_\w+)`", text):
            assert metric in metrics, f"runbook {alert}: no metric {metric} in sidecar/metrics.py"
