"""One-line verdicts on RAdam's claims, computed from a digits study's numbers."""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from _study.lookahead_line import LineScan
from _study.recipes import RECIPES
from _study.sampling_variance import SamplingVariance
from _study.summary import Grid, near_best
from lightning_ranger import rectification
from lightning_ranger.optim.schedules import LRSchedule

#: Accuracy points (percent) that count as "as good as the best".
TOLERANCE = 1.0


@dataclass(frozen=True)
class VarianceCurves:
    """Per-step variance of the adaptive learning rate from RectificationMonitor, for one lr.

    ``raw[recipe]`` is ``Var[l_t]`` over the parameters as logged; ``applied[recipe]`` is the
    variance of the factor that multiplies ``lr * m_hat`` in the step: ``l_t`` for Adam, ``(t - 1)
    / W * l_t`` during Adam's linear warmup, ``r_t * l_t`` for RAdam (0 while RAdam takes SGD
    steps).
    """

    raw: Mapping[str, Mapping[int, float]]
    applied: Mapping[str, Mapping[int, float]]


def variance_curves(
    var: Mapping[str, Mapping[int, float]],
    r_t: Mapping[int, float],
    warmup_steps: int,
) -> VarianceCurves:
    """:class:`VarianceCurves` from the logged ``adaptive_lr_var`` per recipe and RAdam's ``r_t``.

    Args:
        var: ``{recipe: {step: Var[l_t]}}``.
        r_t: ``{step: r_t}`` of the RAdam run (the monitor logs 0 before rectification starts).
        warmup_steps: Adam + warmup's warmup length; step ``t`` runs at ``(t - 1) / W`` of lr.

    """
    schedule = LRSchedule("constant", warmup_steps=warmup_steps) if warmup_steps else None
    applied: dict[str, dict[int, float]] = {}
    for recipe, series in var.items():
        if recipe in ("radam", "ranger"):
            applied[recipe] = {t: r_t.get(t, math.nan) ** 2 * v for t, v in series.items()}
        elif recipe == "adam-warmup" and schedule is not None:
            applied[recipe] = {t: schedule(t - 1) ** 2 * v for t, v in series.items()}
        else:
            applied[recipe] = dict(series)
    return VarianceCurves(raw=var, applied=applied)


def _mean_over(series: Mapping[int, float], first: int, last: int) -> float:
    values = [v for t, v in series.items() if first <= t <= last and math.isfinite(v)]
    return statistics.fmean(values) if values else math.nan


def _lr_range(lrs: Sequence[float]) -> str:
    return f"{min(lrs):g}-{max(lrs):g}" if len(lrs) > 1 else f"{lrs[0]:g}"


def _width(grid: Grid, recipe: str, lrs: Sequence[float]) -> str:
    good = near_best(grid, recipe, lrs, TOLERANCE)
    best = max(grid[recipe, lr].mean for lr in lrs)
    return f"{RECIPES[recipe]} {len(good)}/{len(lrs)} ({_lr_range(good)}, best {best:.1f}%)"


def claim_sampling_variance(sv: SamplingVariance) -> str:
    """Claim 1, as the paper states it: ``Var[l_t]`` over the minibatch draws is large for small
    ``t``, and ``r_t`` brings it to its limit."""
    adam, steps = sv.adam, len(sv.adam)
    at = ", ".join(f"{adam[t - 1]:.3g}x at t={t}" for t in (2, 10, 50) if t <= steps)
    rectified = [v for v in sv.radam if v > 0]
    first = len(sv.radam) - len(rectified) + 1
    low, high = min(rectified), max(rectified)
    return (
        f"Claim 1a (variance of l_t over {sv.replicas} draws of the minibatches, fixed initial "
        f"weights, median over {sv.parameters} weights): Adam's Var[l_t] is {at} its value at "
        f"t={steps}; RAdam (SGD steps until t={first - 1}) applies r_t^2 Var[l_t] = {low:.2f}-"
        f"{high:.2f}x it from t={first} on -> "
        + (
            "shows (large early variance; the rectification bounds it)"
            if adam[1] > 10 and low > 0.2 and high < 2
            else "does not show as stated"
        )
    )


