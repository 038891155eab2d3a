# The one entry point: run, test, lint, stack, bench, soak, requirements.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 8080
N ?= 2
MINUTES ?= 10

.PHONY: run test test-unit lint stack bench soak mutate requirements clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Stamps re-run the install whenever pyproject.toml changes. Every install is
# held to requirements.txt's pins: the tests run on what App Platform deploys,
# and core.servers' adapters on the versions they were verified against.
PIP_INSTALL := $(BIN)/pip install -q -c requirements.txt

$(VENV)/.runtime: $(BIN)/python pyproject.toml requirements.txt
	$(PIP_INSTALL) -e .
	touch $@

$(VENV)/.dev: $(BIN)/python pyproject.toml requirements.txt
	$(PIP_INSTALL) -e '.[dev,uvicorn]'
	touch $@ $(VENV)/.runtime

run: $(VENV)/.runtime
	DJANGO_DEBUG=1 $(BIN)/python manage.py migrate --noinput
	DJANGO_DEBUG=1 $(BIN)/python manage.py ensure_room lobby --name Lobby
	DJANGO_DEBUG=1 $(BIN)/daphne -b 127.0.0.1 -p $(PORT) backend.asgi:application

test: $(VENV)/.dev
	$(BIN)/pytest

test-unit: $(VENV)/.dev
	$(BIN)/pytest tests/unit

lint: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	DJANGO_SECRET_KEY=typecheck-only $(BIN)/mypy
	DJANGO_DEBUG=1 $(BIN)/python manage.py makemigrations --check --dry-run

stack: $(VENV)/.dev
	$(BIN)/python -m harness.stack --instances $(N)

$(VENV)/.bench: $(VENV)/.dev
	$(PIP_INSTALL) -e '.[dev,uvicorn,bench]'
	touch $@

bench: $(VENV)/.bench
	$(BIN)/python -m bench

# Not part of make test: MINUTES of mixed traffic on two instances, Redis
# restarted once; fails on lost messages, errors, leaks (docs/reliability.md).
soak: $(VENV)/.bench
	$(BIN)/python -m soak --minutes $(MINUTES)

$(VENV)/.mutate: $(VENV)/.dev
	$(PIP_INSTALL) -e '.[dev,uvicorn,mutate]'
	touch $@

# Not part of make test: mutation testing of the rule modules; fails below
# 90 % of mutants killed (docs/testing.md). About 45 minutes on 2 cores.
mutate: $(VENV)/.mutate
	rm -rf mutants
	$(BIN)/python -m tests.support.mutation

# requirements.txt is what App Platform's buildpack installs: pinned,
# generated from pyproject.toml. CI fails when the two disagree.
requirements: $(VENV)/.dev
	$(BIN)/pip-compile -q --strip-extras --no-emit-index-url --no-emit-find-links \
	  --output-file requirements.txt pyproject.toml

clean:
	rm -rf $(VENV) staticfiles .pytest_cache mutants
