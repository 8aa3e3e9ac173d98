"""The spread of Adam's adaptive lr over the weights of a param group: exact counts and extrema,
and sums and a histogram from a uniform sample, as partial sums that add up over ranks. Plain
PyTorch.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import math
import sys
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torch.distributed.tensor import DTensor

from lightning_ranger.optim._adaptive_lr_probe import dtensor_weight

__all__ = [
    "BUCKET_LIMITS",
    "HISTOGRAM_SAMPLES",
    "bucket_indices",
    "histogram_quantiles",
    "weight_sums",
]

_FIRST_LIMIT, _GROWTH = 1e-12, 1.1

#: Histogram bucket limits (right edges): TensorBoard's default positive buckets,
#: ``1e-12 * 1.1^k`` up to ``1e20``, then ``DBL_MAX``. Fixed limits let shards add their counts;
#: a quantile interpolated inside a bucket is within 10% of the exact one.
BUCKET_LIMITS = [
    _FIRST_LIMIT * _GROWTH**k for k in range(math.ceil(math.log(1e32) / math.log(_GROWTH)) + 1)
]
BUCKET_LIMITS.append(sys.float_info.max)

#: The histogram counts a uniform sample (fixed seed) of about this many elements of a larger
#: group, scaled to its size; the other sums cover every element.
HISTOGRAM_SAMPLES = 2**16

#: A tensor of at most this many sample picks is read whole (with the others of its kind).
_SMALL_PICKS = 8

#: Layout of the rows of :func:`weight_sums`: finite count, sum, sum of squares of ``l_t``,
#: elements with ``sqrt(v_t) < eps``, non-finite elements, then the bucket counts.
COUNT, SUM, SUM_SQ, EPS_DOMINATED, NONFINITE, BUCKETS = range(6)


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
    ``l_t``. Exact over every element: the count of finite ``v_t`` and of non-finite ones, and
    the extrema. From a uniform sample (fixed seed) of about :data:`HISTOGRAM_SAMPLES` elements
    of a larger group, scaled to the finite count: the count of ``sqrt(v_t) < eps``, the sum and
    sum of squares of ``l_t`` and the histogram counts per :data:`BUCKET_LIMITS` (a share's
    standard error is at most ``0.5 / sqrt(samples)``, 0.002); a smaller group is counted in
    whole. Non-finite ``v_t`` are left out of everything but their own count. So a logging event
    reads ``exp_avg_sq`` once (the extrema; a second time only where an entry is not finite)
    and computes on the sample only.

    Summing ``sums`` and taking the maximum of ``extrema`` over the ``world_size`` ranks gives the
    values of the whole group: a DTensor shard counts with weight ``shards / world_size`` and a
    plain tensor, replicated on every rank, with ``1 / world_size``. With ``world_size=1`` every
    tensor counts once.
    """
    numel = sum(state["exp_avg_sq"].numel() for state in states)  # global size for DTensors
    # l_t of every element would dominate a logging event's cost: a large group is sampled.
    sampling_factor = max(1, math.ceil(numel / HISTOGRAM_SAMPLES))
    sums = torch.zeros(BUCKETS + len(BUCKET_LIMITS), dtype=torch.float64, device=device)
    row = [0.0] * BUCKETS
    lr_low, lr_high = math.inf, -math.inf
    entries = []  # (local values, weight, step, read whole)
    for state in states:
        exp_avg_sq = state["exp_avg_sq"]
        if isinstance(exp_avg_sq, DTensor):
            v, weight = exp_avg_sq.to_local().reshape(-1), dtensor_weight(exp_avg_sq, world_size)
        else:
            v, weight = exp_avg_sq.reshape(-1), 1.0 / world_size
        if v.numel():  # not an empty shard of a small parameter
            entries.append((v, weight, float(state["step"]), sampling_factor == 1))
    # Tensors of a few sample picks each (biases, norms) are read whole, as one: one pass where
    # there would be one per tensor.
    small = [e for e in entries if e[0].numel() <= _SMALL_PICKS * sampling_factor]
    if len(small) > 1 and len({(e[0].dtype, e[1], e[2]) for e in small}) == 1:
        _, weight, step, _ = small[0]
        joined = (torch.cat([e[0] for e in small]), weight, step, True)
        entries = [e for e in entries if e[0].numel() > _SMALL_PICKS * sampling_factor]
        entries.append(joined)
    # Per entry, only what needs its every element (the extrema) and the sample's gather; the
    # samples of all entries are then taken in one go.
    samples, lengths, scales, corrections, thresholds = [], [], [], [], []
    for v, weight, step, whole in entries:
        low, high = (x.item() for x in torch.aminmax(v))  # NaN if any entry is NaN
        if not (low >= 0.0 and math.isfinite(high)):  # the slow path: leave out the bad entries
            finite = torch.isfinite(v) & (v >= 0)
            row[NONFINITE] += (v.numel() - int(torch.count_nonzero(finite))) * weight
            v = v[finite]
            if v.numel() == 0:
                continue
            low, high = (x.item() for x in torch.aminmax(v))
        bias_correction = math.sqrt(-math.expm1(step * math.log(beta2)) if beta2 > 0 else 1.0)
        row[COUNT] += v.numel() * weight
        # l_t falls as v_t grows: its extrema come from those of v_t.
        lr_low = min(lr_low, _adaptive_lr(bias_correction, high, eps))
        lr_high = max(lr_high, _adaptive_lr(bias_correction, low, eps))
        if not whole:
            picks = math.ceil(v.numel() / sampling_factor)
            samples.append(torch.take(v, _sample_positions(v.numel(), picks, v.device)))
        else:
            samples.append(v)
        lengths.append(samples[-1].numel())
        scales.append(v.numel() / lengths[-1] * weight)
        corrections.append(bias_correction)
        # eps^2 underflows in 16 bits (1e-16 for the default eps): compare in float32 there.
        thresholds.append(_squared(eps, v.dtype if v.dtype == torch.float64 else torch.float32))
    extrema = torch.tensor([-lr_low, lr_high], dtype=torch.float64, device=device)
    sums[:BUCKETS] = torch.tensor(row, dtype=torch.float64)
    if not samples:
        return sums, extrema
    sample = torch.cat(samples).to(device, torch.float64)
    counts = torch.tensor(lengths, device=device)
    multiplier = _per_sample(scales, counts, len(sample))
    # The same for every sample, mostly: states at different steps, float64 beside other dtypes.
    correction = _shared_or_per_sample(corrections, counts, len(sample))
    threshold = _shared_or_per_sample(thresholds, counts, len(sample))
    sums[EPS_DOMINATED] = torch.dot((sample < threshold).double(), multiplier)
    lr = correction / (sample.sqrt() + eps)
    limits = torch.tensor(BUCKET_LIMITS, dtype=torch.float64, device=device)
    buckets = bucket_indices(lr, limits)
    sums[BUCKETS:] = torch.bincount(buckets, weights=multiplier, minlength=len(limits))
    sums[SUM] = torch.dot(lr, multiplier)
    sums[SUM_SQ] = torch.dot(lr.square(), multiplier)
    return sums, extrema


