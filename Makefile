# The two commands of the README, plus their parts. Every target creates .venv if missing and
# reinstalls only when pyproject.toml changed (stamp files), so a second run reuses the environment.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint docs smoke bench

demo: $(VENV)/.installed-examples
	$(BIN)/python examples/digits.py

# Lint and types, the docs with warnings as errors, the built wheel in a fresh venv, then pytest.
test: lint docs smoke
	$(BIN)/python -m pytest

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

docs: $(VENV)/.installed-dev
	$(BIN)/mkdocs build --strict --quiet --site-dir build/site

smoke: $(VENV)/.installed-dev
	$(BIN)/python .ci/wheel_smoke.py

bench: $(VENV)/.installed-dev
	$(BIN)/python benchmarks/optimizer_step.py

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed-%: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[$*]"
	touch $@
