"""Write helm/webhook-sidecar/README.md (what `helm show readme` prints) from Chart.yaml and values.yaml.

    python tools/chart_readme.py          # rewrite the README
    python tools/chart_readme.py --check  # exit 1 when the README is not what values.yaml gives (make test)

The values table follows helm-docs' convention (helm-docs itself is not installable from our registries): a
`# -- description` comment, continued by the comment lines after it, documents the key below it; a documented
map or list is one row with its whole default; undocumented maps are walked into, undocumented leaves get a
row without a description. Section comments without `--` stay in values.yaml only.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "webhook-sidecar"
KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z_][\w./-]*):(?P<rest>.*)$")
COMMENT = re.compile(r"^ *#(?P<text>.*)$")


def rows(text: str) -> list[tuple[str, Any, str]]:
    """(dotted key, default, description) for each documented key or undocumented leaf, in file order."""
    data = yaml.safe_load(text)
    out: list[tuple[str, Any, str]] = []
    stack: list[tuple[int, str]] = []  # (indentation, key) of the maps being walked
    skip_deeper_than: int | None = None  # inside a block scalar, a list, or a documented map
    doc: list[str] | None = None
    for line in text.splitlines():
        indent = len(line) - len(line.lstrip(" "))
        if skip_deeper_than is not None:
            if not line.strip() or indent > skip_deeper_than:
                continue
            skip_deeper_than = None
        comment = COMMENT.match(line)
        if comment:
            body = comment.group("text")
            if body.startswith(" -- ") or body == " --":
                doc = [body[4:].strip()]
            elif doc is not None:
                doc.append(body.strip())
            continue
        match = KEY.match(line)
        if not match:
            doc = None
            continue
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = [key for _, key in stack] + [match.group("key")]
        value: Any = data
        for key in path:
            value = value[key]
        if doc is not None:
            out.append((".".join(path), value, " ".join(d for d in doc if d)))
            if isinstance(value, dict | list) or match.group("rest").strip() in ("|", "|-", ">", ">-"):
                skip_deeper_than = indent
        elif isinstance(value, dict) and value:
            stack.append((indent, match.group("key")))
        else:
            out.append((".".join(path), value, ""))
            if isinstance(value, list | str) and value:
                skip_deeper_than = indent
        doc = None
    return out


def kind(value: Any) -> str:
    return {bool: "bool", int: "int", float: "float", str: "string", dict: "object", list: "list"}.get(
        type(value), "null" if value is None else type(value).__name__)


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def default(value: Any) -> str:
    if isinstance(value, str) and "\n" in value:
        return "(multi-line text: see values.yaml)"
    return "`" + cell(json.dumps(value, ensure_ascii=False)) + "`"


def render() -> str:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    home = chart.get("home", "")
    lines = [
        f"# {chart['name']}",
        "",
        f"Version {chart['version']}, app version {chart['appVersion']}, Kubernetes {chart.get('kubeVersion', '')}.",
        "",
        chart["description"].strip(),
        "",
        f"Home: {home}",
        "",
        "```sh",
        f"helm install hooks oci://ghcr.io/webhook-sidecar/charts/{chart['name']} --version {chart['version']}",
        "helm test hooks --logs   # readiness through the Service, then a signed delivery",
        "```",
        "",
        "The guide (installing, routes and hooks, secrets and their rotation, upgrading, NetworkPolicy, OpenShift,",
        "alerts and the Grafana dashboard, adding the sidecar to an existing workload):",
        f"{home}/blob/main/docs/kubernetes.md",
        "",
        "## Forward to the application next to it",
        "",
        "A route may POST each verified delivery to the pod's own application instead of running a hook,",
        "re-signed with Standard Webhooks headers, so the application verifies one scheme whatever the sender",
        "(`sign.secret_env` names a variable: give it with `extraEnv` from a Secret of your own):",
        "",
        "```yaml",
        "config: |",
        "  endpoints:",
        "    - path: /webhook",
        "      provider: github",
        "      secret_file: /run/secrets/webhook-sidecar/WEBHOOK_SECRET",
        "      routes:",
        "        - event: \"*\"",
        "          forward:",
        "            url: http://127.0.0.1:3000/hooks/github",
        "            sign: {secret_env: APP_WEBHOOK_SECRET}",
        "extraEnv:",
        "  - name: APP_WEBHOOK_SECRET",
        "    valueFrom: {secretKeyRef: {name: app-webhook, key: secret}}   # whsec_<base64>",
        "```",
        "",
        f"Retries, dead letters and CloudEvents (in and out): {home}/blob/main/docs/forward.md",
        "",
        "Generated by tools/chart_readme.py from the `# --` comments of values.yaml: edit those, then run",
        "`python tools/chart_readme.py` (`make test` fails on a stale README).",
        "",
        "## Values",
        "",
        "| Key | Type | Default | Description |",
        "|-----|------|---------|-------------|",
    ]
    for key, value, description in rows((CHART / "values.yaml").read_text()):
        lines.append(f"| {key} | {kind(value)} | {default(value)} | {cell(description)} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    target = CHART / "README.md"
    text = render()
    if "--check" in argv:
        if not target.exists() or target.read_text() != text:
            print(f"chart_readme: {target.relative_to(ROOT)} is stale: run python tools/chart_readme.py")
            return 1
        print(f"chart_readme: {target.relative_to(ROOT)} up to date")
        return 0
    target.write_text(text)
    print(f"chart_readme: wrote {target.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
