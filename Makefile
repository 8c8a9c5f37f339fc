# nsbox developer entry points. Run as root on Debian 12.
#   make demo   install everything, then run a busybox container with nsbox-runtime and with nsbox
#   make install  install nsbox for every user: a venv in /opt/nsbox, commands in /usr/local/bin
#   make uninstall  remove what make install installed
#   make test   run the test suite
#   make test-v2  run the cgroup v2 tests in a qemu guest with a pure cgroup v2 kernel
#   make lint   ruff
#   make bench  compare nsbox-runtime with runc and crun (writes docs/benchmarks.md)
#   make bench-engine  compare the nsbox engine with podman (writes docs/benchmarks-engine.md)
#   make bench-stats  nsbox vs podman `stats --no-stream` over 50 containers (docs/benchmarks-stats.md)
#   make bench-build  unchanged 10-step rebuild: nsbox build vs buildah bud (bench/results/build.md)
#   make bench-pull  pull of a 5-layer 105 MB image: nsbox vs podman vs skopeo (bench/results/pull.md)
#   make bench-docker  docker run --rm / exec on nsbox-runtime vs runc, one dockerd (bench/results/docker.md)
#   make security-report  run the container-escape battery (writes the table in docs/security.md)

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

VENV       := .venv
VENV_PY    := $(VENV)/bin/python
# Rebuilt when the packaging or the monitor's C loop (compiled by setup.py) changes;
# lives in the venv so deleting .venv resets it.
DEPS_STAMP := $(VENV)/.nsbox-deps-installed
# The launchers too: pip copies them into the venv, so an edit needs a reinstall.
DEPS_INPUTS := pyproject.toml setup.py nsbox/engine/monitor_loop.c bin/nsbox-runtime bin/nsbox bin/launcher.c bin/runtime_fast.c bin/runtime_fast.h bin/syscall_module.c

# `make install`: a venv for every user, and its two commands on everyone's PATH.
INSTALL_DIR ?= /opt/nsbox
BIN_DIR     ?= /usr/local/bin
# Extra `pip install` arguments for `make install`, e.g. --no-build-isolation offline.
INSTALL_PIP_ARGS ?=
INSTALL_ABS  = $(abspath $(INSTALL_DIR))
BIN_ABS      = $(abspath $(BIN_DIR))
INSTALL_CMDS := nsbox nsbox-runtime

# The runtime the demo drives; `make demo RUNTIME=runc` shows the reference behaviour.
RUNTIME    ?= $(VENV)/bin/nsbox-runtime
# The engine half of the demo uses its default runtime unless RUNTIME is given.
ENGINE_RUNTIME = $(if $(filter file,$(origin RUNTIME)),,$(RUNTIME))
# Extra pytest arguments, e.g. `make test PYTEST_ARGS="-k hooks -x"`.
PYTEST_ARGS ?=
# Per-test limit (pytest-timeout): a hung container must not eat CI's time budget.
TEST_TIMEOUT ?= 300
# The whole run's ceiling (timeout(1)): a hang after the last test fails the run
# instead of holding CI until its own limit.
SUITE_TIMEOUT ?= 45m

# The real interpreter behind `python3`: with pyenv, `python3` is a shim script,
# and a venv built from the shim would start every command through it.
# Deferred (=) so the slow shim only runs when the venv is actually created.
# What the demo container runs: its own hostname, PID 1, and its namespaces.
DEMO_SCRIPT := echo "hostname: $$(hostname)"; echo "pid: $$$$"; echo "uid: $$(id -u)"; echo "namespaces:"; ls /proc/self/ns

REAL_PYTHON = $(shell python3 -c 'import os, sys; print(os.path.realpath(sys.executable))')

.PHONY: help deps apt-deps code-bundle demo install uninstall test test-v2 lint bench bench-engine bench-stats bench-build bench-pull bench-docker security-report clean stress

