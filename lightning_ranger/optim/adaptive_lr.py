r"""Statistics of Adam's adaptive learning rate ``l_t = sqrt(1 - beta2^t) / (sqrt(v_t) + eps)``.

Two kinds, both plain PyTorch (nothing here imports Lightning):

- **Over the draw of the minibatches** (the variance that RAdam rectifies, Liu et al. 2020): for a
  small fixed *probe* of coordinates, the gradients of the last optimizer steps are kept
  (:class:`ProbeHistory`) and ``v_t`` is bootstrapped from them under the EMA weights of Adam
  (:func:`draw_statistics`): each replicate draws ``t`` gradients with replacement from the
  recorded ones and weighs them as Adam weighs ``g_1 .. g_t``. The variance of ``l_t`` over the
  replicates estimates ``Var_draws[l_t]``; the same with ``t_limit = ceil(10 / (1 - beta2))``
  draws (where ``beta2^t`` is below ``e^-10``) estimates ``Var_draws[l_limit]``, the variance once
  the EMA has converged. The draw indices are shared by all coordinates, so a replicate's weight of
  each recorded gradient is summed once (a ``replicates x history`` matrix) and ``v_t`` of every
  coordinate is one matrix product: an estimate costs ``O(replicates * history * probe)``, whatever
  ``t`` and ``beta2``.
- **Over the weights** (:func:`weight_sums`, :func:`histogram_quantiles`): the exact counts of
  elements with ``sqrt(v_t) < eps`` and of non-finite ``v_t``, the extrema of ``l_t``, and, from a
  uniform sample of a large group, the sum and sum of squares of ``l_t`` and histogram counts
  from which quantiles are interpolated.

Every function returns partial sums that add up over ranks, so that sharded optimizer states
(DTensor shards, FSDP1 flat shards) give the values of a single process.
"""

from __future__ import annotations

import itertools
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.distributed.tensor import DTensor

__all__ = [
    "BUCKET_LIMITS",
    "DrawStatistics",
    "ProbeHistory",
    "draw_statistics",
    "histogram_quantiles",
    "limit_steps",
    "locate",
    "probe_indices",
    "summarize_draws",
    "weight_sums",
]

#: Histogram bucket limits (right edges): TensorBoard's default positive buckets,
#: ``1e-12 * 1.1^k`` up to ``1e20``, then ``DBL_MAX``. Fixed limits let shards add their counts;
#: a quantile interpolated inside a bucket is within 10% of the exact one.
BUCKET_LIMITS = [1e-12 * 1.1**k for k in range(math.ceil(math.log(1e32) / math.log(1.1)) + 1)]
BUCKET_LIMITS.append(sys.float_info.max)

#: The histogram counts a uniform sample (fixed seed) of about this many elements of a larger
#: group, scaled to its size; the other sums cover every element.
HISTOGRAM_SAMPLES = 2**16

#: Layout of the rows of :func:`weight_sums`: finite count, sum, sum of squares of ``l_t``,
#: elements with ``sqrt(v_t) < eps``, non-finite elements, then the bucket counts.
COUNT, SUM, SUM_SQ, EPS_DOMINATED, NONFINITE, BUCKETS = range(6)


def limit_steps(beta2: float) -> int:
    """``ceil(10 / (1 - beta2))``: the steps after which ``beta2^t < e^-10``, where ``v_t`` has
    converged to its limit.

    Example::

        >>> limit_steps(0.98), limit_steps(0.999)
        (500, 10000)

    """
    return math.ceil(10.0 / (1.0 - beta2) - 1e-9)


def probe_indices(numels: Sequence[int], size: int, seed: int = 0) -> list[Tensor]:
    """A uniform random probe of ``min(size, sum(numels))`` distinct coordinates of a list of
    parameters, as sorted flat indices into each (global, row-major flattened) parameter.

    The choice depends only on ``numels``, ``size`` and ``seed``: every rank and every strategy
    picks the same coordinates of the global parameters.

    Args:
        numels: the global number of elements of each parameter, in the param group's order.
        size: how many coordinates to pick.
        seed: the seed of the choice.

    Example::

        >>> [t.tolist() for t in probe_indices([3, 2], 5)]
        [[0, 1, 2], [0, 1]]

    """
    total = sum(numels)
    generator = torch.Generator().manual_seed(seed)
    if size >= total:
        chosen = torch.arange(total)
    else:  # rejection of repeats: O(size) memory, whatever the size of the parameters
        chosen = torch.empty(0, dtype=torch.int64)
        while chosen.numel() < size:
            draws = torch.randint(total, (2 * size,), generator=generator)
            merged = torch.cat([chosen, draws])
            unique, first = _first_occurrences(merged)
            chosen = merged[first[: min(size, unique)]]
        chosen = chosen.sort().values
    bounds = torch.tensor([0, *numels]).cumsum(0).tolist()
    return [chosen[(chosen >= lo) & (chosen < hi)] - lo for lo, hi in itertools.pairwise(bounds)]


