"""GradientCentralization with 2 CPU processes (gloo): DDP and FSDP2 match one process.

One launch of ``scripts/gradient_centralization_distributed.py`` in 2 processes fits the same model
three times in one process group (DDP; FSDP2; FSDP2 with ``min_ndim=1``, whose sharded 1-D
gradients need collectives), then centralizes DTensors of other placements directly, and saves what
each rank got; the tests compare that with one process.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers.asserts import assert_close, assert_equal
from helpers.data import batches_of, make_data
from helpers.launch import run_two_processes
from helpers.models import TinyNet
from helpers.references import centralized, reference_gradient_centralization
from scripts.gradient_centralization_distributed import EPOCHS, VARIANTS

pytestmark = pytest.mark.distributed


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("gradient_centralization_distributed")
    run_two_processes("gradient_centralization_distributed", str(out), timeout=300)
    return out


def _record(out: Path, name: str, rank: int) -> dict:
    return torch.load(out / f"{name}_rank{rank}.pt", weights_only=True)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_two_processes_on_half_batches_match_one_on_full_batches(out: Path, variant: str) -> None:
    sharded, min_ndim = VARIANTS[variant]
    first, second = _record(out, variant, 0), _record(out, variant, 1)
    assert first["step"] == second["step"] == 5 * EPOCHS
    assert first["sharded"] == [sharded] * 4
    assert_equal(second["weights"], first["weights"])  # ranks identical
    expected, _ = reference_gradient_centralization(
        TinyNet(), batches_of(make_data(20), 4), epochs=EPOCHS, min_ndim=min_ndim
    )
    assert_close(first["weights"], expected, atol=1e-6)


def test_dtensor_placements_match_full_tensors(out: Path) -> None:
    for rank in (0, 1):
        record = _record(out, "placements", rank)
        assert record["got"].keys() == record["full"].keys()
        for name, got in record["got"].items():
            torch.testing.assert_close(
                got, centralized(record["full"][name]), rtol=0, atol=1e-6, msg=name
            )
