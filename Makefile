# rectrain: `make demo` and `make test` work on a fresh Debian machine; everything else is a step of theirs.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(abspath $(VENV))/bin
PY := $(BIN)/python
EXTRAS := operator,trainer,local,cli,test
# Re-install when the pins change.
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml requirements/constraints.txt 2>/dev/null | sha1sum | cut -c1-12)
export PATH := $(BIN):$(PATH)
export KUBECONFIG_LOCAL := $(abspath .rectrain/kubeconfig)
PYTEST_ARGS ?=

.PHONY: help setup system-python venv tools control-plane cluster cluster-down cluster-status crd test demo demo-down clean

help:
	@echo "make demo          set up, start the local cluster and run a training job to Succeeded"
	@echo "make test          set up and run every test"
	@echo "make setup         venv + pinned packages + kubectl/helm + control-plane build (cached)"
	@echo "make cluster       start the local cluster (KUBECONFIG=.rectrain/kubeconfig)"
	@echo "make cluster-down  stop it"
	@echo "make crd           regenerate crds/, the chart's CRD and docs/trainer.md from the API types"

# A fresh Debian has python3 but may lack venv/pip.
system-python:
	@$(PYTHON) -c 'import venv, ensurepip' 2>/dev/null || { \
	  echo "installing python3-venv and python3-pip"; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends python3-venv python3-pip; }

$(STAMP): pyproject.toml requirements/constraints.txt | system-python
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "installing Python packages (pinned) into $(VENV); the first time downloads torch and takes a few minutes"
	@# Progress: on a terminal pip's own download bars; elsewhere (CI, a log) a line per package and
	@# no bars, without pip's "Requirement already satisfied" lines.
	@set -o pipefail; pip=( $(PY) -m pip install --disable-pip-version-check -c requirements/constraints.txt -e '.[$(EXTRAS)]' ); \
	if [ -t 1 ]; then "$${pip[@]}"; \
	else "$${pip[@]}" --progress-bar off | { grep -v '^Requirement already satisfied' || true; }; fi
	@rm -f $(VENV)/.installed-* && touch $@

venv: $(STAMP)

tools: venv
	@$(BIN)/rectrain-local tools >/dev/null

control-plane: venv
	@$(BIN)/rectrain-local build >/dev/null

setup: venv tools control-plane

cluster: setup
	@$(BIN)/rectrain-local up

cluster-down:
	@test -x $(BIN)/rectrain-local && $(BIN)/rectrain-local down || true

cluster-status: venv
	@$(BIN)/rectrain-local status

crd: venv
	@$(BIN)/rectrain-crd

test: setup
	@$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: that is a failure here" >&2; exit 1; fi; exit $$rc

demo: setup
	@bash examples/demo.sh

demo-down:
	@if [ -f .rectrain/operator.pid ]; then kill "$$(cat .rectrain/operator.pid)" 2>/dev/null || true; rm -f .rectrain/operator.pid; fi
	@$(MAKE) --no-print-directory cluster-down

clean: demo-down
	rm -rf $(VENV) .rectrain