def locate(
    indices: Tensor, shape: Sequence[int], local_shape: Sequence[int], offset: Sequence[int]
) -> tuple[Tensor, Tensor]:
    """Which of the flat ``indices`` into a parameter of ``shape`` lie in the block of
    ``local_shape`` at ``offset`` that one rank holds (a DTensor shard; an FSDP1 slice, with 1-D
    shapes), and their flat indices into that block.

    Returns:
        ``(held, local)``: the positions in ``indices`` of the held ones, and their local indices.

    Example::

        >>> held, local = locate(torch.tensor([1, 5, 7]), (4, 2), (2, 2), (2, 0))  # rows 2-3
        >>> held.tolist(), local.tolist()
        ([1, 2], [1, 3])

    """
    if not shape:  # a 0-dimensional parameter: one element
        shape, local_shape, offset = (1,), (1,), (0,)
    coordinates = torch.stack(torch.unravel_index(indices, tuple(shape)), dim=-1)
    start = torch.tensor(list(offset), dtype=torch.int64)
    inside = (coordinates >= start) & (coordinates < start + torch.tensor(list(local_shape)))
    held = inside.all(dim=-1).nonzero().reshape(-1)
    strides = torch.tensor([math.prod(local_shape[d + 1 :]) for d in range(len(shape))])
    local = ((coordinates[held] - start) * strides).sum(dim=-1)
    return held, local


def _first_occurrences(values: Tensor) -> tuple[int, Tensor]:
    """Number of distinct ``values`` and the positions of their first occurrences, in order."""
    unique, inverse = torch.unique(values, return_inverse=True)
    first = torch.full((unique.numel(),), values.numel(), dtype=torch.int64)
    first.scatter_reduce_(0, inverse, torch.arange(values.numel()), reduce="amin")
    return unique.numel(), first.sort().values


class ProbeHistory:
    """The gradients of the last ``capacity`` optimizer steps at the probe coordinates one rank
    holds, and which of them have been nonzero and finite at every step so far.

    Args:
        size: how many probe coordinates this rank holds.
        capacity: how many steps to keep (the oldest is overwritten).
        device: where to keep them.

    """

    def __init__(self, size: int, capacity: int, device: torch.device) -> None:
        self.values = torch.zeros(capacity, size, dtype=torch.float32, device=device)
        self.alive = torch.ones(size, dtype=torch.bool, device=device)
        self.recorded = 0

    @property
    def pool(self) -> Tensor:
        """``[min(recorded, capacity), size]``: the kept gradients (in no particular order)."""
        return self.values[: min(self.recorded, self.values.shape[0])]

    def record(self, gradients: Tensor) -> None:
        """Keep one step's gradients (``[size]``, any float dtype). Coordinates whose gradient is
        zero or not finite are no longer alive; the values are kept as they are."""
        self.values[self.recorded % self.values.shape[0]] = gradients
        self.alive &= torch.isfinite(gradients) & (gradients != 0)
        self.recorded += 1

    def nbytes(self) -> int:
        return self.values.nbytes + self.alive.nbytes


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