help:
	@echo "make demo   install apt + pip dependencies, run a busybox container (runtime, then engine)"
	@echo "make install  venv in INSTALL_DIR=$(INSTALL_DIR), nsbox + nsbox-runtime in BIN_DIR=$(BIN_DIR)"
	@echo "make uninstall  remove them again (container data in /var/lib/nsbox stays)"
	@echo "make test   run the tests (.venv/bin/pytest)"
	@echo "make test-v2  the cgroupv2-marked tests in a qemu cgroup v2 guest (tests/v2lane)"
	@echo "make lint   ruff check nsbox tests bench"
	@echo "make bench  hyperfine: nsbox-runtime vs runc vs crun -> docs/benchmarks.md"
	@echo "make bench-engine  nsbox vs podman: run --rm time, idle memory -> docs/benchmarks-engine.md"
	@echo "make bench-stats  nsbox vs podman stats --no-stream, 50 containers -> docs/benchmarks-stats.md"
	@echo "make bench-build  unchanged 10-step rebuild: nsbox build vs buildah bud -> bench/results/build.md"
	@echo "make bench-pull  5-layer 105 MB pull from a local registry: nsbox vs podman vs skopeo -> bench/results/pull.md"
	@echo "make bench-docker  docker run --rm / exec: nsbox-runtime vs runc under one dockerd -> bench/results/docker.md"
	@echo "make stress  timed SIGKILLs of nsbox run and its monitor, STRESS_TRIALS at STRESS_CONCURRENCY (docs/reliability.md)"
	@echo "make security-report  the escape battery -> docs/security.md"
	@echo "variables:  RUNTIME=$(RUNTIME) PYTEST_ARGS=... TEST_TIMEOUT=$(TEST_TIMEOUT) SUITE_TIMEOUT=$(SUITE_TIMEOUT)"

apt-deps:
	@scripts/install-deps.sh scripts/apt-packages.txt

$(DEPS_STAMP): $(DEPS_INPUTS)
	@if ! $(VENV_PY) -c 'import sys' 2>/dev/null; then \
	    py="$(REAL_PYTHON)"; \
	    echo "creating $(VENV) from $$py"; \
	    rm -rf $(VENV); \
	    "$$py" -m venv $(VENV); \
	fi
	$(VENV_PY) -m pip install --quiet --disable-pip-version-check -e '.[dev,dashboard]' --config-settings editable_mode=compat
	@# setuptools stays (tests run setup.py with this interpreter), but not the .pth by
	@# which it imports _distutils_hack at every interpreter start: ~0.5 ms of each
	@# command (docs/development.md); `import setuptools` loads its distutils itself.
	rm -f $(VENV)/lib/python*/site-packages/distutils-precedence.pth
	@touch $@

# Every module's .pyc, written whatever PYTHONDONTWRITEBYTECODE says (py_compile does
# not read it): with that variable set, a module whose .pyc is missing or stale is
# compiled from its source at every import, which put ~2.5 ms into every runtime
# command (nsbox/_codebundle.py is imported before the bundle) and more into the
# engine's. Remade when a module changed.
BYTECODE_STAMP := $(VENV)/.nsbox-bytecode
$(BYTECODE_STAMP): $(shell find nsbox -name '*.py' -not -path '*/__pycache__/*') | $(DEPS_STAMP)
	$(VENV_PY) -m compileall -q nsbox
	@touch $@

deps: apt-deps $(DEPS_STAMP) $(BYTECODE_STAMP)

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
	@echo
	@scripts/demo-engine.sh $(VENV)/bin/nsbox $(ENGINE_RUNTIME)

# Not editable, and from the real interpreter: users other than root run these
# commands, so nothing may point into this clone (which may be under /root).
install:
	@umask 022; \
	dir="$(INSTALL_ABS)"; bin="$(BIN_ABS)"; \
	if [ -e "$$dir" ] && [ ! -f "$$dir/pyvenv.cfg" ] && [ -n "$$(ls -A "$$dir")" ]; then \
	    echo "install: $$dir exists and is not a venv; not touching it" >&2; exit 1; \
	fi; \
	py="$(REAL_PYTHON)"; \
	echo "creating $$dir from $$py"; \
	"$$py" -m venv --clear "$$dir"; \
	echo "$$dir/bin/pip install ."; \
	"$$dir/bin/python" -m pip install --quiet --disable-pip-version-check $(INSTALL_PIP_ARGS) .; \
	echo "$$dir/bin/pip uninstall setuptools (nothing uses it; its .pth costs every command ~0.5 ms)"; \
	"$$dir/bin/python" -m pip uninstall --quiet --yes setuptools; \
	mkdir -p "$$bin"; \
	for cmd in $(INSTALL_CMDS); do \
	    ln -sfn "$$dir/bin/$$cmd" "$$bin/$$cmd"; \
	    echo "$$bin/$$cmd -> $$dir/bin/$$cmd"; \
	done; \
	"$$dir/bin/python" -I -c 'from nsbox.engine.monitor import loop_binary as b; \
	    print(f"monitor: C loop ({b()})" if b() else \
	          "monitor: Python (the C loop was not built: is cc installed?)")'

uninstall:
	@dir="$(INSTALL_ABS)"; bin="$(BIN_ABS)"; \
	for cmd in $(INSTALL_CMDS); do \
	    if [ -L "$$bin/$$cmd" ] && [ "$$(readlink "$$bin/$$cmd")" = "$$dir/bin/$$cmd" ]; then \
	        rm -f "$$bin/$$cmd"; echo "removed $$bin/$$cmd"; \
	    fi; \
	done; \
	if [ -f "$$dir/pyvenv.cfg" ]; then \
	    rm -rf --one-file-system "$$dir"; echo "removed $$dir"; \
	fi

test: deps $(CODE_BUNDLE)
	@rc=0; timeout -k 60 $(SUITE_TIMEOUT) $(VENV)/bin/pytest -ra --timeout=$(TEST_TIMEOUT) \
	    $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest ran no tests; treating that as a failure" >&2; fi; \
	if [ $$rc -eq 124 ]; then echo "make test: the suite ran past SUITE_TIMEOUT=$(SUITE_TIMEOUT)" >&2; fi; \
	exit $$rc

# PYTEST_ARGS go to pytest inside the guest; -m cgroupv2 is always applied.
test-v2: deps
	$(VENV_PY) tests/v2lane/lane.py $(PYTEST_ARGS)

lint: deps
	$(VENV)/bin/ruff check nsbox tests bench

# The development tree's code bundle (nsbox/_codebundle.py), remade when a module in it
# changed: pip install -e made it, and a stale module is imported from its source meanwhile.
CODE_BUNDLE := nsbox/_runtime.codebundle
$(CODE_BUNDLE): $(wildcard nsbox/*.py nsbox/runtime/*.py nsbox/runtime/*/*.py) | $(DEPS_STAMP)
	$(VENV_PY) -c 'import nsbox._codebundle as b; b.build_in_tree(".")'

code-bundle: $(CODE_BUNDLE) $(BYTECODE_STAMP)

bench: deps $(CODE_BUNDLE)
	bench/runtime_bench.sh

bench-engine: deps
	$(VENV_PY) bench/engine_bench.py

bench-stats: deps
	$(VENV_PY) bench/stats_bench.py

bench-build: deps
	sh bench/build_bench.sh

bench-pull: deps
	sh bench/pull_bench.sh

bench-docker: deps
	$(VENV_PY) bench/docker_bench.py

STRESS_TRIALS ?= 500
STRESS_CONCURRENCY ?= 50
stress: deps
	$(VENV_PY) tests/stress.py --trials $(STRESS_TRIALS) --concurrency $(STRESS_CONCURRENCY)

security-report: deps
	$(VENV_PY) tests/security_battery.py --out docs/security.md

clean:
	rm -rf .pytest_cache .ruff_cache
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +
