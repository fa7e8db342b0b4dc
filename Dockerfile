# webhook-sidecar image: a small, non-root image that runs `webhook-sidecar serve` (docs/container.md).
#
#   docker build -t webhook-sidecar:0.1.0 .
#   # a directory holding config.yaml (with `spool_dir: /var/lib/webhook-sidecar`) and its hooks/:
#   mkdir -p site && cp -r config.yaml hooks site/ \
#     && sed -i 's|^spool_dir: .*|spool_dir: /var/lib/webhook-sidecar|' site/config.yaml
#   docker run --rm --read-only --tmpfs /tmp -p 8080:8080 \
#     --ulimit nofile=20000:20000 --ulimit nproc=32768:32768 \
#     -v "$PWD/site:/etc/webhook-sidecar:ro" -v webhook-spool:/var/lib/webhook-sidecar \
#     -e WEBHOOK_SECRET=change-me webhook-sidecar:0.1.0
#
# The --ulimit flags are for engines that cannot raise their default limits for a container (rootless podman,
# some VMs: `runc create failed: ... error setting rlimit type 7`); elsewhere they can go.
# The routing table is expected at /etc/webhook-sidecar/config.yaml, with its hook scripts beside it (a
# ConfigMap mount in Kubernetes, see helm/webhook-sidecar). Its spool_dir must be /var/lib/webhook-sidecar (the
# volume, the only place the app writes besides /tmp): the config mount is read-only, so the example config's
# `spool_dir: .spool` stops the start with a message naming spool_dir.
# To add tools your hooks need (git, curl, jq, kubectl), build FROM this image: see docs/kubernetes.md.
#
# BASE_IMAGE: both stages start from it. Any Debian-based image with python3 (3.11+), its venv module and pip
# works; where no registry can be reached, tools/build-base-image.sh makes one from Debian's packages:
#   podman build --build-arg BASE_IMAGE=localhost/webhook-sidecar-base:bookworm -t webhook-sidecar .
ARG BASE_IMAGE=python:3.11-slim-bookworm

# ---- build: turn the source into wheels (the package and its dependencies); tests never enter the image
FROM ${BASE_IMAGE} AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
# .dockerignore lets in only what the wheel is built from: pyproject.toml, README.md and sidecar/.
COPY pyproject.toml README.md ./
COPY sidecar/ sidecar/
# With the [postgres] extra: the image serves both spools (psycopg is imported only for a shared one).
RUN pip wheel --no-cache-dir --wheel-dir /wheels '.[postgres]' \
 && python -m venv --without-pip /opt/webhook-sidecar \
 && pip --python /opt/webhook-sidecar/bin/python install --no-cache-dir --no-index --find-links /wheels \
        /wheels/*.whl \
 && /opt/webhook-sidecar/bin/webhook-sidecar --version

# ---- runtime: the same base, tini, the virtual environment from the build stage, nothing else
# (the venv's python is a symlink to the base's interpreter, so the runtime base must be the build's)
FROM ${BASE_IMAGE}

# tini is PID 1: it forwards SIGTERM to the sidecar and reaps the orphaned children of hook scripts
# (a hook's background `git` or `curl` whose shell already exited), which the kernel hands to PID 1.
# A base that ships it (tools/build-base-image.sh does) needs no package index, so no network here.
RUN if [ ! -x /usr/bin/tini ]; then \
      apt-get update \
      && apt-get install -y --no-install-recommends tini=0.19.0-1+b3 \
      && rm -rf /var/lib/apt/lists/*; \
    fi \
 && /usr/bin/tini --version

# A fixed numeric user, so Kubernetes can check runAsNonRoot without reading /etc/passwd. Its home is /tmp,
# the one writable scratch place beside the spool when the root filesystem is read-only.
RUN groupadd --system --gid 10001 webhook \
 && useradd --system --uid 10001 --gid 10001 --home-dir /tmp --no-create-home \
        --shell /usr/sbin/nologin webhook \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/webhook-sidecar \
 && install -d -m 0755 /etc/webhook-sidecar

COPY --from=build /opt/webhook-sidecar /opt/webhook-sidecar

# PYTHONDONTWRITEBYTECODE: no __pycache__ writes (the root filesystem may be read-only; the wheel's modules
# were byte-compiled at install). PYTHONUNBUFFERED: each JSON log line reaches `kubectl logs` at once.
# SIDECAR_CONFIG lets `webhook-sidecar check` (kubectl exec ... -- webhook-sidecar check) find the same file.
ENV PATH=/opt/webhook-sidecar/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    LANG=C.UTF-8 \
    SIDECAR_CONFIG=/etc/webhook-sidecar/config.yaml

USER 10001:10001
# The working directory is the (read-only) config directory: `./.env` beside config.yaml is found as with
# `make run`, and nothing a hook writes to /tmp can become the sidecar's environment at its next start.
WORKDIR /etc/webhook-sidecar
VOLUME ["/var/lib/webhook-sidecar"]
EXPOSE 8080
# SIGTERM starts the drain: /readyz turns 503, running hooks get --grace (SIDECAR_GRACE, default 25) seconds.
STOPSIGNAL SIGTERM

ENTRYPOINT ["/usr/bin/tini", "--", "webhook-sidecar"]
CMD ["serve", "--config", "/etc/webhook-sidecar/config.yaml", "--listen", "0.0.0.0:8080"]