def weight_sums(
    states: Sequence[dict[str, Any]],
    beta2: float,
    eps: float,
    world_size: int,
    device: torch.device,
) -> tuple[Tensor, Tensor]:
    """One rank's share of the statistics of ``l_t`` over the weights of a param group.

    Over the parameters whose optimizer ``states`` are given, returns, in float64 on ``device``,
    ``sums`` (laid out as :data:`COUNT` .. :data:`BUCKETS`) and ``extrema = [-min, max]`` of
    ``l_t``. Exact over every element: the count of finite ``v_t``, of those with
    ``sqrt(v_t) < eps`` and of non-finite ones, and the extrema. From a uniform sample (fixed
    seed) of about :data:`HISTOGRAM_SAMPLES` elements of a larger group, scaled to the finite
    count: the sum and sum of squares of ``l_t`` and the histogram counts per
    :data:`BUCKET_LIMITS`; a smaller group is counted in whole. Non-finite ``v_t`` are left out
    of everything but their own count. So a logging event reads ``exp_avg_sq`` twice (extrema,
    ``eps`` count) and computes ``l_t`` on the sample only.

    Summing ``sums`` and taking the maximum of ``extrema`` over the ``world_size`` ranks gives the
    values of the whole group: a DTensor shard counts with weight ``shards / world_size`` and a
    plain tensor, replicated on every rank, with ``1 / world_size``. With ``world_size=1`` every
    tensor counts once.
    """
    numel = sum(state["exp_avg_sq"].numel() for state in states)  # global size for DTensors
    stride = max(1, math.ceil(numel / HISTOGRAM_SAMPLES))
    limits = torch.tensor(BUCKET_LIMITS, dtype=torch.float64, device=device)
    sums = torch.zeros(BUCKETS + len(BUCKET_LIMITS), dtype=torch.float64, device=device)
    extrema = torch.full((2,), -math.inf, dtype=torch.float64, device=device)
    for state in states:
        exp_avg_sq = state["exp_avg_sq"]
        if isinstance(exp_avg_sq, DTensor):
            mesh, placements = exp_avg_sq.device_mesh, exp_avg_sq.placements
            shards = math.prod(mesh.size(d) for d, p in enumerate(placements) if p.is_shard())
            v, weight = exp_avg_sq.to_local().reshape(-1), shards / world_size
        else:
            v, weight = exp_avg_sq.reshape(-1), 1.0 / world_size
        if v.numel() == 0:  # an empty shard of a small parameter
            continue
        step = float(state["step"])
        bias_correction = math.sqrt(-math.expm1(step * math.log(beta2)) if beta2 > 0 else 1.0)
        low, high = (x.item() for x in torch.aminmax(v))  # NaN if any entry is NaN
        nonfinite = 0
        if not (low >= 0.0 and math.isfinite(high)):  # the slow path: leave out the bad entries
            finite = torch.isfinite(v) & (v >= 0)
            nonfinite = int(v.numel() - torch.count_nonzero(finite))
            v = v[finite]
            if v.numel() == 0:
                sums[NONFINITE] += nonfinite * weight
                continue
            low, high = (x.item() for x in torch.aminmax(v))
        # eps^2 underflows in 16 bits (1e-16 for the default eps): compare in float32 there.
        wide = v if v.dtype in (torch.float32, torch.float64) else v.float()
        dominated = float(torch.count_nonzero(wide < eps * eps)) if eps > 0 else 0.0
        # l_t falls as v_t grows: its extrema come from those of v_t.
        lr_low = bias_correction / (math.sqrt(high) + eps)
        lr_high = bias_correction / (math.sqrt(low) + eps)
        extrema = torch.maximum(extrema, extrema.new_tensor([-lr_low, lr_high]))
        sample = v
        if stride > 1:  # uniform, not strided: a stride would pick columns of a matrix
            generator = torch.Generator(v.device).manual_seed(0)
            picks = (math.ceil(v.numel() / stride),)
            sample = v[torch.randint(v.numel(), picks, generator=generator, device=v.device)]
        lr = bias_correction / (sample.to(device, torch.float64).sqrt() + eps)
        scale = v.numel() / sample.numel()
        buckets = torch.bucketize(lr, limits).clamp_(max=len(limits) - 1)
        sums[BUCKETS:] += torch.bincount(buckets, minlength=len(limits)) * (scale * weight)
        row = [float(v.numel()), 0.0, 0.0, dominated, float(nonfinite)]
        sums[:BUCKETS] += sums.new_tensor(row) * weight
        sums[SUM] += lr.sum() * (scale * weight)
        sums[SUM_SQ] += lr.square().sum() * (scale * weight)
    return sums, extrema


def histogram_quantiles(
    counts: Sequence[float], low: float, high: float, quantiles: Sequence[float]
) -> list[float]:
    """Quantiles of a histogram over :data:`BUCKET_LIMITS`, interpolated geometrically inside the
    bucket they fall in (the first filled bucket starts at ``low``, the last ends at ``high``), so
    each is within a bucket's width, 10%, of the quantile of the counted values.

    Example::

        >>> counts = [0.0] * len(BUCKET_LIMITS)
        >>> counts[10] = 4.0  # four values in (1e-12 * 1.1^9, 1e-12 * 1.1^10]
        >>> q = histogram_quantiles(counts, 2e-12, 2.5e-12, [0.5])[0]
        >>> 2e-12 < q < 2.6e-12
        True

    """
    cumulative = torch.tensor(counts, dtype=torch.float64).cumsum(0)
    total = float(cumulative[-1])
    out = []
    for q in quantiles:
        target = q * total
        i = int(torch.searchsorted(cumulative, torch.tensor(target, dtype=torch.float64)))
        i = min(i, len(counts) - 1)
        before = float(cumulative[i - 1]) if i > 0 else 0.0
        left = max(BUCKET_LIMITS[i - 1] if i > 0 else low, low)
        right = min(BUCKET_LIMITS[i], high)
        right = max(right, left)
        share = (target - before) / counts[i] if counts[i] > 0 else 0.0
        out.append(left * (right / left) ** min(max(share, 0.0), 1.0) if left > 0 else right)
    return out
