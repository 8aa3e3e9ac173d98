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

#: Accuracy points (percent) that count as "as good as the best".
TOLERANCE = 1.0


#: RectificationMonitor's series of the variance over minibatch draws, read by the study.
ONLINE_METRICS = (
    "adaptive_lr_var_ratio",
    "adaptive_lr_var_ratio_gaussian",
    "rectified_var_ratio",
    "adaptive_lr_rel_var",
)


@dataclass(frozen=True)
class OnlineVariance:
    """RectificationMonitor's estimates during training: ``series[recipe, lr][metric]`` is
    ``{step: value}`` for each metric of :data:`ONLINE_METRICS` (medians over the probe's live
    coordinates; a series ends where no probe coordinate has kept a nonzero gradient)."""

    series: Mapping[tuple[str, float], Mapping[str, Mapping[int, float]]]

    def get(self, recipe: str, lr: float, metric: str) -> Mapping[int, float]:
        return self.series.get((recipe, lr), {}).get(metric, {})

    def lrs(self, recipe: str) -> list[float]:
        return sorted(lr for r, lr in self.series if r == recipe)


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


def _at(series: Mapping[int, float], steps: Sequence[int]) -> str:
    return ", ".join(f"{series[t]:.3g} at t={t}" for t in steps if t in series)


def claim_monitored_variance(
    online: OnlineVariance, sampled: SamplingVariance, beta2: float, threshold: float, steps: int
) -> str:
    """Claim 1 during training, from RectificationMonitor's online estimate of the variance over
    minibatch draws: Adam's ``Var[l_t] / Var[l_limit]`` large early and falling, next to the
    fresh-draw measurement at the initial weights and ``1 / r_t^2``; RAdam's rectified ratio
    ``r_t^2`` times it near 1 once it rectifies. ``steps``: optimizer steps per run."""
    at = tuple(t for t in (10, 50, 100) if t <= steps)
    adam_lrs, radam_lrs = online.lrs("adam"), online.lrs("radam")
    if not adam_lrs or not radam_lrs:
        return "Claim 1b (RectificationMonitor): not measured (no monitored Adam and RAdam runs)"
    fresh = {t: sampled.adam[t - 1] for t in at if t <= len(sampled.adam)}
    gaussian = {t: 1.0 / rectification(t, beta2)[1] ** 2 for t in at}
    parts, shown = [], False
    for lr in adam_lrs:
        ratio = online.get("adam", lr, "adaptive_lr_var_ratio")
        last = max(ratio, default=0)
        text = f"lr {lr:g}: Adam's Var_draws[l_t]/Var[l_limit] is {_at(ratio, (2, *at))}"
        if last < steps:
            text += (
                f", then {ratio[last]:.3g} at t={last}, where the estimate stops: no probe "
                "coordinate kept a nonzero gradient at every step (the run dies)"
                if last
                else ": not estimated"
            )
        elif ratio.get(10, 0.0) > 5 and ratio.get(100, math.inf) < 2:
            shown = True
        parts.append(text)
    parts.append(
        f"fresh draws at the initial weights: {_at(fresh, at)}; 1/r_t^2: {_at(gaussian, at)}"
    )
    rectified_ok = False
    for lr in radam_lrs:
        rectified = online.get("radam", lr, "rectified_var_ratio")
        on = sorted(v for t, v in rectified.items() if rectification(t, beta2)[0] > threshold)
        if not on:
            continue
        median = statistics.median(on)
        rectified_ok |= 0.5 < median < 2.0
        ratio = online.get("radam", lr, "adaptive_lr_var_ratio")
        drift = ", ".join(
            f"{ratio[t] / fresh[t]:.2g}x at t={t}" for t in at if t in ratio and t in fresh
        )
        parts.append(
            f"lr {lr:g}: RAdam's r_t^2 Var_draws[l_t]/Var[l_limit] has median {median:.2f} "
            f"(range {on[0]:.2f}-{on[-1]:.2f}) over its rectified steps; its Var ratio is {drift} "
            "the fresh-draw value at the initial weights"
        )
    verdict = (
        "shows (large early variance over the draws, falling to its limit; RAdam's rectified "
        "ratio near 1)"
        if shown and rectified_ok
        else "does not show as stated"
    )
    return (
        "Claim 1b (RectificationMonitor, online, during training): "
        + "; ".join(parts)
        + (f" -> {verdict}")
    )


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
