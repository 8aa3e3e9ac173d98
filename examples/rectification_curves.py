"""Plot what RectificationMonitor logs during a real run: docs/rectification_curves.png.

Trains a small MLP on scikit-learn's bundled 8x8 digits (no download) with
:class:`lightning_ranger.RAdam` and two param groups, ``hidden`` (beta2 = 0.999, the default) and
``output`` (beta2 = 0.99), with ``RectificationMonitor`` logging to TensorBoard. Then it reads the
event files back with tensorboard's ``EventAccumulator`` and draws, per group:

- ``rho_t`` and the ``rectify_threshold`` it has to pass before RAdam rectifies;
- ``r_t`` and the linear warmup ``min(1, t / (2 / (1 - beta2)))`` the paper compares it to;
- the variance of the adaptive learning rate ``l_t = sqrt(1 - beta2^t) / (sqrt(v_t) + eps)`` over
  the draw of the minibatches against its limit, next to ``1 / r_t^2`` and to RAdam's rectified
  ratio ``r_t^2`` times it;
- the quantiles p05, p50, p95 of ``l_t`` over the weights.

The same logs open in TensorBoard (scalars, the *Custom Scalars* layout, histograms)::

    tensorboard --logdir lightning_logs/rectification_curves

Run::

    python examples/rectification_curves.py [--steps 2000] [--out docs/rectification_curves.png]

One to two minutes on 2 CPU cores (2000 steps, every 5th logged).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import lightning as L
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from sklearn.datasets import load_digits
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_ranger import RAdam
from lightning_ranger.callbacks.rectification_monitor import RectificationMonitor

GROUPS = {"hidden": 0.999, "output": 0.99}
COLORS = {"hidden": "tab:blue", "output": "tab:orange"}


class DigitsMLP(L.LightningModule):
    """``61 -> 128 -> 10`` MLP; one RAdam param group per layer, with its own beta2.

    Standardized pixels (the constant ones dropped) and Tanh: every weight gets a gradient at every
    step, so ``v_t > 0`` everywhere (a weight that never sees a gradient has
    ``l_t = sqrt(1 - beta2^t) / eps`` and would dominate the mean).
    """

    def __init__(self, lr: float = 1e-3) -> None:
        super().__init__()
        self.lr = lr
        self.hidden = nn.Sequential(nn.Linear(61, 128), nn.Tanh())
        self.output = nn.Linear(128, 10)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self.output(self.hidden(x)), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        groups = [
            {"params": getattr(self, name).parameters(), "name": name, "betas": (0.9, beta2)}
            for name, beta2 in GROUPS.items()
        ]
        return RAdam(groups, lr=self.lr)


def train(logdir: Path, steps: int, interval: int) -> Path:
    """Train ``steps`` optimizer steps; the directory of the event files."""
    L.seed_everything(0, verbose=False)
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32)
    x = x[:, x.std(dim=0) > 0]  # 3 of the 64 pixels are 0 in every image
    x = (x - x.mean(dim=0)) / x.std(dim=0)
    loader = DataLoader(
        TensorDataset(x, torch.tensor(digits.target)), batch_size=32, shuffle=True, drop_last=True
    )
    logger = TensorBoardLogger(logdir, name="", default_hp_metric=False)
    trainer = L.Trainer(
        max_steps=steps,
        accelerator="cpu",
        devices=1,
        logger=logger,
        log_every_n_steps=50,
        callbacks=[RectificationMonitor(logging_interval=interval)],
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=False,
    )
    trainer.fit(DigitsMLP(), loader)
    return Path(logger.log_dir)


def plot(event_dir: Path, out: Path) -> None:
    events = EventAccumulator(str(event_dir), size_guidance={"scalars": 0})
    events.Reload()

    def series(metric: str, group: str) -> tuple[list[int], list[float]]:
        points = events.Scalars(f"rectification/{metric}/{group}")
        return [p.step for p in points], [p.value for p in points]

    fig, axes = plt.subplots(2, 2, figsize=(10, 6.5), sharex=True)
    (rho, r), (ratio, spread) = axes
    for group, beta2 in GROUPS.items():
        color, label = COLORS[group], f"{group} (beta2={beta2})"
        rho.plot(*series("rho_t", group), color=color, label=f"rho_t, {label}")
        r.plot(*series("r_t", group), color=color, label=f"r_t, {label}")
        r.plot(*series("r_t_linear_warmup", group), "--", color=color, label="linear warmup")
        ratio.plot(*series("adaptive_lr_var_ratio", group), color=color, label=f"ratio, {label}")
        ratio.plot(
            *series("adaptive_lr_var_ratio_gaussian", group), "--", color=color, label="1 / r_t^2"
        )
        ratio.plot(*series("rectified_var_ratio", group), ":", color=color, label="r_t^2 x ratio")
        for q, style in (("p05", ":"), ("p50", "-"), ("p95", "--")):
            spread.plot(
                *series(f"adaptive_lr_{q}", group), style, color=color, label=f"{q}, {label}"
            )
    steps, threshold = series("rho_t_threshold", "hidden")
    rho.plot(steps, threshold, ":", color="black", label="rectify_threshold")
    rho.set(title="rho_t: length of the approximated SMA", yscale="log")
    r.set(title="r_t: variance rectification", ylim=(0, 1.05))
    ratio.set(
        title="Var_draws[l_t] / Var[l_limit] (median over the probe)",
        yscale="log",
        xlabel="optimizer step",
    )
    spread.set(title="l_t over the weights: quantiles", yscale="log", xlabel="optimizer step")
    for ax in axes.flat:
        ax.set_xscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("RectificationMonitor on 8x8 digits: RAdam, lr 1e-3, batch 32", fontsize=11)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    print(f"wrote {out} ({out.stat().st_size / 1024:.0f} KB) from {event_dir}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--interval", type=int, default=5, help="logging interval (steps)")
    parser.add_argument("--logdir", type=Path, default=Path("lightning_logs/rectification_curves"))
    parser.add_argument("--out", type=Path, default=Path("docs/rectification_curves.png"))
    args = parser.parse_args()
    plot(train(args.logdir, args.steps, args.interval), args.out)


if __name__ == "__main__":
    main()
