r"""Statistics of Adam's adaptive learning rate ``l_t = sqrt(1 - beta2^t) / (sqrt(v_t) + eps)``.

Two kinds, both plain PyTorch (nothing here imports Lightning):

- **Over the draw of the minibatches** (the variance that RAdam rectifies, Liu et al. 2020): for a
  small fixed *probe* of coordinates, the gradients of the last optimizer steps are kept
  (:class:`ProbeHistory`) and ``v_t`` is bootstrapped from them under the EMA weights of Adam
  (:func:`draw_statistics`): each replicate draws ``t_limit = ceil(10 / (1 - beta2))`` gradients
  with replacement from the recorded ones (past ``t_limit`` steps, ``beta2^t`` is below
  ``e^-10``), and weighs those of the last ``min(t, t_limit)`` steps as Adam weighs
  ``g_1 .. g_t``. The variance of ``l_t`` over the replicates estimates ``Var_draws[l_t]``; over
  all ``t_limit`` draws it estimates ``Var_draws[l_limit]``, the variance once the EMA has
  converged. The draw indices are shared by all coordinates, so a replicate's weight of
  each recorded gradient is summed once (a ``replicates x history`` matrix) and ``v_t`` of every
  coordinate is one matrix product: an estimate costs ``O(replicates * history * probe)``, whatever
  ``t`` and ``beta2``.
- **Over the weights** (:func:`weight_sums`, :func:`histogram_quantiles`): the exact counts of
  finite and non-finite ``v_t`` and the extrema of ``l_t``, and, from a uniform sample of a large
  group, the count of ``sqrt(v_t) < eps``, the sum and sum of squares of ``l_t`` and histogram
  counts from which quantiles are interpolated.

Every function returns partial sums that add up over ranks, so that sharded optimizer states
(DTensor shards, FSDP1 flat shards) give the values of a single process. A param group's
statistics take two calls: :func:`group_share` on every rank, then, after summing the shares'
``sums`` and taking the maximum of their ``maxima`` over the ranks, :func:`group_statistics`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from lightning_ranger.optim._adaptive_lr_draws import (
    DrawStatistics,
    draw_statistics,
    limit_steps,
    summarize_draws,
)
from lightning_ranger.optim._adaptive_lr_probe import Probe, ProbeHistory, locate, probe_indices
from lightning_ranger.optim._adaptive_lr_weights import (
    BUCKET_LIMITS,
    BUCKETS,
    COUNT,
    EPS_DOMINATED,
    HISTOGRAM_SAMPLES,
    NONFINITE,
    SUM,
    SUM_SQ,
    histogram_quantiles,
    weight_sums,
)
from lightning_ranger.optim.rectification import MIN_RECTIFY_THRESHOLD, rectification

__all__ = [
    "BUCKETS",
    "BUCKET_LIMITS",
    "COUNT",
    "EPS_DOMINATED",
    "HISTOGRAM_SAMPLES",
    "NONFINITE",
    "REPLICATES",
    "SUM",
    "SUM_SQ",
    "DrawStatistics",
    "GroupShare",
    "GroupStatistics",
    "Probe",
    "ProbeHistory",
    "WeightHistogram",
    "draw_statistics",
    "group_share",
    "group_statistics",
    "histogram_quantiles",
    "limit_steps",
    "locate",
    "probe_indices",
    "summarize_draws",
    "weight_sums",
]

#: Bootstrap replicates of ``v_t`` per estimate of a group's variance over draws.
REPLICATES = 128

#: Per probe coordinate: ``Var_draws[l_t]``, ``E_draws[l_t]``, ``Var_draws[l_limit]``, liveness.
_DRAW_ROWS = 4


@dataclass(frozen=True)
class GroupShare:
    """One rank's share of the statistics of a param group (float64 tensors).

    Attributes:
        sums: partial sums, to be summed over ranks: the row of :func:`weight_sums`, then, per
            probe coordinate, ``Var_draws[l_t]``, ``E_draws[l_t]``, ``Var_draws[l_limit]`` and
            whether it is alive (zeros at the coordinates this rank does not hold).
        maxima: ``[-min l_t, max l_t, t]``, to be reduced by their maximum over ranks: the
            extrema of ``l_t`` over the weights, and the optimizer step ``t``, which a rank that
            holds none of the group's state does not know (``-inf`` there).

    """

    sums: Tensor
    maxima: Tensor


@dataclass(frozen=True)
class WeightHistogram:
    """The histogram of ``l_t`` over the weights of a group: ``counts`` per right edge of
    :data:`BUCKET_LIMITS` (scaled to ``count`` when sampled), and the count, sum, sum of squares,
    minimum and maximum of the values."""

    count: float
    total: float
    total_sq: float
    low: float
    high: float
    counts: list[float]


@dataclass(frozen=True)
class GroupStatistics:
    """What is known of a param group at optimizer step ``t``.

    Attributes:
        values: by name: ``rho_t``, ``r_t`` (0 up to the threshold), ``rho_t_threshold``,
            ``r_t_linear_warmup``, ``nonfinite_fraction``; with finite state also
            ``adaptive_lr_mean``, ``adaptive_lr_var``, ``eps_dominated_fraction`` and the
            quantiles; from two recorded steps on, with a live probe coordinate,
            ``adaptive_lr_var_ratio``, ``adaptive_lr_rel_var``, ``rectified_var_ratio``, and
            ``adaptive_lr_var_ratio_gaussian`` while ``rho_t > 4``.
        histogram: of ``l_t`` over the finite elements; ``None`` when there is none.

    """

    values: dict[str, float]
    histogram: WeightHistogram | None


def group_share(
    states: Sequence[dict[str, Any]],
    probe: Probe,
    beta2: float,
    eps: float,
    world_size: int,
    device: torch.device,
) -> GroupShare:
    """This rank's share of the statistics of a param group.

    Args:
        states: the optimizer states (``step``, ``exp_avg_sq``) of the group's parameters that
            this rank holds; empty if it holds none.
        probe: the group's probe on this rank.
        beta2: the group's ``beta2``.
        eps: the group's ``eps``.
        world_size: ``1`` if the states are whole tensors that one rank alone reads; the number
            of ranks if they are DTensor shards or are replicated on every rank
            (:func:`weight_sums`).
        device: where to compute the share (the device of the reduction over ranks).

    """
    sums, extrema = weight_sums(states, beta2, eps, world_size, device)
    # Pooled param groups may have stepped apart (a group added later): the latest step.
    step = max((float(state["step"]) for state in states), default=-math.inf)
    draws = torch.zeros(_DRAW_ROWS, probe.size, dtype=torch.float64, device=device)
    pool = probe.history.pool
    if len(pool) >= 2 and probe.positions.numel() and step >= 1:
        estimate = draw_statistics(pool, int(step), beta2, eps, REPLICATES)
        per_coordinate = [
            estimate.var,
            estimate.mean,
            estimate.var_limit,
            probe.history.alive.double(),
        ]
        draws[:, probe.positions.to(device)] = torch.stack(per_coordinate).to(device) * probe.weight
    maxima = torch.cat([extrema, extrema.new_tensor([step])])
    return GroupShare(sums=torch.cat([sums, draws.reshape(-1)]), maxima=maxima)


def group_statistics(
    sums: Tensor,
    maxima: Sequence[float],
    beta2: float,
    threshold: float,
    quantiles: Mapping[str, float],
) -> GroupStatistics | None:
    """The statistics of a param group from its :class:`GroupShare` reduced over ranks.

    Args:
        sums: :attr:`GroupShare.sums` summed over ranks.
        maxima: :attr:`GroupShare.maxima` reduced by their maximum over ranks.
        beta2: the group's ``beta2``.
        threshold: the group's ``rectify_threshold``.
        quantiles: the quantiles of ``l_t`` over the weights to compute, by the name to give them
            in :attr:`GroupStatistics.values`.

    Returns:
        ``None`` while no rank has optimizer state for the group.

    Example::

        >>> param = torch.nn.Parameter(torch.zeros(4))
        >>> probe = Probe([param], size=4, capacity=8, world_size=1)
        >>> for step in (1.0, 2.0):  # after each optimizer step
        ...     param.grad = torch.tensor([1.0, -2.0, 3.0, 0.5]) * step
        ...     probe.record(step)
        >>> state = {"step": torch.tensor(2.0), "exp_avg_sq": torch.full((4,), 0.01)}
        >>> share = group_share([state], probe, 0.999, 1e-8, 1, torch.device("cpu"))
        >>> stats = group_statistics(share.sums, share.maxima.tolist(), 0.999, 5.0, {"p50": 0.5})
        >>> round(stats.values["adaptive_lr_mean"], 4)  # sqrt(1 - 0.999^2) / sqrt(0.01)
        0.4471
        >>> stats.values["r_t"], "adaptive_lr_var_ratio" in stats.values
        (0.0, True)

    """
    weights = sums[: BUCKETS + len(BUCKET_LIMITS)].tolist()
    count, nonfinite = weights[COUNT], weights[NONFINITE]
    if count + nonfinite == 0:
        return None
    neg_low, high, t = maxima
    low = -neg_low
    rho_t, r_t = rectification(t, beta2)
    rectified = rho_t > threshold
    values = {
        "rho_t": rho_t,
        "r_t": r_t if rectified else 0.0,
        "rho_t_threshold": threshold,
        "r_t_linear_warmup": min(1.0, t * (1.0 - beta2) / 2.0),
        "nonfinite_fraction": nonfinite / (count + nonfinite),
    }
    histogram = None
    if count > 0:
        mean = weights[SUM] / count
        values["adaptive_lr_mean"] = mean
        values["adaptive_lr_var"] = max(weights[SUM_SQ] / count - mean**2, 0.0)
        values["eps_dominated_fraction"] = weights[EPS_DOMINATED] / count
        counts = weights[BUCKETS:]  # scaled to the count already
        found = histogram_quantiles(counts, low, high, list(quantiles.values()))
        values.update(zip(quantiles, found, strict=True))
        histogram = WeightHistogram(count, weights[SUM], weights[SUM_SQ], low, high, counts)

    var, mean_lr, var_limit, alive = sums[BUCKETS + len(BUCKET_LIMITS) :].reshape(_DRAW_ROWS, -1)
    ratio, relative = summarize_draws(var, mean_lr, var_limit, alive > 0.5)
    if not math.isnan(ratio):  # NaN: fewer than 2 recorded steps, or no live coordinate
        values["adaptive_lr_var_ratio"] = ratio
        values["adaptive_lr_rel_var"] = relative
        values["rectified_var_ratio"] = r_t**2 * ratio if rectified else 0.0
        if rho_t > MIN_RECTIFY_THRESHOLD:
            values["adaptive_lr_var_ratio_gaussian"] = 1.0 / r_t**2
    return GroupStatistics(values, histogram)
