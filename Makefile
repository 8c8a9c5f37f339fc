# nsbox developer entry points. Run as root on Debian 12.
#   make demo   install everything, then run a busybox container with nsbox-runtime
#   make test   run the test suite
#   make test-v2  run the cgroup v2 tests in a qemu guest with a pure cgroup v2 kernel
#   make lint   ruff
#   make bench  compare nsbox-runtime with runc and crun (writes docs/benchmarks.md)
#   make bench-engine  compare the nsbox engine with podman (writes docs/benchmarks-engine.md)
#   make security-report  run the container-escape battery (writes the table in docs/security.md)

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

VENV       := .venv
VENV_PY    := $(VENV)/bin/python
# Rebuilt when pyproject.toml changes; lives in the venv so deleting .venv resets it.
DEPS_STAMP := $(VENV)/.nsbox-deps-installed

# The runtime the demo drives; `make demo RUNTIME=runc` shows the reference behaviour.
RUNTIME    ?= $(VENV)/bin/nsbox-runtime
# Extra pytest arguments, e.g. `make test PYTEST_ARGS="-k hooks -x"`.
PYTEST_ARGS ?=
# Per-test limit (pytest-timeout): a hung container must not eat CI's time budget.
TEST_TIMEOUT ?= 300

# The real interpreter behind `python3`: with pyenv, `python3` is a shim script,
# and a venv built from the shim would start every command through it.
# Deferred (=) so the slow shim only runs when the venv is actually created.
# What the demo container runs: its own hostname, PID 1, and its namespaces.
DEMO_SCRIPT := echo "hostname: $$(hostname)"; echo "pid: $$$$"; echo "uid: $$(id -u)"; echo "namespaces:"; ls /proc/self/ns

REAL_PYTHON = $(shell python3 -c 'import os, sys; print(os.path.realpath(sys.executable))')

.PHONY: help deps apt-deps demo test test-v2 lint bench bench-engine security-report clean

help:
	@echo "make demo   install apt + pip dependencies, run a busybox container"
	@echo "make test   run the tests (.venv/bin/pytest)"
	@echo "make test-v2  the cgroupv2-marked tests in a qemu cgroup v2 guest (tests/v2lane)"
	@echo "make lint   ruff check nsbox tests bench"
	@echo "make bench  hyperfine: nsbox-runtime vs runc vs crun -> docs/benchmarks.md"
	@echo "make bench-engine  nsbox vs podman: run --rm time, idle memory -> docs/benchmarks-engine.md"
	@echo "make security-report  the escape battery -> docs/security.md"
	@echo "variables:  RUNTIME=$(RUNTIME) PYTEST_ARGS=... TEST_TIMEOUT=$(TEST_TIMEOUT)"

apt-deps:
	@scripts/install-deps.sh scripts/apt-packages.txt

$(DEPS_STAMP): pyproject.toml
	@if ! $(VENV_PY) -c 'import sys' 2>/dev/null; then \
	    py="$(REAL_PYTHON)"; \
	    echo "creating $(VENV) from $$py"; \
	    rm -rf $(VENV); \
	    "$$py" -m venv $(VENV); \
	fi
	$(VENV_PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]' --config-settings editable_mode=compat
	@touch $@

deps: apt-deps $(DEPS_STAMP)

demo: deps
	@tmp="$$(mktemp -d /tmp/nsbox-demo.XXXXXX)"; \
	cleanup() { \
	    if grep -qF " $$tmp" /proc/self/mountinfo; then \
	        echo "demo: mounts left below $$tmp; not removing it" >&2; return 1; \
	    fi; \
	    rm -rf --one-file-system "$$tmp"; \
	}; \
	trap cleanup EXIT; \
	$(VENV_PY) tests/helpers.py bundle "$$tmp/bundle" --hostname nsbox-demo -- \
	    sh -c '$(DEMO_SCRIPT)' >/dev/null; \
	id="demo-$$$$"; \
	echo "+ $(RUNTIME) --root $$tmp/state run --bundle $$tmp/bundle $$id"; \
	$(RUNTIME) --root "$$tmp/state" run --bundle "$$tmp/bundle" "$$id"

test: deps
	@rc=0; $(VENV)/bin/pytest -ra --timeout=$(TEST_TIMEOUT) $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest ran no tests; treating that as a failure" >&2; fi; \
	exit $$rc

# PYTEST_ARGS go to pytest inside the guest; -m cgroupv2 is always applied.
test-v2: deps
	$(VENV_PY) tests/v2lane/lane.py $(PYTEST_ARGS)

lint: deps
	$(VENV)/bin/ruff check nsbox tests bench

bench: deps
	bench/runtime_bench.sh

bench-engine: deps
	$(VENV_PY) bench/engine_bench.py

security-report: deps
	$(VENV_PY) tests/security_battery.py --out docs/security.md

clean:
	rm -rf .pytest_cache .ruff_cache
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +
