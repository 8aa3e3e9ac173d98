"""The studies' figures (matplotlib, Agg backend), each written to a small PNG."""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from _study.claims import OnlineVariance
from _study.lookahead_line import LineScan
from _study.recipes import MAIN, RECIPES
from _study.sampling_variance import SamplingVariance
from _study.summary import Grid
from lightning_ranger import rectification

#: One color per recipe, the same in every figure.
COLORS = {
    "adam": "tab:red",
    "adam-warmup": "tab:orange",
    "radam": "tab:blue",
    "ranger": "tab:green",
    "adam-eps": "tab:purple",
    "adam-2k": "tab:brown",
    "sgd": "tab:gray",
}
DPI = 80


def save(fig: Figure, path: Path) -> Path:
    """Write ``fig`` as a PNG at a small resolution and close it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def accuracy_vs_lr(grid: Grid, lrs: Sequence[float], title: str, path: Path) -> Path:
    """Test accuracy (mean, error bar one std over seeds) vs lr: the main optimizers on the left,
    Adam with the ablations and SGD on the right; the bottom row zooms on 90-100%."""
    panels = [
        ("Adam, warmup, RAdam, Ranger", [r for r in MAIN if (r, lrs[0]) in grid]),
        (
            "Adam, ablations and SGD",
            [r for r in RECIPES if r not in MAIN[1:] and (r, lrs[0]) in grid],
        ),
    ]
    panels = [(name, recipes) for name, recipes in panels if recipes]
    fig, axes = plt.subplots(2, len(panels), figsize=(6 * len(panels), 7), squeeze=False)
    for column, (name, recipes) in enumerate(panels):
        for row, ax in enumerate(axes[:, column]):
            for i, recipe in enumerate(recipes):
                cells = [grid[recipe, lr] for lr in lrs]
                shift = 1.0 + 0.03 * (i - (len(recipes) - 1) / 2)  # keep error bars apart
                ax.errorbar(
                    [lr * shift for lr in lrs],
                    [c.mean for c in cells],
                    yerr=[c.std for c in cells],
                    marker="o",
                    capsize=3,
                    color=COLORS[recipe],
                    label=RECIPES[recipe],
                )
            ax.set(xscale="log", xlabel="learning rate", ylabel="test accuracy (%)")
            ax.grid(alpha=0.3)
            if row == 0:
                ax.axhline(10, color="black", lw=0.8, ls=":", label="chance (10%)")
                ax.set(ylim=(0, 100), title=name)
                ax.legend(fontsize=8, loc="best")
            else:
                ax.set(ylim=(90, 100), title="zoom: 90-100%")
    fig.suptitle(title, fontsize=11)
    return save(fig, path)


def rectification_vs_warmup(beta2s: Sequence[float], threshold: float, path: Path) -> Path:
    """Closed forms: ``r_t`` as RAdam applies it (0 until ``rho_t`` passes ``threshold``) next to
    the linear warmup of ``2 / (1 - beta2)`` steps, on a step axis in units of that length; and
    ``rho_t`` next to the threshold, for each ``beta2``."""
    fig, (ax_r, ax_rho) = plt.subplots(1, 2, figsize=(11, 4))
    for beta2, color in zip(beta2s, ("tab:blue", "tab:orange", "tab:green"), strict=False):
        length = 2.0 / (1.0 - beta2)
        steps = list(range(1, round(3 * length) + 1))
        rho, r = zip(*(rectification(t, beta2) for t in steps), strict=True)
        applied = [r_t if rho_t > threshold else 0.0 for rho_t, r_t in zip(rho, r, strict=True)]
        label = f"beta2={beta2:g} (2/(1-beta2) = {length:g} steps)"
        ax_r.plot([t / length for t in steps], applied, color=color, label=f"r_t, {label}")
        ax_rho.plot(steps, rho, color=color, label=f"rho_t, beta2={beta2:g}")
        ax_rho.axhline(length - 1.0, color=color, lw=0.8, ls=":")
    ax_r.plot([0, 1, 3], [0, 1, 1], "--", color="black", label="linear warmup over 2/(1-beta2)")
    ax_rho.axhline(threshold, color="black", ls="--", label=f"threshold {threshold:g}")
    ax_r.set(xlabel="optimizer step t / (2 / (1 - beta2))", ylabel="factor of lr", ylim=(0, 1.05))
    ax_r.set_title("r_t (as RAdam applies it) vs linear warmup")
    ax_rho.set(xlabel="optimizer step t", ylabel="rho_t", xscale="log", yscale="log")
    ax_rho.set_title("rho_t (dotted: rho_inf) and the rectify threshold")
    for ax in (ax_r, ax_rho):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return save(fig, path)


def adaptive_lr_variance(
    online: OnlineVariance, sampled: SamplingVariance, beta2: float, steps: int, path: Path
) -> Path:
    """Three panels over the optimizer steps: Adam's ``Var_draws[l_t] / Var[l_limit]`` as
    RectificationMonitor estimated it during training (one line style per lr), the fresh-draw
    measurement at the initial weights (:mod:`_study.sampling_variance`) and ``1 / r_t^2``;
    RAdam's rectified ratio ``r_t^2`` times it, online and fresh; the relative variance
    ``Var_draws[l_t] / E_draws[l_t]^2`` online."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    styles = ["-", "--", "-.", ":"]
    t_fresh = range(1, len(sampled.adam) + 1)
    gaussian = [
        (t, 1.0 / rectification(t, beta2)[1] ** 2)
        for t in range(1, steps + 1)
        if rectification(t, beta2)[0] > 4
    ]
    panels = [
        ("adam", "adaptive_lr_var_ratio", sampled.adam, "Adam: Var_draws[l_t] / Var[l_limit]"),
        (
            "radam",
            "rectified_var_ratio",
            sampled.radam,
            "RAdam: r_t^2 Var_draws[l_t] / Var[l_limit]",
        ),
    ]
    for ax, (recipe, metric, fresh, title) in zip(axes, panels, strict=False):
        for style, lr in zip(styles, online.lrs(recipe), strict=False):
            points = sorted((t, v) for t, v in online.get(recipe, lr, metric).items() if v > 0)
            if points:
                ax.plot(
                    *zip(*points, strict=True),
                    color=COLORS[recipe],
                    ls=style,
                    label=f"online, training at lr {lr:g}",
                )
        points = [(t, v) for t, v in zip(t_fresh, fresh, strict=True) if v > 0 and t <= steps]
        ax.plot(
            *zip(*points, strict=True),
            color="black",
            lw=1.0,
            label=f"fresh draws, initial weights ({sampled.replicas})",
        )
        if recipe == "adam":
            ax.plot(*zip(*gaussian, strict=True), color="gray", ls=":", label="1 / r_t^2")
        else:
            ax.axhline(1.0, color="gray", ls=":", label="1 (exact rectification)")
        ax.set(xlabel="optimizer step t", title=title, xscale="log", yscale="log")
    ax = axes[2]
    for recipe in ("adam", "radam"):
        for style, lr in zip(styles, online.lrs(recipe), strict=False):
            points = sorted(online.get(recipe, lr, "adaptive_lr_rel_var").items())
            if points:
                ax.plot(
                    *zip(*points, strict=True),
                    color=COLORS[recipe],
                    ls=style,
                    label=f"{RECIPES[recipe]}, lr {lr:g}",
                )
    ax.set(
        xlabel="optimizer step t",
        title="Var_draws[l_t] / E_draws[l_t]^2 (online)",
        xscale="log",
        yscale="log",
    )
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(
        "Variance of Adam's adaptive lr over the draw of the minibatches (RectificationMonitor, "
        "median over the probe's live coordinates)",
        fontsize=10,
    )
    return save(fig, path)


def training_curves(
    curves: Mapping[str, Sequence[tuple[Sequence[float], Sequence[float]]]],
    lr: float,
    path: Path,
) -> Path:
    """Per epoch: training loss and validation accuracy, one color per recipe, a thin line per
    seed and a thick one for the mean over seeds.

    Args:
        curves: ``{recipe: [(train_loss per epoch, val_acc per epoch) for each seed]}``.

    """
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    for recipe, runs in curves.items():
        color = COLORS[recipe]
        for panel, (ax, scale) in enumerate(((ax_loss, 1.0), (ax_acc, 100.0))):
            seeds = [[scale * v for v in run[panel]] for run in runs]
            for values in seeds:
                ax.plot(range(1, len(values) + 1), values, color=color, lw=0.6, alpha=0.35)
            mean = [statistics.fmean(v) for v in zip(*seeds, strict=True)]
            ax.plot(range(1, len(mean) + 1), mean, color=color, lw=2, label=RECIPES[recipe])
    ax_loss.set(xlabel="epoch", ylabel="training loss (mean over the epoch)", yscale="log")
    ax_acc.set(xlabel="epoch", ylabel="validation accuracy (%)", ylim=(0, 100))
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
    ax_acc.legend(fontsize=8, loc="lower right")
    fig.suptitle(
        f"Training curves at lr {lr:g}: thin = one seed, thick = mean (Ranger: slow weights)",
        fontsize=11,
    )
    return save(fig, path)


def lookahead_line(scans: Sequence[LineScan], lr: float, alpha: float, path: Path) -> Path:
    """One panel per scan: validation loss (left axis) and accuracy (right axis) on
    ``slow + a (fast - slow)`` just before a sync; the dotted line is where the sync puts the
    new slow weights (``a = alpha``)."""
    fig, axes = plt.subplots(1, len(scans), figsize=(3.6 * len(scans), 3.6), squeeze=False)
    for ax, scan in zip(axes[0], scans, strict=True):
        best = min(range(len(scan.alphas)), key=scan.val_loss.__getitem__)
        ax.plot(scan.alphas, scan.val_loss, marker=".", color="tab:blue", label="loss")
        ax.plot(scan.alphas[best], scan.val_loss[best], "*", ms=12, color="tab:blue")
        ax.axvline(alpha, color="black", ls=":", lw=0.8)
        ax.set(xlabel="a (0: slow, 1: fast)", title=f"sync {scan.sync} (step {scan.step})")
        ax.grid(alpha=0.3)
        twin = ax.twinx()
        acc = [100 * a for a in scan.val_acc]
        twin.plot(scan.alphas, acc, "--", marker=".", color="tab:green", label="accuracy")
        twin.tick_params(axis="y", colors="tab:green")
        ax.tick_params(axis="y", colors="tab:blue")
    axes[0, 0].set_ylabel("validation loss (star: lowest)", color="tab:blue")
    twin.set_ylabel("validation accuracy (%)", color="tab:green")
    fig.suptitle(
        f"Ranger at lr {lr:g}: validation on the line from slow to fast weights after k steps, "
        f"before the sync (dotted: new slow weights, alpha={alpha:g})",
        fontsize=10,
    )
    return save(fig, path)
