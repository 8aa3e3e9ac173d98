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

# The docs site into build/site, every warning an error (a broken link or reference fails).
docs: $(VENV)/.installed-dev
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

smoke: $(VENV)/.installed-dev
	$(BIN)/python .ci/wheel_smoke.py

bench: $(VENV)/.installed-dev
	$(BIN)/python benchmarks/optimizer_step.py

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed-%: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[$*]"
	touch $@
