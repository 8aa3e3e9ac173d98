"""How far RAdam moves each parameter at its step count: rectified (adaptive) or not (momentum),
and the step size, with ``r_t`` and both bias corrections folded in.

In eager mode the step sizes are Python numbers, read from blocks of 64 consecutive steps that
one vectorized computation fills; while compiling they are tensors computed from the step counts
inside the graph, so that one graph serves every step.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import Tensor

from lightning_ranger._utils import group_indices
from lightning_ranger.optim._radam_options import StepOptions
from lightning_ranger.optim.rectification import rectification_tensor

__all__ = ["StepSize", "increment_steps"]


@dataclass(frozen=True)
class StepSize:
    """How one parameter moves at this step: ``p -= adaptive_scale * m / (sqrt(v) + eps)`` where
    ``rectified``, else ``p -= momentum_scale * m`` (``momentum_scale == 0``: no move).

    Python numbers in eager mode; 0-dim tensors computed from the step counts while compiling, so
    that a compiled step takes them from its graph instead of baking them in.
    """

    rectified: bool | Tensor
    adaptive_scale: float | Tensor
    momentum_scale: float | Tensor


def _step_factors(
    step: Tensor, beta1: float, beta2: float, rectify_threshold: float, degenerate_to_sgd: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """``(rectified, adaptive, momentum)`` for a float64 tensor of step counts, element-wise: the
    step sizes are ``lr * adaptive`` where ``rectified`` and ``lr * momentum`` elsewhere."""
    inverse_bias_correction1 = 1.0 / (1.0 - torch.pow(beta1, step))
    rho_t, r_t = rectification_tensor(step, beta2)
    rectified = rho_t > rectify_threshold
    zero = torch.zeros_like(step)
    sqrt_bias_correction2 = (1.0 - torch.pow(beta2, step)).sqrt()
    adaptive = torch.where(rectified, inverse_bias_correction1 * r_t * sqrt_bias_correction2, zero)
    momentum = torch.where(rectified, zero, inverse_bias_correction1) if degenerate_to_sgd else zero
    return rectified, adaptive, momentum


#: Eager steps read the factors of 64 consecutive steps computed at once (see ``_factor_block``).
_BLOCK = 64


@functools.lru_cache(maxsize=64)
def _factor_block(
    block: int, beta1: float, beta2: float, rectify_threshold: float, degenerate_to_sgd: bool
) -> list[tuple[bool, float, float]]:
    """:func:`_step_factors` of steps ``64 * block + 1`` to ``64 * (block + 1)``, as Python values:
    one vectorized computation serves 64 eager steps."""
    steps = torch.arange(block * _BLOCK + 1, (block + 1) * _BLOCK + 1, dtype=torch.float64)
    factors = _step_factors(steps, beta1, beta2, rectify_threshold, degenerate_to_sgd)
    return list(zip(*(f.tolist() for f in factors), strict=True))


def _eager_factors(
    step: float, shape: tuple[float, float, float, bool]
) -> tuple[bool, float, float]:
    """:func:`_step_factors` of one step count, as Python values."""
    if step.is_integer() and step >= 1:
        block, k = divmod(int(step) - 1, _BLOCK)
        return _factor_block(block, *shape)[k]
    # A fractional count only comes from a hand-edited state dict: not worth a cached block.
    rectified, adaptive, momentum = _step_factors(torch.tensor(step, dtype=torch.float64), *shape)
    return bool(rectified), adaptive.item(), momentum.item()


def increment_steps(state_steps: list[Tensor], options: StepOptions) -> list[StepSize]:
    """Add one to every parameter's step count and return how each parameter moves at its new
    count."""
    lr = options.lr_value()
    if torch.compiler.is_compiling():
        # Step counts stay tensors (graph inputs): one graph serves every step.
        torch._foreach_add_(state_steps, 1)
        by_index: dict[int, StepSize] = {}
        for indices in group_indices(state_steps).values():
            stacked = torch.stack([state_steps[i] for i in indices]).to(torch.float64)
            rectified, adaptive, momentum = _step_factors(stacked, *options.step_size_shape)
            for k, i in enumerate(indices):
                by_index[i] = StepSize(rectified[k], lr * adaptive[k], lr * momentum[k])
        return [by_index[i] for i in range(len(state_steps))]
    torch._foreach_add_(state_steps, 1.0)
    steps = [s.item() for s in state_steps]
    lr = float(lr)
    # Parameters almost always share one step count: compute each distinct step size once.
    size_at = {}
    for step in set(steps):
        is_rectified, adaptive_factor, momentum_factor = _eager_factors(
            step, options.step_size_shape
        )
        size_at[step] = StepSize(is_rectified, lr * adaptive_factor, lr * momentum_factor)
    return [size_at[step] for step in steps]
