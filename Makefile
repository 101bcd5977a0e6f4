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

.PHONY: help install test lock clean

help: ## list targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | sort

install: $(VENV)/.installed node_modules/.installed ## install everything tests need, from pinned files

$(VENV)/.installed: $(PY_REQS)
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt -r requirements.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -e .
	touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

test: install ## install, then run every test (CPU only; GPU tests are skipped without CUDA)
	$(PY) -m pytest

lock: ## re-pin every transitive Python dependency into constraints.txt
	$(PY) -m pip freeze --exclude-editable | grep -v '^-e ' > constraints.txt

clean: ## remove build outputs (keeps the venv)
	rm -rf cdk.out build demo-output .pytest_cache

include $(wildcard mk/*.mk)
