# Two commands on a fresh machine: `make serve` and `make test`.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
SERVE_STAMP := $(VENV)/.installed-serve
DEV_STAMP   := $(VENV)/.installed-dev

.PHONY: serve test fault install install-dev browser lint bench charts demo-model clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Reinstall only when the project's metadata changes, so repeat runs are quick.
# `make serve` installs what serving needs; tests and lint add their extras.
$(SERVE_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $(SERVE_STAMP)

$(DEV_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test,dev]'
	touch $(SERVE_STAMP) $(DEV_STAMP)

install: $(SERVE_STAMP)
install-dev: $(DEV_STAMP)

serve: install
	$(BIN)/stratus serve $(ARGS)

test: install-dev browser
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# The dashboard's browser test (tests/integration/test_dashboard.py) drives Debian's Chromium, never
# a downloaded browser: installed here when missing and this runs as root with apt-get; otherwise
# that test skips and says how to enable it.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get install -y -q chromium >/dev/null 2>&1 \
	      || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1; } \
	      || echo "chromium could not be installed: the dashboard test will skip"; \
	  else \
	    echo "no chromium (install it: apt-get install -y chromium): the dashboard test will skip"; \
	  fi; }

# The fault suite at full length (CI runs it in its short form within `make test`):
# docs/RELIABILITY.md lists each scenario and its last figures.
fault: install-dev
	STRATUS_FAULT_FULL=1 $(BIN)/python -m pytest -q tests/fault $(PYTEST_ARGS)

# Format, lint, the import rules (docs/ARCHITECTURE.md) and types; mypy-baseline.txt holds the
# type errors the code had when the check was introduced: a new one fails, a fixed one is
# dropped with `make types-baseline`.
lint: install-dev
	$(BIN)/ruff check src tests bench scripts
	$(BIN)/ruff format --check src tests bench scripts
	$(BIN)/lint-imports
	$(BIN)/mypy | $(BIN)/mypy-baseline filter --allow-unsynced

types-baseline: install-dev
	$(BIN)/mypy | $(BIN)/mypy-baseline sync

bench: install-dev
	$(BIN)/python bench/engine_throughput.py

charts: $(BIN)/python
	$(BIN)/pip install -q -e '.[bench]'
	$(BIN)/python bench/charts.py

demo-model: install-dev
	$(BIN)/python scripts/train_demo_model.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
