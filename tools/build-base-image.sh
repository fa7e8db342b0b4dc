#!/usr/bin/env bash
# Build a minimal Debian bookworm base image with Python from Debian's own packages, for machines that can
# reach a Debian mirror but no container registry (CI here: nothing can be pulled). The Dockerfile takes it as
#   podman build --build-arg BASE_IMAGE=localhost/webhook-sidecar-base:bookworm .
# Where a registry is reachable, the Dockerfile's default base (the official python image) needs none of this.
#
#   tools/build-base-image.sh           # build unless the image already exists (a cached base is reused)
#   tools/build-base-image.sh --force   # rebuild it
#
# Variables (each overridable from the environment):
#   BASE_IMAGE       name of the image to build               (localhost/webhook-sidecar-base:bookworm)
#   DEBIAN_SUITE     Debian suite                             (bookworm)
#   DEBIAN_MIRROR    the mirror mmdebstrap downloads from     (http://deb.debian.org/debian)
#   DEBIAN_SECURITY_MIRROR  where $DEBIAN_SUITE-security is   (http://deb.debian.org/debian-security)
#   PODMAN           the engine command; an OCI runtime or storage option goes here, e.g. "podman --runtime runc"
#
# The root filesystem is made by `mmdebstrap --variant=minbase` (Essential and Priority: required only, so
# `useradd` is there) from the suite with its -updates and -security archives, plus python3, python3-venv,
# python3-pip, python-is-python3, tini and ca-certificates; no apt package caches, documentation or locales
# (about 200 MB). It is streamed as a tar into `podman import`, so nothing is written to the host beyond the
# image itself. Needs root (mmdebstrap's root mode), mmdebstrap, and a Debian mirror over HTTP.
set -euo pipefail

BASE_IMAGE=${BASE_IMAGE:-localhost/webhook-sidecar-base:bookworm}
DEBIAN_SUITE=${DEBIAN_SUITE:-bookworm}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
DEBIAN_SECURITY_MIRROR=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
PODMAN=${PODMAN:-podman}
PACKAGES=python3,python3-venv,python3-pip,python-is-python3,tini,ca-certificates

say() { printf 'build-base-image: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

force=0
case "${1:-}" in
  --force) force=1 ;;
  "") ;;
  *) die "usage: $0 [--force]" ;;
esac

# $PODMAN is a command with its options (e.g. "podman --runtime runc"): split on purpose.
# shellcheck disable=SC2086
if [ "$force" = 0 ] && $PODMAN image exists "$BASE_IMAGE"; then
  say "$BASE_IMAGE exists (--force rebuilds it)"
  exit 0
fi
command -v mmdebstrap >/dev/null || die "mmdebstrap is missing: apt-get install mmdebstrap"
[ "$(id -u)" = 0 ] || die "mmdebstrap's root mode needs root (this script makes no attempt at user namespaces)"

# shellcheck disable=SC2086
previous=$($PODMAN image inspect --format '{{.Id}}' "$BASE_IMAGE" 2>/dev/null || true)
say "building $BASE_IMAGE from Debian $DEBIAN_SUITE ($DEBIAN_MIRROR)"
start=$(date +%s)
# dpkg's path-exclude keeps documentation, man pages and translations out (copyright files stay: the licences
# travel with the binaries). apt's binary caches are disabled; mmdebstrap's cleanup removes the package
# lists and downloaded .debs, so the image holds no apt state a later `apt-get install` could trust. dpkg skips
# its fsync calls (force-unsafe-io): the tree is streamed into an image, a crash just means building again.
# The hook's "$1" is the new root, expanded by mmdebstrap's shell, not this one.
# shellcheck disable=SC2016,SC2086
mmdebstrap --quiet --variant=minbase --include="$PACKAGES" \
  --aptopt='Dir::Cache::pkgcache ""' --aptopt='Dir::Cache::srcpkgcache ""' \
  --aptopt='APT::Install-Recommends "false"' \
  --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
  --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*' \
  --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-include=/usr/share/locale/locale.alias' \
  --dpkgopt='path-exclude=/usr/share/lintian/*' --dpkgopt='force-unsafe-io' \
  --customize-hook='rm -f "$1"/etc/machine-id "$1"/var/cache/ldconfig/aux-cache' \
  "$DEBIAN_SUITE" - "deb $DEBIAN_MIRROR $DEBIAN_SUITE main" "deb $DEBIAN_MIRROR $DEBIAN_SUITE-updates main" \
  "deb $DEBIAN_SECURITY_MIRROR $DEBIAN_SUITE-security main" \
  | $PODMAN import --quiet \
      --change 'ENV LANG=C.UTF-8' \
      --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      --change 'CMD ["python3"]' \
      --message "mmdebstrap --variant=minbase $DEBIAN_SUITE + $PACKAGES" \
      - "$BASE_IMAGE" >/dev/null
$PODMAN image exists "$BASE_IMAGE" || die "podman import did not produce $BASE_IMAGE"
# The image it replaces (--force) is left untagged: remove it unless something still uses it.
current=$($PODMAN image inspect --format '{{.Id}}' "$BASE_IMAGE")
if [ -n "$previous" ] && [ "$previous" != "$current" ]; then
  $PODMAN image rm "$previous" >/dev/null 2>&1 || true
fi
say "built $BASE_IMAGE in $(( $(date +%s) - start )) s ($($PODMAN image inspect --format '{{.Size}}' "$BASE_IMAGE") bytes)"
