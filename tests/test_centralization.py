"""Gradient Centralization's formula (``lightning_ranger.optim.centralization``) without
Lightning: every layout, block size and dtype against a hand loop, and bad input."""

from __future__ import annotations

import pytest
import torch
from helpers.data import gradients_of_many_layouts
from helpers.references import centralized

from lightning_ranger.optim.centralization import CPU_BLOCK_NUMEL, centralize_gradients


@pytest.mark.parametrize(("dtype", "atol"), [(torch.float32, 2e-6), (torch.float64, 1e-14)])
@pytest.mark.parametrize("cpu_block_numel", [None, 1000, 1, CPU_BLOCK_NUMEL])
def test_matches_the_hand_loop(
    dtype: torch.dtype, atol: float, cpu_block_numel: int | None
) -> None:
    grads = gradients_of_many_layouts(dtype)
    expected = [centralized(g) for g in grads]
    storage = [(g.data_ptr(), g.stride()) for g in grads]
    centralize_gradients(grads, cpu_block_numel)
    assert [(g.data_ptr(), g.stride()) for g in grads] == storage  # in place
    for g, e in zip(grads, expected, strict=True):
        assert g.dtype == dtype
        torch.testing.assert_close(g, e, rtol=0, atol=atol)
        if g.numel():
            means = g.mean(dim=tuple(range(1, g.ndim))) if g.ndim > 1 else g.mean()
            torch.testing.assert_close(means, torch.zeros_like(means), rtol=0, atol=atol)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_16_bit_gradients_get_a_float32_mean(dtype: torch.dtype) -> None:
    grads = gradients_of_many_layouts(dtype)
    # The exact result in float64, rounded once to the gradient's dtype.
    expected = [centralized(g.double()).to(dtype) for g in grads]
    centralize_gradients(grads)
    for g, e in zip(grads, expected, strict=True):
        assert g.dtype == dtype
        torch.testing.assert_close(g.double(), e.double(), rtol=torch.finfo(dtype).eps, atol=1e-3)


def test_a_scalar_is_refused() -> None:
    with pytest.raises(ValueError, match="rank >= 1, got a scalar"):
        centralize_gradients([torch.tensor(1.0)])


@pytest.mark.parametrize(
    ("cpu_block_numel", "error", "match"),
    [
        (0, ValueError, r"`cpu_block_numel` must be a positive int \(elements per block\) or None"),
        ("1", TypeError, r"`cpu_block_numel` must be a positive int .* or None, got '1'"),
    ],
)
def test_bad_block_size(cpu_block_numel: object, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        centralize_gradients([torch.ones(2, 2)], cpu_block_numel)  # type: ignore[arg-type]
