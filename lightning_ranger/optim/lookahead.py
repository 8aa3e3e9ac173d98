r"""Lookahead's slow-weight arithmetic over lists of tensors, in plain PyTorch.

`Lookahead <https://arxiv.org/abs/1907.08610>`_ (Zhang et al., 2019) keeps slow weights ``phi``
beside the fast weights ``theta`` that an inner optimizer moves, and every ``k`` steps syncs them:

.. code-block:: text

    phi   <- phi + alpha (theta - phi)
    theta <- phi

:func:`lookahead_sync_` is that sync over matching lists of tensors, and :func:`first_nonfinite`
the check for NaN and infinity that precedes it. Slow weights of 16-bit fast weights are float32
(:func:`slow_dtype`). ``DTensor``\ s are synced and checked on their local shards, which is exact
for these elementwise operations when slow and fast weights share their placements. The
bookkeeping around them (which parameters, checkpoints, distributed collectives) is the
:class:`~lightning_ranger.callbacks.lookahead.Lookahead` callback's; nothing here imports
Lightning.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import Tensor
from torch.distributed.tensor import DTensor

from lightning_ranger._utils import group_indices
from lightning_ranger._validation import check_int

__all__ = [
    "CPU_BATCH_NUMEL",
    "SyncBatch",
    "first_nonfinite",
    "local_tensor",
    "lookahead_sync_",
    "slow_dtype",
    "sync_batch_",
    "sync_batches",
]

#: Elements per ``lerp_``/``copy_`` batch of a sync on the CPU: 512 KiB of float32 per operand,
#: so that both operands stay in a core's L2 cache between the two operations.
CPU_BATCH_NUMEL = 1 << 17

#: A batch of a sync: slices of slow weights and the matching slices of fast weights, all on one
#: device, the slow ones of one dtype and the fast ones of one dtype.
SyncBatch = tuple[list[Tensor], list[Tensor]]


def slow_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of the slow weights of fast weights of ``dtype``: at least float32, since
    interpolating small updates in 16 bits rounds them away.

    Example::

        >>> slow_dtype(torch.bfloat16), slow_dtype(torch.float64)
        (torch.float32, torch.float64)

    """
    return torch.float32 if torch.finfo(dtype).bits < 32 else dtype


def local_tensor(t: Tensor) -> Tensor:
    """``t``'s local shard if it is a ``DTensor``, else ``t`` itself."""
    return t.to_local() if isinstance(t, DTensor) else t


def sync_batches(
    slow: Sequence[Tensor],
    fast: Sequence[Tensor],
    cpu_batch_numel: int | None = CPU_BATCH_NUMEL,
) -> list[SyncBatch]:
    """``slow`` and ``fast`` (local shards of ``DTensor``\\ s) cut into the batches that
    :func:`sync_batch_` takes: grouped by device and dtypes, and on the CPU into batches of about
    ``cpu_batch_numel`` elements (larger contiguous tensors split into flat slices, which share the
    tensors' storage). A caller that syncs the same tensors repeatedly can cut them once.

    Args:
        slow: the slow weights, each of the shape of its fast weight and of a dtype at least as
            wide.
        fast: the fast weights.
        cpu_batch_numel: elements per batch on the CPU; ``None``: one batch per group there too.

    Raises:
        TypeError: if ``cpu_batch_numel`` is not an int or ``None``.
        ValueError: if ``cpu_batch_numel < 1``, or ``slow`` and ``fast`` differ in length.

    """
    cpu_batch_numel = check_int(
        "cpu_batch_numel", cpu_batch_numel, meaning="elements per batch", optional=True
    )
    slow_local = [local_tensor(t) for t in slow]
    fast_local = [local_tensor(t) for t in fast]
    if len(slow_local) != len(fast_local):
        raise ValueError(
            f"`slow` and `fast` must have one tensor each per weight, got {len(slow_local)} "
            f"and {len(fast_local)}"
        )
    batches: list[SyncBatch] = []
    groups = group_indices(slow_local, key=[f.dtype for f in fast_local])
    for (device, _, _), indices in groups.items():
        batch_numel = cpu_batch_numel if device.type == "cpu" else None
        slow_group = [slow_local[i] for i in indices]
        fast_group = [fast_local[i] for i in indices]
        batches.extend(_cut_into_batches(slow_group, fast_group, batch_numel))
    return batches


