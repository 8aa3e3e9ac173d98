"""Reproduce RAdam's claims on scikit-learn's bundled 8x8 digits: the main job of ``make demo``.

Liu et al. (ICLR 2020) claim that (1) Adam's adaptive learning rate has a large variance in the
first steps, which warmup or RAdam's rectification removes; (2) RAdam needs no warmup and is far
less sensitive to the learning rate than Adam; (3) the rectification term ``r_t`` behaves like a
linear warmup. Ranger adds Lookahead for stability. This script tests each claim on real data that
ships with scikit-learn (1,797 scanned digits, no download), with
:class:`lightning_ranger.demos.DigitsClassifier` (a small CNN) and
:class:`lightning_ranger.demos.DigitsDataModule`:

- a learning-rate sweep of Adam, Adam with a linear warmup of ``2 / (1 - beta2)`` steps, RAdam and
  Ranger (RAdam + Lookahead, evaluated on the slow weights), plus the paper's ablations Adam-eps
  (eps 1e-4) and Adam-2k (only ``v_t`` is updated for the first 10% of the steps, a fraction of a
  run here, where the paper used 2000 iterations), and SGD with momentum as the non-adaptive
  reference; every run is seeded and runs on one thread, so its results do not depend on
  ``--workers``;
- a table of the test accuracy (mean ± sample std over seeds) and a one-line verdict per claim,
  computed from the numbers; claim 1 is measured twice, both as the paper means it (the variance
  of ``l_t`` over random draws of the minibatches): online by ``RectificationMonitor`` during
  training, and with fresh draws at the initial weights;
- PNGs: accuracy vs lr, ``r_t`` vs the linear warmup (closed forms), the adaptive-lr variance,
  training curves at one lr, and the validation accuracy on the line from Lookahead's slow to
  fast weights before a sync;
- TensorBoard logs: the runs that ``RectificationMonitor`` watches, in a folder of their own,
  ``OUT/rectification`` (at the detail lr, seed 0 of every adaptive optimizer, monitored at every
  step with the ``rectification/adaptive_lr`` histograms, and Adam and RAdam at ``--monitor-lr``,
  0.01, Adam's best lr here), so that TensorBoard opens straight onto their charts; every other
  run under ``OUT/tensorboard``.

``beta2`` defaults to 0.98 (Adam's default is 0.999): a run is 184 optimizer steps, and warmup
and rectification act over about ``2 / (1 - beta2)`` steps, 100 here, 2000 at 0.999.

Run::

    python examples/digits.py                 # the full study: 147 runs, ~4 min on 2 CPU cores
    python examples/digits.py --quick         # a tiny grid, for tests
    python examples/digits.py --optimizers adam radam --lrs 1e-3 1e-2 --seeds 2 --epochs 5
    tensorboard --logdir outputs/digits/rectification   # the monitored runs
    tensorboard --logdir outputs/digits/tensorboard      # every other run
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from _study import claims, figures
from _study.digits_runs import DigitsResult, DigitsRun, initial_gradients, train_digits
from _study.events import load_events, scalar_series
from _study.recipes import RECIPES, adaptive, study_parser
from _study.runner import run_all
from _study.sampling_variance import SamplingVariance, sampling_variance
from _study.summary import Grid, aggregate, markdown_table

from lightning_ranger import RangerConfig
from lightning_ranger.demos import DigitsDataModule


@dataclass(frozen=True)
class Preset:
    """A grid: learning rates, number of seeds, epochs."""

    lrs: tuple[float, ...]
    seeds: int
    epochs: int


FULL = Preset(lrs=(1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1), seeds=3, epochs=8)
QUICK = Preset(lrs=(1e-3, 3e-2), seeds=1, epochs=1)


@dataclass(frozen=True)
class Variances:
    """The evidence on claim 1: RectificationMonitor's online estimates from training, and the
    variance over fresh minibatch draws at the initial weights."""

    online: claims.OnlineVariance
    sampled: SamplingVariance


#: Share of a run's optimizer steps that Adam-2k spends updating v_t only.
FREEZE_FRACTION = 0.1
#: Lookahead scans, as fractions of the run's syncs.
SCAN_AT = (0.1, 1 / 3, 2 / 3, 1.0)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; grid options left out take the full (or ``--quick``) preset's value."""
    parser = study_parser(__doc__, RECIPES)
    parser.add_argument("--lrs", type=float, nargs="+", help=f"learning rates (full: {FULL.lrs})")
    parser.add_argument("--seeds", type=int, help=f"seeds 0..N-1 per cell (full: {FULL.seeds})")
    parser.add_argument("--epochs", type=int, help=f"epochs per run (full: {FULL.epochs})")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--beta2", type=float, default=0.98, help="Adam's and RAdam's beta2")
    parser.add_argument(
        "--detail-lr",
        type=float,
        default=1e-1,
        help="lr of the training curves, the monitored runs and the Lookahead scans "
        "(the grid's middle lr if it is not in the grid)",
    )
    parser.add_argument(
        "--monitor-lr",
        type=float,
        default=1e-2,
        help="a second lr at which seed 0 of Adam and RAdam is monitored (if in the grid)",
    )
    parser.add_argument("--quick", action="store_true", help=f"tiny grid: {QUICK}")
    parser.add_argument("--out", type=Path, default=Path("outputs/digits"))
    parser.add_argument(
        "--workers", type=int, default=min(2, os.cpu_count() or 1), help="parallel processes"
    )
    args = parser.parse_args(argv)
    preset = QUICK if args.quick else FULL
    args.lrs = sorted(args.lrs or preset.lrs)
    args.seeds = preset.seeds if args.seeds is None else args.seeds
    args.epochs = preset.epochs if args.epochs is None else args.epochs
    if args.detail_lr not in args.lrs:
        args.detail_lr = args.lrs[len(args.lrs) // 2]
    for name in ("seeds", "epochs", "batch_size", "workers"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not 0.0 < args.beta2 < 1.0:
        parser.error(f"--beta2 must be in (0, 1), got {args.beta2}")
    return args


def plan(args: argparse.Namespace) -> tuple[list[DigitsRun], dict[str, int]]:
    """The runs of the grid (monitored and scanned ones first, they take longest) and its step
    counts: steps per run, warmup, freeze and Lookahead's ``k``."""
    data = DigitsDataModule(batch_size=args.batch_size)
    data.setup("fit")
    total = args.epochs * math.ceil(len(data.train_set) / args.batch_size)
    k = RangerConfig().k
    counts = {
        "steps": total,
        "warmup": min(total, round(2.0 / (1.0 - args.beta2))),
        "freeze": max(1, round(FREEZE_FRACTION * total)),
        "k": k,
    }
    syncs = total // k
    scans = tuple(sorted({max(1, round(f * syncs)) for f in SCAN_AT})) if syncs else ()
    runs = []
    for recipe in args.optimizers:
        for lr in args.lrs:
            for seed in range(args.seeds):
                detail = lr == args.detail_lr and seed == 0
                second = lr == args.monitor_lr and seed == 0 and recipe in ("adam", "radam")
                monitored = (detail and adaptive(recipe)) or second
                runs.append(
                    DigitsRun(
                        recipe=recipe,
                        lr=lr,
                        seed=seed,
                        epochs=args.epochs,
                        batch_size=args.batch_size,
                        beta2=args.beta2,
                        warmup_steps=counts["warmup"],
                        freeze_steps=counts["freeze"],
                        log_dir=str(args.out / ("rectification" if monitored else "tensorboard")),
                        monitor_interval=1 if monitored else None,
                        line_syncs=scans if detail and recipe == "ranger" else (),
                    )
                )
    runs.sort(key=lambda run: run.monitor_interval is None and not run.line_syncs)
    return runs, counts


def measure_variances(args: argparse.Namespace, runs: list[DigitsRun], warmup: int) -> Variances:
    """From the monitored runs' events: RectificationMonitor's estimates of the variance over
    minibatch draws; and that variance measured with fresh draws at the initial weights, over
    ``3 * 2 / (1 - beta2)`` steps (at most 1000)."""
    series = {}
    for run in runs:
        if run.monitor_interval is None:
            continue
        events = load_events(Path(run.log_dir) / run.name)
        series[run.recipe, run.lr] = {
            metric: scalar_series(events, f"rectification/{metric}")
            for metric in claims.ONLINE_METRICS
        }
    defaults = RangerConfig()
    steps = min(1000, 3 * round(2.0 / (1.0 - args.beta2)))
    grads = initial_gradients(args.batch_size, pool=128)
    sampled = sampling_variance(
        grads, args.beta2, steps, min(warmup, steps), defaults.rectify_threshold
    )
    return Variances(claims.OnlineVariance(series), sampled)


def verdicts(
    args: argparse.Namespace,
    grid: Grid,
    results: list[DigitsResult],
    variances: Variances,
    steps: int,
) -> list[str]:
    """The one-line verdicts whose optimizers are in the grid."""
    has = set(args.optimizers).issuperset
    lines = [claims.claim_sampling_variance(variances.sampled)]
    if has({"adam"}):
        lines.append(
            claims.claim_monitored_variance(
                variances.online,
                variances.sampled,
                args.beta2,
                RangerConfig().rectify_threshold,
                steps,
            )
        )
    if has({"adam", "radam"}):
        lines.append(claims.claim_robustness(grid, args.lrs))
    if has({"adam", "adam-warmup", "radam"}):
        lines.append(claims.claim_no_warmup(grid, args.lrs))
    lines.append(claims.claim_warmup_shape(args.beta2, steps))
    if has({"adam-warmup", "radam"}):
        lines.append(claims.claim_rectification_vs_warmup(grid, args.lrs))
    if has({"adam"}):
        lines.append(claims.claim_ablations(grid, args.lrs))
    if has({"radam", "ranger"}):
        scans = [s for r in results for s in r.line_scans]
        lines.append(claims.claim_lookahead(grid, args.lrs, scans))
    return lines


def draw(
    args: argparse.Namespace,
    grid: Grid,
    results: list[DigitsResult],
    variances: Variances,
    steps: int,
) -> list[Path]:
    """Every figure of the study, under ``args.out``."""
    defaults = RangerConfig()
    title = (
        f"8x8 digits, small CNN: test accuracy vs learning rate ({args.seeds} seeds, "
        f"{args.epochs} epochs = {steps} steps)"
    )
    paths = [
        figures.accuracy_vs_lr(grid, args.lrs, title, args.out / "accuracy_vs_lr.png"),
        figures.rectification_vs_warmup(
            sorted({args.beta2, 0.999}),
            defaults.rectify_threshold,
            args.out / "rectification_vs_warmup.png",
        ),
        figures.adaptive_lr_variance(
            variances.online,
            variances.sampled,
            args.beta2,
            steps,
            args.out / "adaptive_lr_variance.png",
        ),
    ]
    curves = {
        recipe: [
            (r.train_loss, r.val_acc)
            for r in results
            if r.run.recipe == recipe and r.run.lr == args.detail_lr
        ]
        for recipe in args.optimizers
    }
    paths.append(figures.training_curves(curves, args.detail_lr, args.out / "training_curves.png"))
    scans = [s for r in results for s in r.line_scans]
    if scans:
        paths.append(
            figures.lookahead_line(
                scans, args.detail_lr, defaults.alpha, args.out / "lookahead_line.png"
            )
        )
    return paths


def main(argv: list[str] | None = None) -> None:
    """Run the study, print the table and the verdicts, and write the figures and logs."""
    start = time.perf_counter()
    args = parse_args(argv)
    runs, counts = plan(args)
    for logs in ("rectification", "tensorboard"):  # a fixed version per run
        shutil.rmtree(args.out / logs, ignore_errors=True)
    args.out.mkdir(parents=True, exist_ok=True)
    print(
        f"digits study: {len(args.optimizers)} optimizers x {len(args.lrs)} lrs x {args.seeds} "
        f"seeds = {len(runs)} runs of {args.epochs} epochs ({counts['steps']} optimizer steps, "
        f"batch {args.batch_size}), beta2={args.beta2:g}, warmup {counts['warmup']} steps, "
        f"Adam-2k freeze {counts['freeze']} steps, Lookahead k={counts['k']}; "
        f"{args.workers} worker(s)",
        flush=True,
    )
    results = run_all(train_digits, runs, args.workers, lambda run: run.name)
    results.sort(key=lambda r: (args.optimizers.index(r.run.recipe), r.run.lr, r.run.seed))
    grid = aggregate((r.run.recipe, r.run.lr, 100 * r.test_acc) for r in results)
    table = markdown_table(grid, args.optimizers, args.lrs, RECIPES)
    variances = measure_variances(args, runs, counts["warmup"])
    lines = verdicts(args, grid, results, variances, counts["steps"])
    paths = draw(args, grid, results, variances, counts["steps"])
    wall = time.perf_counter() - start
    report = (
        f"Test accuracy (%, macro average over the 10 classes), mean ± std over {args.seeds} "
        f"seed(s):\n\n{table}\n\n"
        + "\n".join(f"- {line}" for line in lines)
        + f"\n\nWall time: {wall:.0f} s ({len(runs)} runs, {args.workers} worker(s))\n"
    )
    (args.out / "summary.md").write_text(report)
    config = {k: v for k, v in vars(args).items() if k != "out"} | counts
    (args.out / "results.json").write_text(
        json.dumps({"config": config, "runs": [asdict(r) for r in results]}, indent=1)
    )
    print("\n" + report)
    print("Figures: " + ", ".join(str(p) for p in paths))
    print(f"TensorBoard, every other run: tensorboard --logdir {args.out / 'tensorboard'}")
    print(
        "TensorBoard, the runs RectificationMonitor watches (tab Custom Scalars): "
        f"tensorboard --logdir {args.out / 'rectification'}"
    )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
