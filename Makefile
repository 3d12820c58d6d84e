# qunfa — two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint fmt bench install clean browser

install: $(STAMP)

# Re-install whenever pyproject.toml changes; the stamp keeps repeat runs fast.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

## make run: the demo — sandbox in-process, 100,000 followers, two campaigns, console on :8000
run: $(STAMP)
	$(BIN)/qunfa demo

## make test: lint (ruff + mypy --strict) then the whole suite (unit, integration, e2e)
test: $(STAMP) browser lint
	$(BIN)/python -m pytest tests

# The console's browser test drives Debian's Chromium with Playwright (no browser download).
SUDO := $(shell test "$$(id -u)" = 0 || echo sudo)
browser:
	@test -x /usr/bin/chromium || { echo "installing Debian's chromium for the console test"; \
	  $(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q \
	  chromium chromium-driver; }

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

fmt: $(STAMP)
	$(BIN)/ruff format src tests bench
	$(BIN)/ruff check --fix src tests bench

## make bench: performance figures (ratios against a raw floor measured in the same run)
bench: $(STAMP)
	$(BIN)/python bench/broadcast.py --recipients 1000000
	$(BIN)/python bench/sms.py --recipients 1000000

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache data