def _cut_into_batches(
    slow: list[Tensor], fast: list[Tensor], batch_numel: int | None
) -> Iterator[SyncBatch]:
    if batch_numel is None:
        yield slow, fast
        return
    batch_slow: list[Tensor] = []
    batch_fast: list[Tensor] = []
    numel = 0
    for s, f in zip(slow, fast, strict=True):
        if s.numel() > batch_numel and s.is_contiguous() and f.is_contiguous():
            pieces = zip(s.view(-1).split(batch_numel), f.view(-1).split(batch_numel), strict=True)
        else:
            pieces = zip([s], [f], strict=True)
        for piece_slow, piece_fast in pieces:
            batch_slow.append(piece_slow)
            batch_fast.append(piece_fast)
            numel += piece_slow.numel()
            if numel >= batch_numel:
                yield batch_slow, batch_fast
                batch_slow, batch_fast, numel = [], [], 0
    if batch_slow:
        yield batch_slow, batch_fast


@torch.no_grad()
def sync_batch_(slow: list[Tensor], fast: list[Tensor], alpha: float) -> None:
    """:func:`lookahead_sync_` on one batch of :func:`sync_batches`: a multi-tensor ``lerp_`` of
    the slow weights towards the fast ones, then a multi-tensor ``copy_`` back."""
    if not slow:
        return
    # `lerp_` takes one dtype; the float32 copies of 16-bit fast weights are exact.
    target = fast if fast[0].dtype == slow[0].dtype else [t.to(slow[0].dtype) for t in fast]
    torch._foreach_lerp_(slow, target, alpha)
    torch._foreach_copy_(fast, slow)


def lookahead_sync_(
    slow: Sequence[Tensor],
    fast: Sequence[Tensor],
    alpha: float,
    cpu_batch_numel: int | None = CPU_BATCH_NUMEL,
) -> None:
    r"""Lookahead's sync, in place: ``slow <- slow + alpha (fast - slow)``, then ``fast <- slow``.

    A multi-tensor ``lerp_`` and ``copy_`` per (device, dtype) group. On the CPU they alternate
    over batches of about ``cpu_batch_numel`` elements, so that ``copy_`` finds both operands
    still in cache: 4 memory transfers per element (read both, write both) instead of 6 (``lerp_``
    reads 2 and writes 1; ``copy_`` reads 1 and, write-allocating, reads and writes 1). Fast
    weights narrower than their slow weights (float16 or bfloat16 beside float32) get the slow
    weights rounded to their dtype. ``DTensor``\ s are synced on their local shards.

    Args:
        slow: the slow weights, each of the shape of its fast weight and of a dtype at least as
            wide (:func:`slow_dtype`).
        fast: the fast weights.
        alpha: the slow weights' step size towards the fast ones, usually in ``(0, 1]``.
        cpu_batch_numel: elements per batch on the CPU; ``None``: whole groups there too.

    Raises:
        TypeError: if ``cpu_batch_numel`` is not an int or ``None``.
        ValueError: if ``cpu_batch_numel < 1``, or ``slow`` and ``fast`` differ in length.

    Example::

        >>> slow = [torch.zeros(3)]
        >>> fast = [torch.tensor([1.0, 2.0, 4.0], dtype=torch.bfloat16)]
        >>> lookahead_sync_(slow, fast, alpha=0.5)
        >>> slow[0], fast[0]
        (tensor([0.5000, 1.0000, 2.0000]), tensor([0.5000, 1.0000, 2.0000], dtype=torch.bfloat16))

    """
    for slow_batch, fast_batch in sync_batches(slow, fast, cpu_batch_numel):
        sync_batch_(slow_batch, fast_batch, alpha)


@torch.no_grad()
def first_nonfinite(tensors: Sequence[Tensor], device: torch.device | str = "cpu") -> Tensor:
    """The index of the first of ``tensors`` (local shards of ``DTensor``\\ s) that holds a NaN or
    an infinity, ``len(tensors)`` if none does: an int64 scalar on ``device``, ready for a
    ``MIN`` all-reduce across ranks.

    One read of each tensor, without a copy: a float32 sum per tensor on the CPU (where it runs
    near the memory bandwidth), a multi-tensor L1 norm per device and dtype elsewhere. Either is
    non-finite exactly when a value is, or when it exceeds float32's range (about 3.4e38).

    Example::

        >>> first_nonfinite([torch.ones(2), torch.tensor([1.0, float("nan")]), torch.ones(1)])
        tensor(1)

    """
    local = [local_tensor(t) for t in tensors]
    first = torch.full((), len(local), dtype=torch.int64, device=device)
    for (group_device, _, _), indices in group_indices(local).items():
        indices = [i for i in indices if local[i].numel()]
        if not indices:
            continue
        if group_device.type == "cpu":
            sums = [local[i].sum(dtype=torch.float32) for i in indices]
        else:
            sums = list(torch._foreach_norm([local[i] for i in indices], 1, dtype=torch.float32))
        index = torch.tensor(indices, device=group_device)
        index = index.masked_fill(torch.stack(sums).isfinite(), len(local))
        first = torch.minimum(first, index.min().to(device))
    return first
