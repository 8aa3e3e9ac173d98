"""The variance of Adam's adaptive lr over the draw of the minibatches, bootstrapped from the
gradients a probe kept (:class:`~lightning_ranger.optim.adaptive_lr.ProbeHistory`). Plain PyTorch.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["DrawStatistics", "draw_statistics", "limit_steps", "summarize_draws"]


def limit_steps(beta2: float) -> int:
    """``ceil(10 / (1 - beta2))``: the steps after which ``beta2^t < e^-10``, where ``v_t`` has
    converged to its limit.

    Example::

        >>> limit_steps(0.98), limit_steps(0.999)
        (500, 10000)

    """
    return math.ceil(10.0 / (1.0 - beta2) - 1e-9)


@functools.lru_cache(maxsize=2)  # 2.5 MB each at beta2 = 0.999, 25 MB at 0.9999
def _draws(pool: int, length: int, replicates: int, seed: int) -> Tensor:
    """``[replicates, length]`` draws with replacement from ``range(pool)``, column ``k`` for the
    gradient ``k`` steps back; kept between logging events (2 bytes a draw while ``pool`` fits
    in 15 bits), as drawing them dominated an event."""
    generator = torch.Generator().manual_seed(seed)
    draws = torch.randint(pool, (replicates, length), generator=generator)
    return draws.to(torch.int16 if pool <= torch.iinfo(torch.int16).max else torch.int32)


def _replicate_weights(
    pool: int, length: int, t_limit: int, beta2: float, replicates: int, seed: int
) -> Tensor:
    """``[replicates, pool]``: the weight that each replicate's ``length`` draws (the first
    ``length`` of :func:`_draws` of ``t_limit``) give each recorded gradient, Adam's weight
    ``beta2^k`` of the gradient ``k`` steps back, normalised to sum to 1, added up over the draws
    that picked it."""
    draws = _draws(pool, t_limit, replicates, seed)[:, :length].long()
    weights = torch.pow(torch.tensor(beta2, dtype=torch.float64), torch.arange(length))
    weights = (weights / weights.sum()).expand(replicates, length)
    return torch.zeros(replicates, pool, dtype=torch.float64).scatter_add_(1, draws, weights)


#: The limit's weights, the same at every event while the pool's length is.
_limit_weights = functools.lru_cache(maxsize=8)(_replicate_weights)


@dataclass(frozen=True)
class DrawStatistics:
    """Per probe coordinate, over the bootstrap replicates: ``var`` and ``mean`` of ``l_t``, and
    ``var_limit``, the variance of ``l`` at ``t_limit`` (float64 tensors of one shape)."""

    var: Tensor
    mean: Tensor
    var_limit: Tensor


def draw_statistics(
    pool: Tensor,
    step: int,
    beta2: float,
    eps: float,
    replicates: int = 128,
    seed: int = 0,
) -> DrawStatistics:
    r"""Bootstrap ``Var_draws[l_t]``, ``E_draws[l_t]`` and ``Var_draws[l_limit]`` per coordinate.

    Each of ``replicates`` replicates draws ``t_limit`` gradients with replacement from ``pool``,
    one for each of the last ``t_limit`` steps. Its ``v_t / (1 - beta2^t)`` is Adam's EMA of the
    squares of the draws of the last ``min(t, t_limit)`` steps (the steps before ``t_limit``
    weigh less than ``e^-10`` together and are dropped), and
    ``l_t = 1 / (sqrt(v_t / (1 - beta2^t)) + eps / sqrt(1 - beta2^t))``, which is
    ``sqrt(1 - beta2^t) / (sqrt(v_t) + eps)``; ``l_limit`` is the same over all ``t_limit`` draws.
    The draws depend only on ``seed``, the pool's length and ``replicates``: every coordinate and
    every rank sees the same draws, and so does every logging event while the pool's length is
    the same (the bootstrap's noise moves with the pool, not from event to event), so they are
    drawn once and kept. ``v_t`` of every replicate and coordinate is one float32 matrix product,
    and ``l_t`` and its moments are float32 (relative errors about ``1e-6``, far below the
    bootstrap's), returned as float64. Cost: ``2 * replicates * len(pool) * coordinates``
    multiply-adds, and, while ``t < t_limit``, ``replicates * t`` weights added up.

    Args:
        pool: ``[n, coordinates]`` recorded gradients, ``n >= 1``.
        step: the optimizer step ``t >= 1``.
        beta2: Adam's ``beta2``, in ``[0, 1)``.
        eps: Adam's ``eps``.
        replicates: bootstrap replicates.
        seed: the seed of the draws.

    Example::

        >>> pool = torch.tensor([[1.0], [3.0]])
        >>> stats = draw_statistics(pool, step=1, beta2=0.9, eps=0.0, replicates=4000)
        >>> round(float(stats.mean), 1)  # l_1 = 1 / |g| with g = 1 or 3 at random: mean 2/3
        0.7

    """
    t_limit = limit_steps(beta2)
    squares = pool.float().square()  # float32: the matrix product dominates an event's cost
    bias_correction = -math.expm1(step * math.log(beta2)) if beta2 > 0.0 else 1.0
    limit = _limit_weights(len(pool), t_limit, t_limit, beta2, replicates, seed)
    length = min(int(step), t_limit)
    current = (
        limit
        if length == t_limit
        else _replicate_weights(len(pool), length, t_limit, beta2, replicates, seed)
    )
    # Both estimates in one product, [coordinates, 2, replicates]: each replicate set contiguous.
    weights = torch.cat([current, limit]).to(squares.device, torch.float32)
    v_hat = (squares.T @ weights.T).view(-1, 2, replicates)
    eps_hat = torch.tensor([eps / math.sqrt(bias_correction), eps], device=squares.device)
    lr = (v_hat.sqrt_() + eps_hat.view(2, 1)).reciprocal_()
    # Two passes (torch.var_mean over this layout is ten times slower on the CPU).
    means = lr.mean(dim=2, keepdim=True)
    variances = (lr - means).square_().sum(dim=2) / max(replicates - 1, 1)
    var, var_limit = variances.double().T
    mean = means[:, 0, 0].double()
    return DrawStatistics(var=var, mean=mean, var_limit=var_limit)


def summarize_draws(
    var: Tensor, mean: Tensor, var_limit: Tensor, alive: Tensor
) -> tuple[float, float]:
    """``(median of var / var_limit, median of var / mean^2)`` over the ``alive`` coordinates with
    a positive ``var_limit``; ``(nan, nan)`` when there is none."""
    keep = alive & (var_limit > 0) & torch.isfinite(var) & torch.isfinite(var_limit)
    if not bool(keep.any()):
        return math.nan, math.nan
    ratio = (var[keep] / var_limit[keep]).median()
    relative = (var[keep] / mean[keep].square()).median()
    return float(ratio), float(relative)
