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

.PHONY: run test lint bench fanout protos
run: $(BIN)/duckcast
	$(BIN)/duckcast serve

test: $(BIN)/duckcast
	$(BIN)/python -m pytest

lint: $(BIN)/duckcast
	$(BIN)/ruff check service tests loadtests
	$(BIN)/ruff format --check service tests loadtests
	$(BIN)/mypy
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/test_layers.py

bench: $(BIN)/duckcast
	$(BIN)/python -m loadtests.bench

fanout: $(BIN)/duckcast
	$(BIN)/python -m loadtests.fanout

protos: $(BIN)/duckcast
	$(BIN)/python -m service.pb.generate
