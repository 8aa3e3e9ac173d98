"""Lookahead's slow-weight arithmetic (``lightning_ranger.optim.lookahead``) without Lightning: the
sync against a float64 hand loop in every layout, batch size and dtype pairing, the batches it
cuts, the check for NaN and infinity, and bad input."""

from __future__ import annotations

import pytest
import torch
from helpers.data import gradients_of_many_layouts
from torch import Tensor

from lightning_ranger.optim.lookahead import (
    CPU_BATCH_NUMEL,
    first_nonfinite,
    lookahead_sync_,
    slow_dtype,
    sync_batches,
)

ALPHA = 0.3


def _weights(dtype: torch.dtype) -> tuple[list[Tensor], list[Tensor]]:
    """Fast weights of many shapes and layouts (large, channels-last, transposed, strided, empty)
    and slow weights that differ from them, in :func:`slow_dtype` of ``dtype``."""
    fast = gradients_of_many_layouts(dtype)
    slow = [f.to(slow_dtype(dtype), copy=True) for f in fast]
    generator = torch.Generator().manual_seed(1)
    for f in fast:
        f.add_(torch.randn(f.shape, generator=generator).to(dtype))
    return slow, fast


def _hand_sync(slow: list[Tensor], fast: list[Tensor], alpha: float) -> list[Tensor]:
    """The new slow weights, one tensor at a time in float64."""
    return [s.double() + alpha * (f.double() - s.double()) for s, f in zip(slow, fast, strict=True)]


@pytest.mark.parametrize(("dtype", "atol"), [(torch.float32, 1e-6), (torch.float64, 1e-15)])
@pytest.mark.parametrize("cpu_batch_numel", [None, 1000, CPU_BATCH_NUMEL])
def test_sync_matches_the_hand_loop(
    dtype: torch.dtype, atol: float, cpu_batch_numel: int | None
) -> None:
    slow, fast = _weights(dtype)
    expected = _hand_sync(slow, fast, ALPHA)
    storage = [(t.data_ptr(), t.stride()) for t in slow + fast]
    lookahead_sync_(slow, fast, ALPHA, cpu_batch_numel)
    assert [(t.data_ptr(), t.stride()) for t in slow + fast] == storage  # in place
    for s, f, e in zip(slow, fast, expected, strict=True):
        assert s.dtype == f.dtype == dtype
        torch.testing.assert_close(s.double(), e, rtol=0, atol=atol)
        assert torch.equal(f, s)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_16_bit_fast_weights_get_float32_slow_weights_rounded_back(dtype: torch.dtype) -> None:
    slow, fast = _weights(dtype)
    assert all(s.dtype == torch.float32 for s in slow)
    expected = _hand_sync(slow, fast, ALPHA)
    lookahead_sync_(slow, fast, ALPHA)
    for s, f, e in zip(slow, fast, expected, strict=True):
        assert (s.dtype, f.dtype) == (torch.float32, dtype)
        torch.testing.assert_close(s.double(), e, rtol=0, atol=1e-6)
        assert torch.equal(f, s.to(dtype))  # the fast weights are the slow ones, rounded once


def test_alpha_one_makes_the_slow_weights_the_fast_ones() -> None:
    slow, fast = _weights(torch.float32)
    before = [f.clone() for f in fast]
    lookahead_sync_(slow, fast, 1.0)
    for s, f, b in zip(slow, fast, before, strict=True):
        assert torch.equal(s, b) and torch.equal(f, b)


def test_batches_cover_every_element_once_in_views_of_the_weights() -> None:
    big = torch.zeros(3 * CPU_BATCH_NUMEL + 5)
    channels_last = torch.zeros(64, CPU_BATCH_NUMEL // 576 + 1, 3, 3).to(
        memory_format=torch.channels_last
    )
    small = [torch.zeros(7), torch.zeros(3, dtype=torch.float64)]
    slow = [big, channels_last, *small]
    fast = [t.clone() for t in slow]
    batches = sync_batches(slow, fast)
    for slow_batch, fast_batch in batches:
        # One device and one dtype per side, as the multi-tensor kernels need.
        assert len({t.dtype for t in slow_batch}) == len({t.dtype for t in fast_batch}) == 1
        for s, f in zip(slow_batch, fast_batch, strict=True):
            assert s.shape == f.shape
            s.add_(1)  # a view: marks the weight itself
            f.add_(1)
    for t in slow + fast:
        assert torch.equal(t, torch.ones_like(t))  # each element in exactly one batch
    # The large contiguous weight is cut into slices of CPU_BATCH_NUMEL; the channels-last one,
    # larger too, is taken whole; the float64 weight has a batch of its own.
    pieces = sorted(s.numel() for slow_batch, _ in batches for s in slow_batch)
    assert pieces == sorted([CPU_BATCH_NUMEL] * 3 + [5, channels_last.numel(), 7, 3])
    assert len(sync_batches(slow, fast, None)) == 2  # one per dtype


# A float32 sum per tensor on the CPU, a multi-tensor L1 norm per dtype on CUDA.
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_first_nonfinite_finds_nan_and_either_infinity_in_any_dtype(device: str) -> None:
    tensors = [
        torch.zeros(0),  # an FSDP1 rank's empty slice
        torch.full((4096,), 60000.0, dtype=torch.float16),
        torch.ones(3, dtype=torch.bfloat16),
        torch.ones(5),
        torch.ones(2, 3),
    ]
    tensors = [t.to(device) for t in tensors]
    # Finite, although the float16 values sum to far more than float16 can hold.
    first = first_nonfinite(tensors, device)
    assert (first.dtype, first.device.type, first.ndim, int(first)) == (torch.int64, device, 0, 5)
    for bad in (float("nan"), float("inf"), float("-inf")):
        tensors[4][1, 2] = bad
        assert int(first_nonfinite(tensors, device)) == 4
    tensors[4][1, 2] = 1.0
    tensors[2][0] = float("nan")
    assert int(first_nonfinite(tensors, device)) == 2
    tensors[3][:2] = torch.tensor([float("inf"), float("-inf")])  # a NaN sum
    tensors[1][7] = float("inf")
    assert int(first_nonfinite(tensors, device)) == 1  # the first in the list, whatever its dtype


@pytest.mark.parametrize(
    ("cpu_batch_numel", "error", "match"),
    [
        (0, ValueError, r"`cpu_batch_numel` must be a positive int \(elements per batch\) or None"),
        (1.5, TypeError, r"`cpu_batch_numel` must be a positive int .* or None, got 1.5"),
    ],
)
def test_bad_batch_size(cpu_batch_numel: object, error: type[Exception], match: str) -> None:
    slow, fast = _weights(torch.float32)
    with pytest.raises(error, match=match):
        lookahead_sync_(slow, fast, ALPHA, cpu_batch_numel)  # type: ignore[arg-type]


def test_slow_and_fast_of_different_lengths_are_refused() -> None:
    with pytest.raises(ValueError, match=r"one tensor each per weight, got 2 and 1"):
        lookahead_sync_([torch.zeros(1), torch.zeros(1)], [torch.zeros(1)], ALPHA)
