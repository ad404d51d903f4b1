# Mercato: `make run` starts the whole system, `make test` runs the whole suite.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
# Not quiet: a first install takes about half a minute, and pip's lines show it is moving.
PIP := $(PY) -m pip --disable-pip-version-check
PYTEST_ARGS ?=

.PHONY: run test lint format bench partitions install install-dev clean browser \
	test-shard-kernel test-shard-cluster test-shard-orders

$(PY):
	$(PYTHON) -m venv $(VENV)

# Stamps: reinstall only when the pinned requirements change.
$(VENV)/.installed-runtime: requirements.txt | $(PY)
	@echo "installing the pinned requirements into $(VENV) (first run only)"
	$(PIP) install -r requirements.txt
	touch $@

$(VENV)/.installed-dev: requirements.txt requirements-dev.txt | $(PY)
	$(PIP) install -r requirements-dev.txt
	touch $@ $(VENV)/.installed-runtime

install: $(VENV)/.installed-runtime
install-dev: $(VENV)/.installed-dev

run: install
	$(PY) scripts/run_stack.py

lint: install-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy

format: install-dev
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# The suite against real PostgreSQL (primary + streaming replica), Redis and RabbitMQ,
# provided by scripts/testenv.py unless DATABASE_URL / REDIS_URL / CELERY_BROKER_URL are
# given; then the tests of the embedded mode (SQLite, file cache, filesystem broker) that
# `make run` uses. Three shards run at once, each on services of its own (most tests wait
# on workers, servers and faults, not on the CPU); each shard's output appears when it
# ends. On services you provide they run one after another (they would share databases).
TEST_JOBS ?= $(if $(DATABASE_URL),1,3)
TEST_CLUSTER_DIRS := tests/partitions tests/faults tests/integration
TEST_ORDERS_DIRS := tests/orders
PYTEST_SERVICES := DJANGO_ENV=test MERCATO_VAR_DIR=$$(mktemp -d) $(PY) scripts/testenv.py run -- \
	$(PY) -m pytest -m "not embedded"

test: lint browser
	@$(MAKE) --no-print-directory --keep-going -j$(TEST_JOBS) --output-sync=target \
		test-shard-kernel test-shard-cluster test-shard-orders

# users, catalog, core, payments and what else is not below
test-shard-kernel: install-dev
	$(PYTEST_SERVICES) $(addprefix --ignore=,$(TEST_CLUSTER_DIRS) $(TEST_ORDERS_DIRS)) $(PYTEST_ARGS)

# faults, partitions between hosts, the stack under gunicorn and the browser
test-shard-cluster: install-dev
	$(PYTEST_SERVICES) $(TEST_CLUSTER_DIRS) $(PYTEST_ARGS)

# the order context, then the embedded mode
test-shard-orders: install-dev
	$(PYTEST_SERVICES) $(TEST_ORDERS_DIRS) $(PYTEST_ARGS)
	env -u DATABASE_URL -u DATABASE_REPLICA_URLS -u REDIS_URL -u CELERY_BROKER_URL \
		DJANGO_ENV=test MERCATO_VAR_DIR=$$(mktemp -d) $(PY) -m pytest -m embedded $(PYTEST_ARGS)

# Debian's headless Chromium and its driver for the admin browser tests
# (tests/integration/test_admin_browser.py); nothing to do when both are installed.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		if [ "$$(id -u)" = 0 ]; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
				chromium chromium-driver >/dev/null; \
		else \
			echo "make test needs Debian's chromium and chromium-driver:" \
				"sudo apt-get install chromium chromium-driver" >&2; exit 2; \
		fi

# Benchmarks on the real services (not part of `make test`); QUICK=1: the ~1 minute smoke run.
# Then instructions per request under callgrind (bench/instructions.py).
bench: install-dev
	$(PY) scripts/testenv.py run -- $(PY) -m bench.run $(if $(QUICK),--quick)
	$(PY) scripts/testenv.py run -- $(PY) -m bench.instructions $(if $(QUICK),--quick)

# Network faults between hosts (scripts/cluster.py: network namespaces, needs root; not part
# of `make test`): six scenarios under load, a table, results in bench/results/partitions-*.
partitions: install-dev
	$(PY) -m bench.partitions

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache
