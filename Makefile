# Entry points. Per-area targets live in mk/*.mk (cdk, container, local pipeline, engines, benchmarks).
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

VENV ?= .venv
PY := $(abspath $(VENV))/bin/python
ENV ?= dev
# jsii warns on every call under Node 20; the CDK CLI would otherwise phone home.
export JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION := 20
export CDK_DISABLE_CLI_TELEMETRY := true
export PATH := $(abspath node_modules/.bin):$(abspath $(VENV))/bin:$(PATH)

PY_REQS := requirements.txt $(wildcard requirements/*.txt) containers/whisper/requirements.txt constraints.txt pyproject.toml

.PHONY: help install install-cdk install-server install-torch install-engines install-dev test pytest typecheck lock clean

help: ## list targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | sort

# One venv, installed per part (requirements/<part>.txt), every part against the one lock
# (constraints.txt). A target depends on the part it needs: `make demo` installs `server` only,
# `make synth` `cdk` only (+ node_modules), `make test` everything (`dev` includes every part).
PARTS := cdk server torch engines dev

$(VENV)/bin/python:
	python3 -m venv $(VENV)

# --no-compile: byte-compiling every installed file (torch alone has thousands) costs install
# time for modules the tests never import; Python compiles what it imports on first use.
$(VENV)/.installed-%: $(PY_REQS) | $(VENV)/bin/python
	$(PY) -m pip install -q --disable-pip-version-check --no-compile -c constraints.txt -r requirements/$*.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -e .
	touch $@

# `dev` holds every part, so it also satisfies theirs.
$(VENV)/.installed-dev: $(PY_REQS) | $(VENV)/bin/python
	$(PY) -m pip install -q --disable-pip-version-check --no-compile -c constraints.txt -r requirements/dev.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -e .
	touch $(foreach part,$(PARTS),$(VENV)/.installed-$(part))

install-cdk: $(VENV)/.installed-cdk node_modules/.installed ## install the CDK app's part (synth, diff, deploy, audit)
install-server: $(VENV)/.installed-server ## install the server part (the container's runtime, the demo, whisper-sm)
install-torch: $(VENV)/.installed-torch ## install the PyTorch backend's part
install-engines: $(VENV)/.installed-engines ## install the engine tooling's part
install-dev: install
install: $(VENV)/.installed-dev node_modules/.installed ## install everything tests need (every part), from pinned files

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

# pytest spreads over PYTEST_WORKERS processes (pytest-xdist; 2 = this project's CI machine's
# cores: the suite waits on servers and subprocesses about half of the time) while mypy runs
# beside it; either failing fails the target.
PYTEST_WORKERS ?= 2

test: install ## install, then run every test and mypy --strict (CPU only; GPU tests are skipped without CUDA)
	$(MAKE) --no-print-directory -j2 pytest typecheck

pytest: install ## every test, in random order, on PYTEST_WORKERS workers
	$(PY) -m pytest -n $(PYTEST_WORKERS)

typecheck: $(VENV)/.installed-dev ## mypy --strict over whisper_contract, stacks, constructs, lambda ([tool.mypy] in pyproject.toml)
	rm -rf build/typecheck
	$(PY) -m whisper_build.layout stage typecheck build/typecheck --link > /dev/null
	$(PY) -m mypy

lock: ## re-pin every transitive Python dependency into constraints.txt
	$(PY) -m pip freeze --exclude-editable | grep -v '^-e ' > constraints.txt

clean: ## remove build outputs (keeps the venv)
	rm -rf cdk.out build demo-output .pytest_cache

include $(wildcard mk/*.mk)
