# The two set-up commands of the README. Both create .venv if missing and reinstall only when
# pyproject.toml, setup.py or the C kernel changed (stamp files), so a second run reuses the
# environment.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint bench

demo: $(VENV)/.installed-examples
	$(BIN)/python examples/digits.py

test: $(VENV)/.installed-dev lint
	$(BIN)/python -m pytest

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: $(VENV)/.installed-dev
	$(BIN)/python benchmarks/optimizer_step.py

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed-%: pyproject.toml setup.py lightning_ranger/callbacks/_centralize_kernel.c | $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[$*]"
	touch $@
