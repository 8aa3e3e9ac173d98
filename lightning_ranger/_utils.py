"""Small helpers shared by the optimizer and the callbacks (no Lightning imports)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from numbers import Real
from typing import Any, TypeGuard

import torch
from torch import Tensor

__all__ = ["LOW_PRECISION_DTYPES", "as_real", "group_indices", "is_real"]

#: Dtypes whose arithmetic is done in float32 and rounded once, as torch's fused kernels do
#: (``eps=1e-8`` alone underflows to 0 in float16).
LOW_PRECISION_DTYPES = (torch.float16, torch.bfloat16)


def is_real(value: object) -> TypeGuard[float]:
    """Whether ``value`` is a real number (``int``, ``float``, NumPy floats), not a ``bool``."""
    return isinstance(value, Real) and not isinstance(value, bool)


def group_indices(
    tensors: Sequence[Tensor], key: Sequence[Any] | None = None
) -> dict[Any, list[int]]:
    """Indices of ``tensors`` grouped by ``(device, dtype, key[i])`` (``key[i]`` is ``None``
    without ``key``), in first-seen order: the grouping of multi-tensor (foreach) operations."""
    groups: dict[Any, list[int]] = defaultdict(list)
    for i, t in enumerate(tensors):
        groups[(t.device, t.dtype, None if key is None else key[i])].append(i)
    return groups


def as_real(t: Tensor) -> Tensor:
    """``t`` itself, or a complex ``t`` viewed as pairs of reals (``torch.view_as_real``), which
    element-wise optimizer arithmetic treats as independent numbers."""
    return torch.view_as_real(t) if t.is_complex() else t