def claim_monitored_variance(
    curves: VarianceCurves, lr: float, zero_share: float, window: int = 10
) -> str:
    """Claim 1 during training, from RectificationMonitor: ``Var[l_t]`` over the parameters early
    and late for Adam, and the variance that warmup and rectification let through early."""
    adam = curves.raw.get("adam", {})
    if not adam:
        return "Claim 1b (RectificationMonitor): not measured (no monitored Adam run)"
    last = max(adam)
    early, late = _mean_over(adam, 1, window), _mean_over(adam, last - window + 1, last)
    text = (
        f"Claim 1b (RectificationMonitor, lr {lr:g}): Adam's Var[l_t] over the weights averages "
        f"{early:.2g} in steps 1-{window} and {late:.2g} in steps {last - window + 1}-{last}; "
        f"this spread over weights is dominated by the {100 * zero_share:.0f}% of weights with a "
        f"zero gradient (|g| < 1e-7) at step 1, whose l_t ~ sqrt(1 - beta2^t) / eps"
    )
    applied = {
        recipe: _mean_over(curves.applied[recipe], 1, window) / early
        for recipe in ("radam", "adam-warmup")
        if recipe in curves.applied
    }
    text += "".join(
        f"; {RECIPES[recipe]} lets {ratio:.2g}x of it through in steps 1-{window}"
        for recipe, ratio in applied.items()
    )
    if applied and all(ratio < 0.1 for ratio in applied.values()):
        return text + " -> warmup and rectification both damp the first steps"
    return text + " -> no clear damping of the first steps"


def claim_robustness(grid: Grid, lrs: Sequence[float]) -> str:
    """Claim 2a: RAdam is much less sensitive to the lr than Adam: the lrs within 1 point of each
    optimizer's best, and the accuracy at the lrs above Adam's best."""
    widths = {r: len(near_best(grid, r, lrs, TOLERANCE)) for r in ("adam", "radam")}
    text = (
        f"Claim 2a (lr robustness), lrs within {TOLERANCE:g} point of each optimizer's best: "
        + "; ".join(_width(grid, r, lrs) for r in RECIPES if (r, lrs[0]) in grid)
    )
    top = max(lrs, key=lambda lr: grid["adam", lr].mean)
    above = [lr for lr in lrs if lr > top]
    if above:
        text += f"; above Adam's best lr {top:g}: " + ", ".join(
            f"lr {lr:g} Adam {grid['adam', lr].mean:.1f}% vs RAdam {grid['radam', lr].mean:.1f}%"
            for lr in above
        )
    if widths["radam"] > widths["adam"]:
        return text + " -> shows (RAdam's near-best range is wider than Adam's)"
    gains = [grid["radam", lr].mean - grid["adam", lr].mean for lr in above]
    if gains and statistics.fmean(gains) > TOLERANCE:
        return text + (
            " -> partly (the near-best range is not wider, but RAdam degrades far less than "
            "Adam at large lrs)"
        )
    return text + " -> does not show"


def claim_no_warmup(grid: Grid, lrs: Sequence[float]) -> str:
    """Claim 2b: RAdam needs no warmup: it matches Adam + warmup, and warmup matters for Adam."""
    gaps = [grid["radam", lr].mean - grid["adam-warmup", lr].mean for lr in lrs]
    helped = [lr for lr in lrs if grid["adam-warmup", lr].mean > grid["adam", lr].mean + TOLERANCE]
    matched = [lr for lr, gap in zip(lrs, gaps, strict=True) if gap >= -TOLERANCE]
    text = (
        f"Claim 2b (no warmup needed): warmup improves Adam by > {TOLERANCE:g} point at "
        f"{len(helped)}/{len(lrs)} lrs ({', '.join(f'{lr:g}' for lr in helped) or 'none'}); "
        f"RAdam without warmup is within {TOLERANCE:g} point of Adam + warmup or better at "
        f"{len(matched)}/{len(lrs)} lrs (mean difference {statistics.fmean(gaps):+.1f} points)"
    )
    if not helped:
        return text + " -> not testable here (warmup does not help Adam on this data)"
    rescued = all(
        grid["radam", lr].mean >= grid["adam-warmup", lr].mean - TOLERANCE for lr in helped
    )
    return text + (
        " -> shows (RAdam does without warmup what warmup does for Adam)"
        if rescued
        else " -> partly (RAdam falls behind Adam + warmup where warmup matters)"
    )


def claim_warmup_shape(beta2: float, horizon: int) -> str:
    """Claim 3 (closed form): r_t is like a linear warmup over ``2 / (1 - beta2)`` steps."""
    length = 2.0 / (1.0 - beta2)
    steps = range(1, 4 * round(length) + 1)
    r = {t: rectification(t, beta2)[1] for t in steps}
    warm = {t: min(1.0, t / length) for t in steps}
    gap = max(abs(r[t] - warm[t]) for t in steps)

    def reach(series: Mapping[int, float], level: float) -> int:
        return next(t for t in steps if series[t] >= level)

    at = ", ".join(
        f"{level:g} at step {reach(r, level)} vs {reach(warm, level)}" for level in (0.5, 0.8)
    )
    return (
        f"Claim 3 (r_t ~ linear warmup), beta2={beta2:g}: r_t reaches {at} for the linear warmup "
        f"of {length:g} steps; largest gap {gap:.2f}; r_t is {rectification(horizon, beta2)[1]:.2f}"
        f" at the run's last step {horizon} -> "
        + ("shows (same ramp, same length scale)" if gap < 0.3 else "only roughly (gap >= 0.3)")
    )


