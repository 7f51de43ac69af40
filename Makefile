# Two commands do all the set-up: `make demo` and `make test`. See README.md.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Portal messages are signed (docs/security.md). Unless a keyring is configured, the demo, tests, bench and
# `make run` use the development keyring: public secrets, never for production.
ifeq ($(strip $(APPT_PORTAL_KEYS)),)
export APPT_PORTAL_KEYS_FILE ?= $(CURDIR)/infra/dev/portal-keys.json
endif
# Workers refuse the development keyring unless development mode is set explicitly; the targets below run
# on a developer machine or in CI, never in production.
DEV := APPT_DEV_MODE=1

.PHONY: venv services migrate topology demo run test lint format asyncapi clean bench bench-quick \
	bench-scale bench-flood soak test-restarts test-cluster faults-report openapi portal chromium \
	signing-vectors lock

# Installs exactly what requirements-dev.lock pins, every file checked against its hash; the project
# itself on top, editable. `make lock` regenerates both lock files from pyproject.toml.
$(STAMP): pyproject.toml requirements.lock requirements-dev.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --require-hashes -r requirements-dev.lock
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $(STAMP)

venv: $(STAMP)

# requirements.lock: what the workers run on (the Dockerfile installs it); requirements-dev.lock: that plus
# the dev tools and the bench's peers (`make venv`). Existing pins are kept; `make lock UPGRADE=1` moves
# everything to the newest.
PIP_COMPILE := $(BIN)/pip-compile --quiet --generate-hashes --strip-extras --allow-unsafe \
	--no-emit-index-url --no-emit-find-links $(if $(UPGRADE),--upgrade)
lock:
	test -x $(BIN)/pip-compile || { test -x $(BIN)/python || $(PYTHON) -m venv $(VENV); \
		$(BIN)/python -m pip install -q 'pip-tools>=7.4'; }
	$(PIP_COMPILE) --output-file requirements.lock pyproject.toml
	$(PIP_COMPILE) --extra dev --extra bench --constraint requirements.lock --output-file requirements-dev.lock \
		pyproject.toml

services:
	bash infra/services.sh

migrate: venv services
	$(BIN)/apptctl migrate

topology: venv services
	$(BIN)/apptctl topology apply

demo: venv services
	$(DEV) $(BIN)/apptctl demo

run: migrate topology
	$(DEV) $(BIN)/apptctl run

test: venv services chromium
	$(DEV) $(BIN)/pytest

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: venv
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

asyncapi: venv
	$(BIN)/python -m contracts.asyncapi

# The portal HTTP API's committed OpenAPI document (portal_api/openapi.json; a test fails when stale).
openapi: venv
	$(BIN)/python -m portal_api.openapi

# Debian's Chromium for the browser tests (tests/browser); Playwright never downloads a browser here.
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
		echo "installing Debian's chromium for the browser tests"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

# The reference Customer Portal and office board with the four industry stories seeded; Ctrl-C stops all.
PORTAL_PORT ?= 8000
portal: venv services
	$(DEV) APPT_API_KEYS_FILE=$${APPT_API_KEYS_FILE:-$(CURDIR)/infra/dev/api-keys.json} \
		$(BIN)/python -m portal_api.devserver --port $(PORTAL_PORT)

# contracts/signing-vectors.json, for portals in other languages (examples/node-publisher).
signing-vectors: venv
	$(BIN)/python -m tests.contract.signing_vectors

# End-to-end throughput/latency against a bare relay (docs/benchmarks.md); own database and namespace.
bench: venv services
	$(DEV) $(BIN)/python -m bench

bench-quick: venv services
	$(DEV) $(BIN)/python -m bench --quick

# 1 vs 2 replicas per stage, and the gate's decision time with 1k vs 1M appointments (docs/scaling.md).
bench-scale: venv services
	$(DEV) $(BIN)/python -m bench --scale --quick

# One tenant floods (10,000 signed requests) while another's customers reschedule: prints the flood rate, the
# victim's p50/p95/p99 and the refused count, with tenant lanes and limits, then for plain FIFO workers.
FLOOD ?= 10000
bench-flood: venv services
	$(DEV) APPT_FLOOD_REQUESTS=$(FLOOD) APPT_FLOOD_CONTROL=1 APPT_FLOOD_TARGET_S=1.0 $(BIN)/pytest -s -q -o timeout=3600 -k starve \
		tests/e2e/test_fairness.py

# The fault suite (tests/faults, docs/reliability.md) at 10x its CI size: ~20,000 requests.
# APPT_FAULTS_SCALE sets another size; the last run's numbers land in build/faults/.
SOAK_SCALE ?= 10
soak: venv services
	$(DEV) APPT_FAULTS_SCALE=$(SOAK_SCALE) APPT_FAULTS_SETTLE_S=600 $(BIN)/pytest -m faults \
		-o timeout=3600 tests/faults
	$(DEV) APPT_MODEL_EXAMPLES=$$(( $(SOAK_SCALE) * 25 )) $(BIN)/pytest -o timeout=3600 tests/integration/test_delivery_model.py
	$(DEV) APPT_CLUSTER_TESTS=1 APPT_FAULTS_SCALE=$(SOAK_SCALE) $(BIN)/pytest -m cluster -o timeout=3600 tests/cluster
	$(BIN)/python -m tests.faults.report

# Two replicas per worker on a three-node RabbitMQ cluster of its own (infra/cluster.sh, ports 5681-5683),
# the work queues' leader killed and another node stopped under load (docs/scaling.md). ~6 min.
test-cluster: venv services
	$(DEV) APPT_CLUSTER_TESTS=1 $(BIN)/pytest -m cluster -s tests/cluster
	$(BIN)/python -m tests.faults.report

# Restarts the shared RabbitMQ and PostgreSQL mid-run: run it alone on the services.
test-restarts: venv services
	$(DEV) APPT_SERVICE_RESTART_TESTS=1 $(BIN)/pytest -m service_restart tests/faults
	$(BIN)/python -m tests.faults.report

# The table of the last fault runs (build/faults/*.json), written into docs/reliability.md.
faults-report: venv
	$(BIN)/python -m tests.faults.report

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache
