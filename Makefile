# Two commands do all the set-up: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint venv clean labextension ui-test ui-test-e2e gpu-check

venv: $(STAMP)

# pyproject.toml declares ranges; constraints.txt pins this venv inside them.
# torch first, by exact version, so pip takes the local CPU wheel and never a CUDA build.
# `pip install -e` also builds the labextension (hatch-jupyter-builder runs jlpm, which
# jupyter-builder brings into pip's build environment; needs Node >= 20).
$(STAMP): pyproject.toml constraints.txt package.json
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt torch
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/nblab demo

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: $(STAMP) lint
	$(PY) -m pytest
	$(MAKE) -j3 ui-test

# On a GPU machine that has torch, triton, numpy and pytest: no venv, no install; results
# under gpu-check/ (scripts/gpu_check.py says what runs). ARGS=--dry-run lists the steps.
gpu-check:
	PYTHON=$(PYTHON) scripts/gpu-check.sh $(ARGS)

# -- JupyterLab extension: rebuild after labext/ changes; galata tests ---------------
LABEXT := nblab/labextension/package.json
LABEXT_SRC := $(wildcard labext/src/*.ts labext/style/* labext/schema/*) tsconfig.json
JLPM := PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(CURDIR)/$(VENV)/bin/jlpm
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
CHROMIUM := /usr/bin/chromium
UI_DEPS := ui-tests/node_modules/.yarn-state.yml

labextension: $(LABEXT)

# jlpm rebuilds nblab/labextension; pip copies it into the venv's share/jupyter again
$(LABEXT): $(LABEXT_SRC) | $(STAMP)
	$(JLPM) install
	$(JLPM) build:prod
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(LABEXT)

# Debian's chromium (galata drives it; no Playwright browser download). Installed in
# parallel with the ui-tests packages by `make -j3 ui-test`.
$(CHROMIUM):
	$(SUDO) apt-get update -qq -o DPkg::Lock::Timeout=300
	$(SUDO) env DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq -o DPkg::Lock::Timeout=300 chromium

$(UI_DEPS): ui-tests/package.json | $(STAMP)
	cd ui-tests && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 $(JLPM) install
	touch $(UI_DEPS)

# the sidebar model's unit tests (node --test), then galata, including the end-to-end
# test that starts a real sweep (papermill jobs) from the context menu, watches it
# succeed and opens its report; screenshots land in ui-tests/screenshots and
# ui-tests/test-results (not committed)
ui-test: $(LABEXT) $(CHROMIUM) $(UI_DEPS)
	$(JLPM) test
	cd ui-tests && NBLAB_UI_E2E=1 NBLAB_PYTHON=$(CURDIR)/$(PY) $(JLPM) playwright test

ui-test-e2e: ui-test

clean:
	rm -rf $(VENV)
