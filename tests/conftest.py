"""Markers and fixtures for every test module.

The shared test kit (models, data, trainers, references, launchers) is the package ``helpers``
beside this file; the scripts that the multi-process tests run are in ``scripts``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

MARKERS = {
    "distributed": "multi-process tests (2 CPU processes with gloo); slow, run in CI",
    "cuda": "tests of the CUDA paths; skipped without a GPU",
}


def pytest_configure(config: pytest.Config) -> None:
    for name, description in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {description}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _restore_torch_rng() -> Iterator[None]:
    """Give torch's global random state back after each test: the models seed it when they are
    built, and no test should depend on which tests ran before it."""
    state = torch.random.get_rng_state()
    yield
    torch.random.set_rng_state(state)
