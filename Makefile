# The two commands of the README: `make demo` runs the proxy on embedded defaults,
# `make test` runs the whole suite on a fresh Debian/Ubuntu machine with Python 3.11.
# `make bench` / `make profile` load it with wrk against nginx and haproxy (README, Performance).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lint unit integration e2e bench profile clean

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "error: Python 3.11 or newer is required")'
	@scripts/system-deps.sh venv
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.run-installed: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install -q -e .
	@touch $@

$(VENV)/.test-installed: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install -q -e '.[test]'
	@touch $@

demo: $(VENV)/.run-installed
	$(BIN)/threescale-proxy demo

test: $(VENV)/.test-installed
	@scripts/system-deps.sh
	$(BIN)/ruff check proxy tests bench
	$(BIN)/mypy --strict proxy
	$(BIN)/lint-imports
	scripts/check-docker.sh
	scripts/check-cfn.sh
	$(BIN)/pytest

lint: $(VENV)/.test-installed
	$(BIN)/ruff check proxy tests bench
	$(BIN)/ruff format --check proxy tests bench
	$(BIN)/mypy --strict proxy
	$(BIN)/lint-imports

unit integration: $(VENV)/.test-installed
	$(BIN)/pytest tests/$@

# End to end through API Gateway: LocalStack (its own Python 3.13 venv) in front of the proxy.
e2e: $(VENV)/.test-installed
	scripts/e2e-apigw.sh

# A venv with the test extras has everything the benchmark needs too: don't reinstall over it.
RUN_READY := $(if $(wildcard $(VENV)/.test-installed),$(VENV)/.test-installed,$(VENV)/.run-installed)
BENCH_ARGS ?=
PROFILE_ARGS ?=

bench: $(RUN_READY)
	@scripts/bench-deps.sh
	$(BIN)/python -m bench $(BENCH_ARGS)

profile: $(RUN_READY)
	@scripts/bench-deps.sh
	@test -x $(BIN)/py-spy || $(BIN)/python -m pip install -q py-spy
	$(BIN)/python -m bench.profile $(PROFILE_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
