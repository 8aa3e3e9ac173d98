"""The variance of Adam's adaptive lr over the draw of the minibatches, bootstrapped from the
gradients a probe kept (:class:`~lightning_ranger.optim.adaptive_lr.ProbeHistory`). Plain PyTorch.
"""

from __future__ import annotations

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


def _ema_weights(beta2: float, length: int) -> Tensor:
    """Adam's weights of the last ``length`` gradients in ``v_t / (1 - beta2^t)``, oldest first, in
    float64, normalised to sum to 1 (for ``t = length`` that is the bias correction ``1 - beta2^t``;
    for ``t > length`` the older gradients, dropped, weigh ``beta2^length`` together)."""
    exponents = torch.arange(length - 1, -1, -1, dtype=torch.float64)
    weights = torch.pow(torch.tensor(beta2, dtype=torch.float64), exponents)
    return weights / weights.sum()


def _replicate_weights(
    pool: int, length: int, beta2: float, replicates: int, generator: torch.Generator
) -> Tensor:
    """``[replicates, pool]``: each replicate draws ``length`` gradients with replacement from the
    ``pool`` and gives the ``i``-th draw Adam's weight of the ``i``-th of ``length`` steps; the
    weights of a recorded gradient drawn several times add up."""
    draws = torch.randint(pool, (replicates, length), generator=generator)
    weights = _ema_weights(beta2, length).expand(replicates, length)
    out = torch.zeros(replicates, pool, dtype=torch.float64)
    return out.scatter_add_(1, draws, weights)


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

    Each of ``replicates`` replicates draws ``min(t, t_limit)`` gradients with replacement from
    ``pool`` and computes ``v_t / (1 - beta2^t)`` as Adam's EMA of their squares (the draws past
    ``t_limit`` weigh less than ``e^-10`` together and are dropped), then
    ``l_t = 1 / (sqrt(v_t / (1 - beta2^t)) + eps / sqrt(1 - beta2^t))``, which is
    ``sqrt(1 - beta2^t) / (sqrt(v_t) + eps)``. ``l_limit`` is the same with ``t_limit`` draws.
    The draws depend only on ``seed``, ``step``, the pool's length and ``replicates``: on every rank
    every coordinate sees the same draws. ``v_t`` of every replicate and coordinate is one float32
    matrix product (relative error about ``1e-7``, far below the bootstrap's); ``l_t`` and its
    moments are float64. Cost: ``2 * replicates * len(pool) * coordinates`` multiply-adds.

    Args:
        pool: ``[n, coordinates]`` recorded gradients, ``n >= 1``.
        step: the optimizer step ``t >= 1``.
        beta2: Adam's ``beta2``, in ``[0, 1)``.
        eps: Adam's ``eps``.
        replicates: bootstrap replicates.
        seed: mixed with ``step`` into the seed of the draws.

    Example::

        >>> pool = torch.tensor([[1.0], [3.0]])
        >>> stats = draw_statistics(pool, step=1, beta2=0.9, eps=0.0, replicates=4000)
        >>> round(float(stats.mean), 1)  # l_1 = 1 / |g| with g = 1 or 3 at random: mean 2/3
        0.7

    """
    t_limit = limit_steps(beta2)
    generator = torch.Generator().manual_seed(seed * 1_000_003 + int(step))
    squares = pool.float().square()  # float32: the matrix product dominates an event's cost
    bias_correction = -math.expm1(step * math.log(beta2)) if beta2 > 0.0 else 1.0
    results = []
    for length, eps_hat in (
        (min(int(step), t_limit), eps / math.sqrt(bias_correction)),
        (t_limit, eps),
    ):
        weights = _replicate_weights(len(pool), length, beta2, replicates, generator)
        v_hat = (weights.to(squares.device, torch.float32) @ squares).double()
        lr = (v_hat.sqrt() + eps_hat).reciprocal()
        results.append((lr.var(dim=0), lr.mean(dim=0)))
    (var, mean), (var_limit, _) = results
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
