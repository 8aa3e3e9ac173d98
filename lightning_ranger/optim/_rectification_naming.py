"""How the rectification statistics are named and laid out, for
:class:`~lightning_ranger.optim.rectification_tracker.RectificationTracker` and the
:class:`~lightning_ranger.callbacks.RectificationMonitor` alike: metric names, the names of the
quantiles, the TensorBoard custom-scalars layout and the histograms. Plain PyTorch."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

from torch.optim import Optimizer

from lightning_ranger._validation import check_real
from lightning_ranger.optim.adaptive_lr import BUCKET_LIMITS, WeightHistogram

__all__ = [
    "HISTOGRAM",
    "LOG10",
    "PREFIX",
    "custom_scalars_layout",
    "pooled_suffixes",
    "quantile_metrics",
    "tag",
    "with_log10",
    "write_histogram",
]

PREFIX = "rectification"

#: The metric of the histogram of ``l_t``.
HISTOGRAM = "adaptive_lr"

_VARIANCE_RATIOS = (
    "adaptive_lr_var_ratio",
    "adaptive_lr_var_ratio_gaussian",
    "rectified_var_ratio",
)


#: The suffix of a series' base-10 logarithm (:func:`with_log10`).
LOG10 = "_log10"


def with_log10(values: dict[str, float], quantiles: Sequence[str]) -> dict[str, float]:
    """``values`` with the base-10 logarithms of the variance ratios and of the ``quantiles``
    beside them, as ``<metric>_log10``, where they are positive and finite (the rectified ratio
    is 0 while RAdam takes SGD steps: no logarithm then).

    Example::

        >>> values = with_log10({"adaptive_lr_var_ratio": 100.0, "rectified_var_ratio": 0.0}, [])
        >>> values["adaptive_lr_var_ratio_log10"], "rectified_var_ratio_log10" in values
        (2.0, False)

    """
    logs = {
        name + LOG10: math.log10(values[name])
        for name in (*_VARIANCE_RATIOS, *quantiles)
        if name in values and 0.0 < values[name] < math.inf
    }
    return {**values, **logs}


def tag(metric: str, suffix: str) -> str:
    """``rectification/{metric}{suffix}``."""
    return f"{PREFIX}/{metric}{suffix}"


def quantile_metrics(quantiles: object) -> dict[str, float]:
    """The metrics of the ``quantiles`` of ``l_t``: ``{"adaptive_lr_p05": 0.05, ...}``, named
    ``adaptive_lr_p{100 q}`` (two digits, more for a finer ``q``).

    Raises:
        TypeError: if ``quantiles`` is not a sequence of reals.
        ValueError: if a quantile is outside ``(0, 1)`` or repeated.

    Example::

        >>> quantile_metrics([0.05, 0.5, 0.125])
        {'adaptive_lr_p05': 0.05, 'adaptive_lr_p50': 0.5, 'adaptive_lr_p12_5': 0.125}

    """
    if isinstance(quantiles, (str, bytes)) or not isinstance(quantiles, Sequence):
        raise TypeError(f"`quantiles` must be a sequence of floats in (0, 1), got {quantiles!r}")
    names: dict[str, float] = {}
    for i, value in enumerate(quantiles):
        q = check_real(f"quantiles[{i}]", value, 0.0, 1.0, low_open=True, high_open=True)
        percent = f"{100 * q:.6g}".replace(".", "_")
        name = f"adaptive_lr_p{percent:0>2}"
        if name in names:
            raise ValueError(f"`quantiles` must be distinct, got {value} twice")
        names[name] = q
    return names


def pooled_suffixes(optimizer: Optimizer, prefix: str, pools: Sequence[Sequence[int]]) -> list[str]:
    """The suffix of each pool of ``optimizer``'s param groups (given by their indices), after
    ``LearningRateMonitor``'s names of the groups: ``/{name}`` for a group with a ``name``,
    ``/pg{i}`` (from 1) for another when there are several. A pool of one group takes its group's
    suffix; a pool of several groups takes ``prefix`` alone when it holds every group (as one
    group would), else their names joined by ``+``.

    Raises:
        ValueError: if two pools would be logged under the same name.

    Example::

        >>> import torch
        >>> optimizer = torch.optim.Adam([{"params": [torch.zeros(1)]} for _ in range(3)])
        >>> pooled_suffixes(optimizer, "", [[0, 2], [1]])
        ['/pg1+pg3', '/pg2']
        >>> pooled_suffixes(optimizer, "/opt1", [[0, 1, 2]])
        ['/opt1']

    """
    groups = optimizer.param_groups
    several = len(groups) > 1
    names = [g.get("name") or (f"pg{i}" if several else "") for i, g in enumerate(groups, start=1)]
    suffixes = []
    for pool in pools:
        name = names[pool[0]] if len(pool) == 1 else "+".join(names[i] for i in pool)
        whole = len(pool) > 1 and len(pool) == len(groups)
        suffixes.append(f"{prefix}/{name}" if name and not whole else prefix)
    duplicates = sorted({s for s in suffixes if suffixes.count(s) > 1})
    if duplicates:
        raise ValueError(
            f"{type(optimizer).__name__} has several param groups named {duplicates} in the"
            " rectification statistics; give its param groups distinct `name`s"
        )
    return suffixes


def custom_scalars_layout(
    suffixes: Sequence[str], quantiles: Sequence[str]
) -> dict[str, dict[str, list[Any]]]:
    """TensorBoard custom-scalars layout: per group (of ``suffixes``), rho_t beside its threshold,
    r_t beside linear warmup, and, as their base-10 logarithms (:func:`with_log10`), the variance
    ratio beside ``1 / r_t^2`` and the rectified ratio, and the ``quantiles`` of ``l_t``: readable
    on TensorBoard's default linear axes, where the ratio spans hundreds to 1 and the quantiles
    many decades."""

    def pattern(metric: str, suffix: str) -> str:
        # TensorBoard matches from the start of a tag: allow a logger's prefix before it.
        return f"(?:.+-)?{re.escape(tag(metric, suffix))}$"

    charts: dict[str, list[Any]] = {}
    for sfx in suffixes:
        for metric, companion in (("rho_t", "rho_t_threshold"), ("r_t", "r_t_linear_warmup")):
            charts[f"{metric}{sfx} vs {companion}"] = [
                "Multiline",
                [pattern(metric, sfx), pattern(companion, sfx)],
            ]
        charts[f"log10 adaptive_lr_var_ratio{sfx} vs 1/r_t^2 vs rectified"] = [
            "Multiline",
            [pattern(m + LOG10, sfx) for m in _VARIANCE_RATIOS],
        ]
        charts[f"log10 adaptive_lr quantiles{sfx}"] = [
            "Multiline",
            [pattern(metric + LOG10, sfx) for metric in quantiles],
        ]
    return {PREFIX: charts}


def write_histogram(writer: Any, name: str, histogram: WeightHistogram, step: int) -> None:
    """Write ``histogram`` to a ``torch.utils.tensorboard.SummaryWriter`` as ``name`` at
    ``step``."""
    filled = [i for i, c in enumerate(histogram.counts) if c > 0]
    # TensorBoard reads right edges only: keep one empty bucket on the left as the lower edge.
    first, last = max(filled[0] - 1, 0), filled[-1] + 1
    writer.add_histogram_raw(
        name,
        min=histogram.low,
        max=histogram.high,
        num=round(histogram.count),
        sum=histogram.total,
        sum_squares=histogram.total_sq,
        bucket_limits=BUCKET_LIMITS[first:last],
        bucket_counts=list(histogram.counts[first:last]),
        global_step=step,
    )
