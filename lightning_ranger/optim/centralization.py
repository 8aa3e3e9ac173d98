r"""Gradient Centralization (Yong et al., 2020) over a list of gradients, in plain PyTorch.

:func:`centralize_gradients` subtracts, in place, from every gradient its mean over all dimensions
but the first (cache-blocked on the CPU); ``DTensor`` gradients are centralized on their local
shards where that is exact. The
:class:`~lightning_ranger.callbacks.gradient_centralization.GradientCentralization` callback
chooses the gradients and calls it before each optimizer step; nothing here imports Lightning.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor
from torch.distributed.tensor import DTensor, Placement, Replicate

from lightning_ranger._utils import LOW_PRECISION_DTYPES
from lightning_ranger._validation import check_int

__all__ = ["CPU_BLOCK_NUMEL", "centralize_gradients"]

#: Elements per block of :func:`centralize_gradients` on the CPU: 2 MiB of
#: float32, which stays in the last-level cache between a block's row sums and its subtraction (the
#: fastest of the sizes that ``benchmarks/gradient_centralization.py`` compares, on a 2-core
#: machine).
CPU_BLOCK_NUMEL = 1 << 19


def _local_is_exact(grad: DTensor) -> bool:
    """Whether centralizing ``grad``'s local tensor gives the local part of the centralized global
    gradient: every rank holds whole rows (``Shard(0)`` of a tensor of rank >= 2, or
    ``Replicate``), or the local tensors add up (or average) to the global one, and the formula is
    linear."""
    return all(_local_is_exact_for(p, grad.ndim) for p in grad.placements)


def _local_is_exact_for(placement: Placement, ndim: int) -> bool:
    if placement.is_replicate():
        return True
    if placement.is_partial():
        return getattr(placement, "reduce_op", None) in ("sum", "avg")
    return ndim >= 2 and placement.is_shard(dim=0)


def _rows(grad: Tensor) -> Tensor | None:
    """``grad`` (not empty, rank >= 1) as a ``(rows, columns)`` view sharing its storage, one row
    per slice along dim 0 (one row in all for a 1-D tensor), or ``None`` if no such view exists
    (dim 0 is not the outermost dimension in memory, or the memory is not dense)."""
    n_rows = grad.shape[0] if grad.ndim > 1 else 1
    if grad.is_contiguous():
        return grad.view(n_rows, -1)
    if grad.ndim == 1:
        return None
    # Channels-last and other permuted layouts: order the other dims outermost first.
    order = [0, *sorted(range(1, grad.ndim), key=grad.stride, reverse=True)]
    permuted = grad.permute(order)
    return permuted.view(n_rows, -1) if permuted.is_contiguous() else None


def _centralize_whole(grad: Tensor) -> None:
    """Centralize one tensor of any layout or placement with whole-tensor operations (on a
    ``DTensor`` they run the collectives that a sharded sum needs)."""
    dims = tuple(range(1, grad.ndim)) if grad.ndim > 1 else (0,)
    count = math.prod(grad.shape[d] for d in dims)
    total = grad.sum(dim=dims, keepdim=True, dtype=torch.promote_types(grad.dtype, torch.float32))
    if isinstance(total, DTensor):  # all-reduce the partial sums, then subtract locally
        total = total.redistribute(placements=[Replicate()] * total.device_mesh.ndim)
    grad.sub_(total, alpha=1.0 / count)


@torch.no_grad()
def centralize_gradients(
    grads: Iterable[Tensor],
    cpu_block_numel: int | None = CPU_BLOCK_NUMEL,
) -> None:
    r"""Gradient Centralization in place: ``g <- g - mean(g over all dims but 0)`` for each ``g``.

    Each slice ``g[i]`` (an output channel of a conv or linear weight) ends with zero mean. A 1-D
    tensor counts as a single channel: its overall mean is subtracted (the per-channel mean of a
    1-D tensor would be the tensor itself).

    Each gradient is viewed as a ``(channels, elements)`` matrix and centralized in blocks of
    whole rows: a row sum (accumulated in at least float32) and one ``sub_`` that divides it by the
    row length. On the CPU a block holds about ``cpu_block_numel`` elements (2 MiB of float32), so
    that the subtraction reads the block from cache, where the sum left it, rather than from
    memory; on other devices a block is the whole tensor. (Multi-tensor
    ``torch._foreach_*`` passes were measured slower on the CPU: they run all the sums before any
    subtraction, so every gradient is read from memory twice; see
    ``benchmarks/gradient_centralization.py``.)

    ``DTensor`` gradients are centralized on their local tensors when that is exact: ``Shard(0)``
    (FSDP2 shards whole output channels), ``Replicate``, or ``Partial`` sums and averages (the
    formula is linear). Other placements (``Shard(d)`` with ``d > 0``, such as tensor
    parallelism's row-wise sharding, or ``Shard(0)`` of a 1-D tensor) use DTensor operations,
    whose collectives every rank must join. Tensors whose dim 0 is not outermost in memory (a
    transposed view) are centralized whole; empty tensors are skipped.

    Args:
        grads: the gradients, dense tensors or ``DTensor``\ s of rank >= 1.
        cpu_block_numel: elements per block on the CPU; ``None``: whole tensors there too.

    Raises:
        TypeError: if ``cpu_block_numel`` is not an int or ``None``.
        ValueError: if ``cpu_block_numel < 1``, or a gradient is a 0-dim tensor.

    Example::

        >>> grad = torch.tensor([[1.0, 2.0, 3.0, 6.0], [0.0, 0.0, 0.0, 4.0]])
        >>> centralize_gradients([grad])
        >>> grad
        tensor([[-2., -1.,  0.,  3.],
                [-1., -1., -1.,  3.]])

    """
    cpu_block_numel = check_int(
        "cpu_block_numel", cpu_block_numel, meaning="elements per block", optional=True
    )
    for grad in grads:
        if grad.ndim == 0:
            raise ValueError("Gradient Centralization needs tensors of rank >= 1, got a scalar")
        if isinstance(grad, DTensor):
            if not _local_is_exact(grad):
                _centralize_whole(grad)
                continue
            grad = grad.to_local()
        if grad.numel() == 0:
            continue
        rows = _rows(grad)
        if rows is None:
            _centralize_whole(grad)
            continue
        n_rows, n_cols = rows.shape
        # A 16-bit sum of many elements loses the mean's low bits; float32 keeps them.
        sum_dtype = torch.float32 if grad.dtype in LOW_PRECISION_DTYPES else None
        rows_per_block = n_rows
        if grad.is_cpu and cpu_block_numel is not None:
            rows_per_block = max(1, cpu_block_numel // n_cols)
        for start in range(0, n_rows, rows_per_block):
            block = rows if rows_per_block >= n_rows else rows[start : start + rows_per_block]
            block.sub_(block.sum(dim=1, keepdim=True, dtype=sum_dtype), alpha=1.0 / n_cols)
