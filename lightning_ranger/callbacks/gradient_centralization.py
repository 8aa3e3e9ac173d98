r"""Gradient Centralization (Yong et al., 2020) as a Lightning callback, and its functional core.

:func:`centralize_gradients` subtracts, in place, from every gradient its mean over all dimensions
but the first, in plain PyTorch (cache-blocked on the CPU). :class:`GradientCentralization` calls
it on the gradients of each optimizer's parameters right before the optimizer steps.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch import Tensor
from torch.distributed.tensor import DTensor, Placement, Replicate
from torch.optim import Optimizer
from typing_extensions import override

from lightning_ranger.callbacks._strategies import check_strategy

__all__ = ["CPU_BLOCK_NUMEL", "GradientCentralization", "centralize_gradients"]

#: Elements per block of :func:`centralize_gradients` on the CPU: 2 MiB of
#: float32, which stays in the last-level cache between a block's row sums and its subtraction (the
#: fastest of the sizes that ``benchmarks/gradient_centralization.py`` compares, on a 2-core
#: machine).
CPU_BLOCK_NUMEL = 1 << 19

#: Gradients whose row sums are accumulated and subtracted in float32.
_LOW_PRECISION = (torch.float16, torch.bfloat16)


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


def _centralize_one(grad: Tensor) -> None:
    """Centralize one tensor of any layout or placement (DTensor operations run the collectives
    that a sharded sum needs)."""
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
        ValueError: if a gradient is a 0-dim tensor.

    """
    for grad in grads:
        if grad.ndim == 0:
            raise ValueError("Gradient Centralization needs tensors of rank >= 1, got a scalar")
        if isinstance(grad, DTensor):
            if not _local_is_exact(grad):
                _centralize_one(grad)
                continue
            grad = grad.to_local()
        if grad.numel() == 0:
            continue
        rows = _rows(grad)
        if rows is None:
            _centralize_one(grad)
            continue
        n_rows, n_cols = rows.shape
        dtype = torch.float32 if grad.dtype in _LOW_PRECISION else None
        step = n_rows
        if grad.is_cpu and cpu_block_numel is not None:
            step = max(1, cpu_block_numel // n_cols)
        for start in range(0, n_rows, step):
            block = rows if step >= n_rows else rows[start : start + step]
            block.sub_(block.sum(dim=1, keepdim=True, dtype=dtype), alpha=1.0 / n_cols)


class GradientCentralization(Callback):
    r"""Gradient Centralization: give every output channel's gradient zero mean before each step.

    `Gradient Centralization: A New Optimization Technique for Deep Neural Networks
    <https://arxiv.org/abs/2004.01461>`_ (Yong et al., 2020) subtracts from the gradient of every
    weight of rank >= 2 (conv and linear weights) its mean over all dimensions but the first:

    .. code-block:: text

        g[i, ...] <- g[i, ...] - mean(g[i, ...])      for each output channel i

    The paper reports faster training and better generalization; the 2020 release of the Ranger
    optimizer applies it by default. It constrains each weight's update to a hyperplane, so it
    changes the trajectory of any optimizer (RAdam as the paper defines it does not do it). Use it
    to reproduce Ranger 2020, or with any optimizer, as the paper does with SGD and Adam.

    - *When*: in ``on_before_optimizer_step``, once per optimizer step: after the backward passes
      of all accumulated batches (the result does not depend on ``accumulate_grad_batches``), after
      ``precision="16-mixed"``'s ``GradScaler`` unscaled the gradients and recorded whether they
      are finite (a step that it skips stays skipped), and before gradient clipping. Optimizers
      that unscale inside their ``step`` (``fused=True`` torch optimizers under ``16-mixed``) are
      handed scaled gradients, which the linear formula centralizes just as well.
    - *What*: the gradients of the parameters of the optimizer that steps, those with
      ``requires_grad``, a gradient, and ``ndim >= min_ndim`` (``ndim >= 3``, conv weights only,
      with ``include_linear=False``). With the default ``min_ndim=2`` biases and normalization
      weights are left alone; every 2-D parameter counts as linear (embedding tables too).
      ``min_ndim=1`` also centralizes 1-D gradients, each as a single channel (its overall mean is
      subtracted). Sparse gradients are left alone, with a warning.
    - *Cost*: one pass over each gradient (see :func:`centralize_gradients`), no memory beyond
      one sum per channel. On ResNet-18 (batches of 32 CIFAR-sized images, 2 CPU cores) the pass
      took about 2% of a training step (``benchmarks/gradient_centralization.py``).
    - *Strategies*: a single device and DDP (the gradients are already averaged, so ranks stay
      identical); FSDP2 (``ModelParallelStrategy`` with ``fully_shard``), whose ``Shard(0)``
      gradients hold whole output channels on each rank, so each rank centralizes its shard alone
      (other ``DTensor`` placements go through DTensor collectives). ``FSDPStrategy`` (FSDP1) and
      ``DeepSpeedStrategy`` are refused at setup: their flattened parameters lose the channels.

    Args:
        min_ndim: centralize the gradients of parameters with at least this many dimensions, an
            int ``>= 1``. Default: ``2``.
        include_linear: if ``False``, only parameters with ``ndim >= 3`` (conv weights), whatever
            ``min_ndim`` says. Default: ``True``.

    Raises:
        TypeError: if ``min_ndim`` is not an int or ``include_linear`` not a bool.
        ValueError: if ``min_ndim < 1``; at setup for fitting, if the trainer uses FSDP1
            (``FSDPStrategy``) or DeepSpeed.

    Example::

        from lightning.pytorch import Trainer
        from lightning.pytorch.demos.boring_classes import BoringModel
        from lightning_ranger.callbacks.gradient_centralization import GradientCentralization

        trainer = Trainer(max_steps=4, callbacks=[GradientCentralization()], logger=False)
        trainer.fit(BoringModel())

    """

    def __init__(self, min_ndim: int = 2, include_linear: bool = True) -> None:
        if isinstance(min_ndim, bool) or not isinstance(min_ndim, int):
            raise TypeError(f"`min_ndim` must be an int >= 1, got {min_ndim!r}")
        if min_ndim < 1:
            raise ValueError(
                f"`min_ndim` must be >= 1 (the rank of the smallest parameters to centralize), "
                f"got {min_ndim}"
            )
        if not isinstance(include_linear, bool):
            raise TypeError(f"`include_linear` must be a bool, got {include_linear!r}")
        self.min_ndim = min_ndim
        self.include_linear = include_linear
        self._warned_sparse = False

    @property
    def ndim_threshold(self) -> int:
        """The smallest rank of the parameters whose gradients are centralized."""
        return self.min_ndim if self.include_linear else max(self.min_ndim, 3)

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == TrainerFn.FITTING:
            check_strategy(
                trainer.strategy,
                "GradientCentralization",
                "its flat parameters do not keep the output channels apart",
                fsdp1=False,
            )

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Optimizer
    ) -> None:
        centralize_gradients(self._gradients(optimizer))

    def _gradients(self, optimizer: Optimizer) -> list[Tensor]:
        threshold = self.ndim_threshold
        grads = []
        for group in optimizer.param_groups:
            for p in group["params"]:
                if not p.requires_grad or p.grad is None or p.ndim < threshold:
                    continue
                if p.grad.layout != torch.strided:
                    if not self._warned_sparse:
                        rank_zero_warn(
                            "`GradientCentralization` leaves sparse gradients alone (from "
                            "`nn.Embedding(sparse=True)` or similar)."
                        )
                        self._warned_sparse = True
                    continue
                grads.append(p.grad)
        return grads
