# `make run` serves Duckcast (embedded store, no Redis); `make test` runs the suite.
# Both create .venv and install the project into it on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

$(BIN)/duckcast: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

.PHONY: run test lint bench fanout protos lock deploy-mutations
run: $(BIN)/duckcast
	$(BIN)/duckcast serve

test: $(BIN)/duckcast
	$(BIN)/python -m pytest

lint: $(BIN)/duckcast
	$(BIN)/ruff check service tests loadtests
	$(BIN)/ruff format --check service tests loadtests
	$(BIN)/mypy
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/test_layers.py
	$(BIN)/hadolint Dockerfile

# The six edits to docker-compose.yml that must each fail the deploy test (tests/e2e/test_compose.py).
deploy-mutations: $(BIN)/duckcast
	$(BIN)/python -m pytest -m compose_mutation tests/e2e/test_compose.py

# BENCH_ARGS="--baseline /tmp/duckcast-main": a before/after table against that checkout.
bench: $(BIN)/duckcast
	$(BIN)/python -m loadtests.bench $(BENCH_ARGS)

fanout: $(BIN)/duckcast
	$(BIN)/python -m loadtests.fanout

protos: $(BIN)/duckcast
	$(BIN)/python -m service.pb.generate

# The image's dependencies, pinned with hashes (the Dockerfile installs exactly these).
lock: $(BIN)/duckcast
	$(BIN)/uv pip compile pyproject.toml deploy/requirements-build.in --generate-hashes \
	  --python-version 3.11 --python-platform x86_64-manylinux_2_28 --no-header --quiet \
	  -o deploy/requirements.lock
