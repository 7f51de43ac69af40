# Two commands do all the set-up: `make demo` and `make test`. See README.md.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv services migrate topology demo run test lint format asyncapi clean bench bench-quick

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

services:
	bash infra/services.sh

migrate: venv services
	$(BIN)/apptctl migrate

topology: venv services
	$(BIN)/apptctl topology apply

demo: venv services
	$(BIN)/apptctl demo

run: migrate topology
	$(BIN)/apptctl run

test: venv services
	$(BIN)/pytest

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: venv
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

asyncapi: venv
	$(BIN)/python -m contracts.asyncapi

# End-to-end throughput/latency against a bare relay (docs/benchmarks.md); own database and namespace.
bench: venv services
	$(BIN)/python -m bench

bench-quick: venv services
	$(BIN)/python -m bench --quick

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache
