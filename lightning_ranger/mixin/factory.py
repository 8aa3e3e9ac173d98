"""The optimizer, the learning-rate scheduler and the callbacks that a RangerConfig asks for."""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import Callback
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from lightning_ranger.callbacks.gradient_centralization import GradientCentralization
from lightning_ranger.callbacks.lookahead import Lookahead
from lightning_ranger.callbacks.rectification_monitor import RectificationMonitor
from lightning_ranger.callbacks.slow_weight_swap import SlowWeightSwap
from lightning_ranger.mixin.config import RangerConfig
from lightning_ranger.mixin.param_groups import param_groups
from lightning_ranger.optim.radam import RAdam
from lightning_ranger.optim.schedules import LRSchedule, build_scheduler

__all__ = ["build_callbacks", "build_lr_scheduler", "build_optimizer", "lr_is_constant"]


def build_optimizer(config: RangerConfig, module: nn.Module) -> torch.optim.Optimizer:
    """``config``'s optimizer over ``module``'s parameters, grouped by
    :func:`~lightning_ranger.mixin.param_groups.param_groups`: :class:`~lightning_ranger.RAdam`
    for ``"radam"`` and ``"ranger"`` (Lookahead is a callback), ``torch.optim.Adam`` or
    ``torch.optim.AdamW`` for the baselines.

    Example::

        >>> optimizer = build_optimizer(RangerConfig(optimizer="adamw"), nn.Linear(2, 2))
        >>> type(optimizer).__name__, optimizer.defaults["lr"]
        ('AdamW', 0.001)

    """
    groups = param_groups(
        module,
        weight_decay=config.weight_decay,
        no_decay_norm_and_bias=config.no_decay_norm_and_bias,
    )
    common: dict[str, Any] = {
        "lr": config.lr,
        "betas": config.betas,
        "eps": config.eps,
        "weight_decay": config.weight_decay,
    }
    if config.optimizer == "adam":
        return torch.optim.Adam(groups, **common)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, **common)
    return RAdam(
        groups,
        **common,
        decoupled_weight_decay=config.decoupled_weight_decay,
        rectify_threshold=config.rectify_threshold,
    )


def lr_is_constant(config: RangerConfig) -> bool:
    """Whether ``config`` keeps the learning rate at ``lr`` throughout: no scheduler is needed."""
    return config.schedule == "constant" and config.warmup_steps == 0


def build_lr_scheduler(
    config: RangerConfig, optimizer: torch.optim.Optimizer, total_steps: float
) -> LambdaLR:
    """The per-step ``LambdaLR`` of ``config``'s schedule over ``total_steps`` optimizer steps.

    Raises:
        ValueError: if a cosine schedule has no finite ``total_steps``, or ``warmup_steps``
            exceeds it.

    """
    schedule = LRSchedule(
        config.schedule,
        warmup_steps=config.warmup_steps,
        total_steps=total_steps,
        flat_fraction=config.flat_fraction,
    )
    return build_scheduler(optimizer, schedule)


def build_callbacks(config: RangerConfig) -> list[Callback]:
    """``Lookahead(k, alpha)`` and, with ``slow_weight_eval``, ``SlowWeightSwap()`` for
    ``"ranger"``; ``RectificationMonitor()`` with ``monitor``; ``GradientCentralization()`` with
    ``gradient_centralization``.

    Example::

        >>> [type(c).__name__ for c in build_callbacks(RangerConfig(monitor=False))]
        ['Lookahead', 'SlowWeightSwap']

    """
    callbacks: list[Callback] = []
    if config.optimizer == "ranger":
        callbacks.append(Lookahead(k=config.k, alpha=config.alpha))
        if config.slow_weight_eval:
            callbacks.append(SlowWeightSwap())
    if config.monitor:
        callbacks.append(RectificationMonitor())
    if config.gradient_centralization:
        callbacks.append(GradientCentralization())
    return callbacks
