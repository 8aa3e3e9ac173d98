"""Small helpers shared by the optimizer and the callbacks (no Lightning imports)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from numbers import Real
from typing import Any, TypeGuard

from torch import Tensor

__all__ = ["group_indices", "is_real"]


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
