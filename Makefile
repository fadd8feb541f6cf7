# spiffed developer targets. Everything installs into ./.venv from the lock file.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install sysdeps dev test lint typecheck unit proto lock bench clean

$(STAMP): pyproject.toml requirements/dev.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements/dev.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

## Quick start, command 1: install and run a local trust domain.
dev: install
	$(BIN)/spiffed dev

## Quick start, command 2: install everything and run every check and test.
test: install sysdeps lint typecheck unit

## System packages the tests need (PostgreSQL from Debian's packages, ...).
sysdeps:
	bash scripts/sysdeps.sh

lint: install
	$(BIN)/ruff check src tests bench scripts
	$(BIN)/ruff format --check src tests bench scripts

typecheck: install
	$(BIN)/mypy

unit: install
	$(BIN)/pytest

## Regenerate src/spiffed/_proto from proto/ (tests fail when it is stale).
proto: install
	$(BIN)/python scripts/genproto.py

## Re-pin dependencies after editing pyproject.toml.
lock: install
	$(BIN)/python -m pip install --quiet uv
	$(BIN)/uv pip compile pyproject.toml --extra dev --python-version 3.11 -o requirements/dev.lock

bench: install
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
