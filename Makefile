# make run  - serve the example config.yaml on 127.0.0.1:8080 (creates .venv and .env when missing)
# make test - lint and run the whole test suite
# make image / make image-test - build the container image with podman / build it, run it and test it
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint check bench clean packaging chart image image-test native

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# `make run` needs only the runtime dependencies (the dev tools come with `make test`).
RUN_STAMP := $(VENV)/.installed-runtime
$(RUN_STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e .
	touch $(RUN_STAMP)

# The hook fork server (sidecar/forkserver.py): built when a C compiler is there, else hooks start through
# subprocess in the sidecar (the same behaviour, more CPU per hook).
FORKSERVER := sidecar/native/forkserver
native: $(FORKSERVER)
$(FORKSERVER): $(FORKSERVER).c
	@if ! command -v $(CC) >/dev/null 2>&1; then \
	  echo "no C compiler ($(CC)): hooks start through subprocess (apt-get install gcc, then make native)"; \
	elif ! $(CC) -O2 -Wall -Wextra -o $@ $<; then \
	  echo "the fork server did not build: hooks start through subprocess"; fi

# A development secret, so `make run` works out of the box. Never commit .env.
.env:
	@printf 'WEBHOOK_SECRET=%s\n' "$$($(PYTHON) -c 'import secrets; print(secrets.token_hex(20))')" > .env
	@echo "wrote .env with a new development WEBHOOK_SECRET"

run: $(RUN_STAMP) .env native
	$(BIN)/webhook-sidecar serve --config config.yaml --listen 127.0.0.1:8080 --env-file .env

check: $(RUN_STAMP) .env
	$(BIN)/webhook-sidecar check --config config.yaml --env-file .env

lint: $(STAMP)
	$(BIN)/ruff check sidecar tests bench tools
	$(BIN)/mypy  # sidecar, tests and bench ([tool.mypy] files in pyproject.toml)

# Dockerfile (hadolint) and Helm chart (helm lint, schema, rendered facts); installs its own tools.
packaging: $(STAMP)
	bash tools/check-packaging.sh

# make chart VALUES=my-values.yaml [OUT=build/chart]: render the Helm chart with your values (OUT/manifest.yaml),
# then `webhook-sidecar check --offline` on the config.yaml of its ConfigMap (OUT/config/). helm: HELM=..., a helm
# on PATH, or the pinned one tools/check-packaging.sh installs into .venv/bin.
chart: $(RUN_STAMP)
	bash tools/check-packaging.sh chart "$(VALUES)" "$(OUT)"

test: lint packaging native
	$(BIN)/python -m pytest -q

# The image with podman, on a Debian base built by mmdebstrap when missing (tools/image.py: its variables).
image:
	$(PYTHON) tools/image.py build

# tests/test_image.py alone: build, run read-only as user 10001 with the chart's defaults, deliver, stop.
# REQUIRE_IMAGE_TEST=1: where podman cannot run the image, fail instead of skipping.
image-test: $(STAMP)
	REQUIRE_IMAGE_TEST=1 $(BIN)/python -m pytest -v -rP tests/test_image.py

# Figures against their ceilings (docs/performance.md); installs wrk when missing, stops within 5 minutes.
# make bench ARGS="--cpus 1 --baseline 652c911 --stages": the one-core figures, A/B against a baseline commit
# Without ARGS it also puts the two spool backends side by side (sqlite vs a local PostgreSQL).
bench: $(STAMP)
	$(BIN)/python bench/run.py $(ARGS)
	$(if $(ARGS),,$(BIN)/python bench/spool_backends.py --seconds 8)
	$(if $(ARGS),,$(BIN)/python bench/forwards.py --count 2000)

clean:
	rm -rf $(VENV) .venv-helm .pytest_cache .ruff_cache .spool
