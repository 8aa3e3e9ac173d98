"""RAdam's options: the checks where they enter (the constructor and every param group) and the
frozen record that one functional step reads."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.optim.optimizer import _default_to_fused_or_foreach

from lightning_ranger._utils import as_real
from lightning_ranger._validation import check_bool, check_real
from lightning_ranger.optim.rectification import MIN_RECTIFY_THRESHOLD

__all__ = ["StepOptions", "check_options", "check_param_group"]


def _check_lr(lr: object) -> None:
    # torch.optim takes a 1-element tensor lr (a graph input under torch.compile) as well.
    if isinstance(lr, Tensor):
        if lr.numel() != 1:
            raise ValueError(f"`lr` as a Tensor must have exactly 1 element, got shape {lr.shape}")
        lr = lr.item()
    check_real("lr", lr, 0.0, meaning="or a 1-element Tensor")


def check_options(options: Mapping[str, Any]) -> None:
    """Check every option of :class:`~lightning_ranger.optim.radam.RAdam`, given by name (a param
    group, or the constructor's defaults).

    Raises:
        TypeError: if an option has the wrong type, naming it and what it accepts.
        ValueError: if an option is outside its accepted range, naming it and the range, or if
            ``fused`` and ``foreach`` are both ``True``.

    """
    _check_lr(options["lr"])
    betas = options["betas"]
    if not isinstance(betas, Sequence) or len(betas) != 2:
        raise TypeError(f"`betas` must be a pair of floats in [0, 1), got {betas!r}")
    for i, beta in enumerate(betas):
        check_real(f"betas[{i}]", beta, 0.0, 1.0, high_open=True)
    check_real("eps", options["eps"], 0.0)
    check_real("weight_decay", options["weight_decay"], 0.0)
    check_real(
        "rectify_threshold",
        options["rectify_threshold"],
        MIN_RECTIFY_THRESHOLD,
        meaning=f"r_t is undefined below {MIN_RECTIFY_THRESHOLD:g}",
    )
    for flag in ("decoupled_weight_decay", "degenerate_to_sgd", "maximize"):
        check_bool(flag, options[flag])
    foreach = check_bool("foreach", options["foreach"], optional=True)
    if check_bool("fused", options["fused"], optional=True) and foreach:
        raise ValueError("`fused=True` and `foreach=True` cannot be set together; choose one")


def check_param_group(group: dict[str, Any]) -> None:
    """Check one param group's options, and that ``fused=True`` can be honoured for its
    parameters.

    Raises:
        TypeError: if an option has the wrong type.
        ValueError: if an option is outside its range, or the fused kernels do not take one of the
            parameters (its dtype, tensor type or device).

    """
    check_options(group)
    if not group["fused"]:
        return
    for p in group["params"]:
        if not (p.is_floating_point() or p.is_complex()):
            raise ValueError(f"`fused=True` needs floating point parameters, got {p.dtype}")
        if p.is_meta:  # deferred initialisation: checked again when the optimizer steps
            continue
        if not _default_to_fused_or_foreach([as_real(p)], False, use_fused=True)[0]:
            raise ValueError(
                f"`fused=True` is not supported for a {type(p).__name__} on device "
                f"{p.device.type!r}; pass `fused=None` to choose an implementation by device"
            )


@dataclass(frozen=True)
class StepOptions:
    """A param group's options, as one step of :func:`~lightning_ranger.optim.radam.radam`
    reads them."""

    lr: float | Tensor
    beta1: float
    beta2: float
    eps: float
    weight_decay: float
    decoupled_weight_decay: bool
    rectify_threshold: float
    degenerate_to_sgd: bool
    maximize: bool

    @property
    def step_size_shape(self) -> tuple[float, float, float, bool]:
        """What the step size depends on besides ``lr`` and the step count."""
        return (self.beta1, self.beta2, self.rectify_threshold, self.degenerate_to_sgd)

    @property
    def l2_weight_decay(self) -> float:
        """The weight decay added to the gradient: none when it is decoupled."""
        return 0.0 if self.decoupled_weight_decay else self.weight_decay

    def lr_value(self) -> float | Tensor:
        """``lr`` as a Python number, except that a tensor ``lr`` stays a tensor while compiling,
        so that the graph reads it instead of baking in its value."""
        if isinstance(self.lr, Tensor) and not torch.compiler.is_compiling():
            return self.lr.item()
        return self.lr

    def decoupled_decay(self) -> float | Tensor:
        """The fraction ``lr * weight_decay`` by which decoupled weight decay shrinks the
        parameters before the step; 0 for L2 weight decay."""
        return self.lr_value() * self.weight_decay if self.decoupled_weight_decay else 0.0
