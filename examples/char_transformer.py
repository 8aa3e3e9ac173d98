"""RAdam's no-warmup claim on a Transformer: a character-level language model on the Python
standard library's own source files (they ship with every Python, no download).

The RAdam paper's motivating failure is a Transformer trained with Adam and no warmup. This script
trains a small post-LayerNorm Transformer (the original layout, the one that needs warmup) to
predict the next byte of the stdlib's ``.py`` files, with Adam without warmup, Adam with a linear
warmup of ``2 / (1 - beta2)`` steps, RAdam and Ranger (RAdam + Lookahead, validated on the slow
weights), at a large learning rate; every run sees the same batches. It prints a table of the
final validation loss and bits per character (byte) and writes ``OUT/loss_curves.png``,
``OUT/summary.md`` and ``OUT/results.json``.

Run::

    python examples/char_transformer.py                  # 8 runs, ~8 min on 2 CPU cores
    python examples/char_transformer.py --lrs 1e-3 3e-3 --steps 2000 --seeds 2
    python examples/char_transformer.py --quick          # a few steps, for tests
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import sysconfig
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import lightning as L
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from _study.figures import COLORS, save
from _study.history import ValidationHistory
from _study.recipes import MAIN, RECIPES, RecipeOptimizers, ranger_config, study_parser
from _study.runner import run_all
from _study.summary import aggregate, markdown_table
from lightning.pytorch import LightningModule
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from lightning_ranger import RangerConfig, RangerMixin


@dataclass(frozen=True)
class Preset:
    """Data size, model size and run length."""

    chars: int
    steps: int
    d_model: int
    layers: int
    context: int
    batch_size: int
    val_every: int


FULL = Preset(
    chars=2_000_000, steps=1500, d_model=64, layers=2, context=64, batch_size=16, val_every=100
)
QUICK = Preset(
    chars=200_000, steps=30, d_model=32, layers=1, context=32, batch_size=8, val_every=10
)
VOCAB = 256  # bytes
VAL_WINDOWS = 64


def stdlib_text(limit: int) -> bytes:
    """The first ``limit`` bytes of the standard library's top-level ``.py`` files, in name
    order (the same text for a given Python version)."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    text = bytearray()
    for path in sorted(stdlib.glob("*.py")):
        text += path.read_bytes()
        if len(text) >= limit:
            break
    return bytes(text[:limit])


class Windows(Dataset[tuple[Tensor, Tensor]]):
    """``(x, y)`` byte windows of ``context`` at the given start offsets, ``y`` shifted by one."""

    def __init__(self, data: Tensor, starts: Tensor, context: int) -> None:
        self.data, self.starts, self.context = data, starts, context

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        start = int(self.starts[i])
        chunk = self.data[start : start + self.context + 1]
        return chunk[:-1], chunk[1:]


class CharTransformer(RecipeOptimizers, RangerMixin, LightningModule):
    """A causal post-LayerNorm Transformer over bytes, optimized as its ``ranger`` config says.

    Args:
        ranger: the optimizer configuration.
        recipe: a name of :data:`_study.recipes.RECIPES`.
        d_model: width; 4 heads, feed-forward ``4 * d_model``.
        layers: Transformer layers.
        context: sequence length.
        freeze_steps: Adam-2k's ``v_t``-only steps (unused by the other recipes).

    """

    def __init__(
        self,
        ranger: RangerConfig,
        recipe: str,
        d_model: int,
        layers: int,
        context: int,
        freeze_steps: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.embed = nn.Embedding(VOCAB, d_model)
        self.position = nn.Parameter(torch.randn(context, d_model) * 0.02)
        layer = nn.TransformerEncoderLayer(
            d_model, nhead=4, dim_feedforward=4 * d_model, dropout=0.0, batch_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d_model, VOCAB)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(context))

    def forward(self, x: Tensor) -> Tensor:
        h = self.embed(x) + self.position[: x.shape[1]]
        return self.head(self.encoder(h, mask=self.mask, is_causal=True))

    def _loss(self, batch: tuple[Tensor, Tensor]) -> Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self(x).reshape(-1, VOCAB), y.reshape(-1))

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        loss = self._loss(batch)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self.log("val_loss", self._loss(batch))


@dataclass(frozen=True)
class CharRun:
    """One run: the recipe, lr and seed, and the preset's sizes."""

    recipe: str
    lr: float
    seed: int
    preset: Preset
    beta2: float
    warmup_steps: int


@dataclass
class CharResult:
    """A run's validation loss along training (nats per byte) and its final value."""

    run: CharRun
    steps: list[int]
    val_loss: list[float]
    train_loss: list[float]
    seconds: float

    @property
    def final(self) -> float:
        return self.val_loss[-1] if self.val_loss else math.nan