def claim_rectification_vs_warmup(grid: Grid, lrs: Sequence[float]) -> str:
    """Claim 3 (trained): RAdam's accuracy tracks Adam + warmup's over the lr grid."""
    gaps = [abs(grid["radam", lr].mean - grid["adam-warmup", lr].mean) for lr in lrs]
    close = sum(gap <= TOLERANCE for gap in gaps)
    return (
        f"Claim 3 (trained): |RAdam - Adam + warmup| averages {statistics.fmean(gaps):.1f} points "
        f"over the lrs, within {TOLERANCE:g} point at {close}/{len(lrs)} -> "
        + ("shows" if close >= len(lrs) / 2 else "does not show (they behave differently here)")
    )


def claim_ablations(grid: Grid, lrs: Sequence[float]) -> str:
    """The ablations: at the lrs above Adam's best where Adam falls short, do Adam-eps and Adam-2k
    (which only tame the early variance) recover what warmup recovers, as the paper argues?"""
    means = {lr: grid["adam", lr].mean for lr in lrs}
    top = max(means, key=means.__getitem__)
    bad = [lr for lr in lrs if lr > top and means[lr] < means[top] - TOLERANCE]
    if not bad:
        return (
            f"Ablations: Adam stays within {TOLERANCE:g} point of its best above its best lr "
            f"{top:g} -> not testable here (no large-lr failure to explain)"
        )
    gains = {
        recipe: statistics.fmean(grid[recipe, lr].mean - means[lr] for lr in bad)
        for recipe in ("adam-warmup", "adam-eps", "adam-2k", "radam")
        if (recipe, bad[0]) in grid
    }
    text = (
        f"Ablations: above Adam's best lr, where it falls > {TOLERANCE:g} point below its best "
        f"({', '.join(f'{lr:g}' for lr in bad)}), mean gain over Adam in points: "
        + ", ".join(f"{RECIPES[recipe]} {gain:+.1f}" for recipe, gain in gains.items())
    )
    if "adam-warmup" not in gains or gains["adam-warmup"] <= TOLERANCE:
        return text + " -> not testable here (warmup does not rescue Adam either)"
    rescued = [
        RECIPES[r]
        for r in ("adam-eps", "adam-2k")
        if gains.get(r, -math.inf) > 0.5 * gains["adam-warmup"]
    ]
    if len(rescued) == 2:
        return text + " -> shows (both recover most of what warmup recovers)"
    if rescued:
        return text + f" -> partly (only {rescued[0]} recovers most of what warmup recovers)"
    return text + " -> does not show (neither recovers half of what warmup recovers)"


def claim_lookahead(grid: Grid, lrs: Sequence[float], scans: Sequence[LineScan]) -> str:
    """Lookahead (Ranger): lr range and seed spread vs RAdam; where the line scans are lowest."""
    spread = {r: statistics.fmean(grid[r, lr].std for lr in lrs) for r in ("radam", "ranger")}
    text = (
        f"Lookahead: {_width(grid, 'ranger', lrs)} vs {_width(grid, 'radam', lrs)}; mean std over "
        f"seeds {spread['ranger']:.2f} vs {spread['radam']:.2f} points"
    )
    if scans:
        inside = sum(
            0 < min(range(len(s.val_loss)), key=s.val_loss.__getitem__) < len(s.alphas) - 1
            for s in scans
        )
        text += (
            f"; the validation loss on the slow->fast line is lowest strictly between them in "
            f"{inside}/{len(scans)} scans"
        )
    wider = len(near_best(grid, "ranger", lrs, TOLERANCE)) > len(
        near_best(grid, "radam", lrs, TOLERANCE)
    )
    steadier = spread["ranger"] < 0.8 * spread["radam"]  # a clear margin, not seed noise
    verdict = {
        (True, True): "shows (wider and steadier)",
        (True, False): "partly (wider, not steadier)",
        (False, True): "partly (steadier, not wider)",
        (False, False): "does not show",
    }[wider, steadier]
    return f"{text} -> {verdict}"