def _per_sample(values: Sequence[float], counts: Tensor, total: int) -> Tensor:
    """Each entry's value repeated over its ``counts`` samples (float64, on ``counts``'s
    device)."""
    per_entry = torch.tensor(values, dtype=torch.float64, device=counts.device)
    return per_entry.repeat_interleave(counts, output_size=total)


def _shared_or_per_sample(values: Sequence[float], counts: Tensor, total: int) -> float | Tensor:
    """The value all entries share, else :func:`_per_sample`."""
    if all(v == values[0] for v in values):
        return values[0]
    return _per_sample(values, counts, total)


def bucket_indices(values: Tensor, limits: Tensor) -> Tensor:
    """``torch.bucketize(values, limits).clamp(max=len(limits) - 1)`` for :data:`BUCKET_LIMITS`
    (float64, on the values' device) and non-negative ``values``, three times faster: the bucket
    is read off the logarithm of the value (the limits grow geometrically), then moved by one
    where rounding put it beside the right one.

    Example::

        >>> limits = torch.tensor(BUCKET_LIMITS, dtype=torch.float64)
        >>> values = torch.tensor([0.0, 1e-12, 1.1e-12, 1e-3, math.inf], dtype=torch.float64)
        >>> bucket_indices(values, limits).tolist()  # the last bucket ends at DBL_MAX
        [0, 0, 1, 218, 775]

    """
    last = len(limits) - 1
    guess = torch.log(values * (1.0 / _FIRST_LIMIT)).div_(math.log(_GROWTH)).ceil_()
    index = guess.clamp_(0, last - 1).long()  # the geometric limits end before DBL_MAX
    index -= ((index > 0) & (values <= limits[(index - 1).clamp(min=0)])).long()
    index += (values > limits[index]).long()
    return index.clamp_(max=last)


def _adaptive_lr(bias_correction: float, v: float, eps: float) -> float:
    """``l_t`` of one second moment ``v``: infinite where ``sqrt(v) + eps`` is 0 (``eps=0``)."""
    denominator = math.sqrt(v) + eps
    return bias_correction / denominator if denominator > 0 else math.inf


@functools.lru_cache(maxsize=64)
def _squared(eps: float, dtype: torch.dtype) -> float:
    """``eps^2`` as a comparison in ``dtype`` rounds it (0 for ``eps <= 0``: no entry is below)."""
    return torch.tensor(eps * eps if eps > 0 else 0.0, dtype=dtype).item()


@functools.lru_cache(maxsize=1024)
def _sample_positions(numel: int, picks: int, device: torch.device) -> Tensor:
    """The same ``picks`` random positions in ``[0, numel)`` at every logging event (fixed seed;
    random rather than regular, since a regular stride would pick the columns of a matrix)."""
    generator = torch.Generator(device).manual_seed(0)
    return torch.randint(numel, (picks,), generator=generator, device=device)


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
    cumulative = list(itertools.accumulate(counts))
    total = cumulative[-1]
    out = []
    for q in quantiles:
        target = q * total
        i = min(bisect.bisect_left(cumulative, target), len(counts) - 1)
        before = cumulative[i - 1] if i > 0 else 0.0
        left = max(BUCKET_LIMITS[i - 1] if i > 0 else low, low)
        right = min(BUCKET_LIMITS[i], high)
        right = max(right, left)
        share = (target - before) / counts[i] if counts[i] > 0 else 0.0
        out.append(left * (right / left) ** min(max(share, 0.0), 1.0) if left > 0 else right)
    return out
