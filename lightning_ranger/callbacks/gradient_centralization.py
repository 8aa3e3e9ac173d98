r"""Gradient Centralization (Yong et al., 2020) as a Lightning callback.

:class:`GradientCentralization` picks the gradients of each optimizer's parameters right before
the optimizer steps and hands them to
:func:`~lightning_ranger.optim.centralization.centralize_gradients`, which this module re-exports
with :data:`~lightning_ranger.optim.centralization.CPU_BLOCK_NUMEL` for code that imports them
from here.
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch import Tensor
from torch.optim import Optimizer
from typing_extensions import override

from lightning_ranger._validation import check_bool, check_int
from lightning_ranger.callbacks._strategies import check_strategy
from lightning_ranger.optim.centralization import CPU_BLOCK_NUMEL, centralize_gradients

__all__ = ["CPU_BLOCK_NUMEL", "GradientCentralization", "centralize_gradients"]


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
        self.min_ndim = check_int(
            "min_ndim", min_ndim, meaning="the rank of the smallest parameters to centralize"
        )
        self.include_linear = check_bool("include_linear", include_linear)
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
                allow_fsdp1=False,
            )

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Optimizer
    ) -> None:
        centralize_gradients(self._gradients_to_centralize(optimizer))

    def _gradients_to_centralize(self, optimizer: Optimizer) -> list[Tensor]:
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