def train_char(run: CharRun) -> CharResult:
    """Train one run; the batches depend on ``seed`` only, not on the recipe."""
    start = time.perf_counter()
    p = run.preset
    data = torch.frombuffer(bytearray(stdlib_text(p.chars)), dtype=torch.uint8).long()
    split = int(0.9 * len(data))
    train, val = data[:split], data[split:]
    generator = torch.Generator().manual_seed(run.seed)
    train_starts = torch.randint(
        len(train) - p.context - 1, (p.steps * p.batch_size,), generator=generator
    )
    stride = (len(val) - p.context - 1) // VAL_WINDOWS
    val_starts = torch.arange(VAL_WINDOWS) * stride
    L.seed_everything(run.seed, verbose=False)
    model = CharTransformer(
        ranger_config(run.recipe, run.lr, run.beta2, run.warmup_steps),
        run.recipe,
        p.d_model,
        p.layers,
        p.context,
    )
    history = ValidationHistory(("val_loss",))
    trainer = L.Trainer(
        max_steps=p.steps,
        accelerator="cpu",
        devices=1,
        logger=False,
        callbacks=[history],
        val_check_interval=p.val_every,
        num_sanity_val_steps=0,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=False,
    )
    trainer.fit(
        model,
        DataLoader(Windows(train, train_starts, p.context), batch_size=p.batch_size),
        DataLoader(Windows(val, val_starts, p.context), batch_size=VAL_WINDOWS),
    )
    return CharResult(
        run=run,
        steps=history.steps,
        val_loss=history.metrics["val_loss"],
        train_loss=history.train_loss,
        seconds=time.perf_counter() - start,
    )


def plot(results: list[CharResult], path: Path) -> Path:
    """Validation loss (bits per byte) along training, one line per run."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    styles = ["-", "--", ":", "-."]
    lrs = sorted({r.run.lr for r in results})
    for r in results:
        ax.plot(
            r.steps,
            [v / math.log(2) for v in r.val_loss],
            styles[lrs.index(r.run.lr) % len(styles)],
            color=COLORS[r.run.recipe],
            label=f"{RECIPES[r.run.recipe]}, lr {r.run.lr:g}"
            + (f", seed {r.run.seed}" if r.run.seed else ""),
        )
    ax.axhline(8.0, color="black", lw=0.8, ls=":", label="uniform over bytes (8 bits)")
    ax.set(xlabel="optimizer step", ylabel="validation bits per byte", yscale="log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title("Char-level Transformer (post-LN) on the Python stdlib sources", fontsize=10)
    return save(fig, path)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = study_parser(__doc__, MAIN)
    parser.add_argument("--lrs", type=float, nargs="+", default=[3e-3, 3e-2])
    parser.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1 per cell")
    parser.add_argument("--steps", type=int, help=f"optimizer steps (default {FULL.steps})")
    parser.add_argument("--beta2", type=float, default=0.98)
    parser.add_argument("--quick", action="store_true", help=f"tiny model and run: {QUICK}")
    parser.add_argument("--out", type=Path, default=Path("outputs/char_transformer"))
    parser.add_argument(
        "--workers", type=int, default=min(2, os.cpu_count() or 1), help="parallel processes"
    )
    args = parser.parse_args(argv)
    args.lrs = sorted(args.lrs)
    preset = QUICK if args.quick else FULL
    if args.steps is not None:
        if args.steps < 1:
            parser.error(f"--steps must be >= 1, got {args.steps}")
        preset = Preset(**{**asdict(preset), "steps": args.steps})
    args.preset = preset
    if args.seeds < 1 or args.workers < 1:
        parser.error("--seeds and --workers must be >= 1")
    if not 0.0 < args.beta2 < 1.0:
        parser.error(f"--beta2 must be in (0, 1), got {args.beta2}")
    return args


def main(argv: list[str] | None = None) -> None:
    """Train every run, print the table and write the figure."""
    start = time.perf_counter()
    args = parse_args(argv)
    p = args.preset
    warmup = min(p.steps, round(2.0 / (1.0 - args.beta2)))
    runs = [
        CharRun(recipe, lr, seed, p, args.beta2, warmup)
        for recipe in args.optimizers
        for lr in args.lrs
        for seed in range(args.seeds)
    ]
    print(
        f"char Transformer: {len(runs)} runs of {p.steps} steps (batch {p.batch_size} x "
        f"{p.context} bytes, d_model {p.d_model}, {p.layers} layers, {p.chars:,} bytes of stdlib "
        f"source), beta2={args.beta2:g}, warmup {warmup} steps; {args.workers} worker(s)",
        flush=True,
    )
    results = run_all(train_char, runs, args.workers, lambda run: f"{run.recipe}/lr={run.lr:g}")
    args.out.mkdir(parents=True, exist_ok=True)
    losses = aggregate((r.run.recipe, r.run.lr, r.final) for r in results)
    bits = aggregate((r.run.recipe, r.run.lr, r.final / math.log(2)) for r in results)
    report = (
        f"Final validation loss (nats per byte), mean ± std over {args.seeds} seed(s):\n\n"
        + markdown_table(losses, args.optimizers, args.lrs, RECIPES, 3, lower_is_better=True)
        + "\n\nBits per character (byte):\n\n"
        + markdown_table(bits, args.optimizers, args.lrs, RECIPES, 3, lower_is_better=True)
        + f"\n\nWall time: {time.perf_counter() - start:.0f} s ({len(runs)} runs)\n"
    )
    figure = plot(results, args.out / "loss_curves.png")
    (args.out / "summary.md").write_text(report)
    (args.out / "results.json").write_text(
        json.dumps([asdict(r) | {"final_val_loss": r.final} for r in results], indent=1)
    )
    print("\n" + report + f"\nFigure: {figure}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
