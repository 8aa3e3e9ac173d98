"""Ranger in a Lightning Fabric loop: scikit-learn's bundled 8x8 digits (no download), an MLP,
evaluation on Lookahead's slow weights, the rectification statistics of a ``RectificationTracker``
in TensorBoard through ``fabric.log_dict``, and a ``fabric.save``/``fabric.load`` resume.

Each step updates the tracker; each epoch trains on the fast weights, then validates inside
``optimizer.slow_weights()`` (the fast weights come back afterwards) and logs ``val/loss``,
``val/acc``, the tracker's ``rectification/...`` series (``rho_t``, ``r_t``, the variance of the
adaptive lr over minibatch draws against ``1 / r_t^2``, its quantiles; the custom-scalars layout
and the histograms too) and Lookahead's step count and restores; then it saves ``last.ckpt``,
the tracker's probe history included. ``--resume`` continues from that file, bit for bit: the
batches of each epoch are shuffled from a seed of their own.

Run::

    python examples/fabric_ranger.py [--epochs 10] [--out outputs/fabric_ranger] [--resume]
    python examples/fabric_ranger.py --devices 2 --strategy ddp  # 2 processes

    tensorboard --logdir outputs/fabric_ranger

About 10 s on 2 CPU cores.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from lightning.fabric import Fabric
from lightning.fabric.loggers import TensorBoardLogger
from sklearn.datasets import load_digits
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_ranger import Ranger
from lightning_ranger.optim import RectificationTracker

BETA2, SEED = 0.999, 1234


def digits() -> tuple[TensorDataset, TensorDataset]:
    """The 1797 digits, pixels scaled to [0, 1]; the last 297 for validation."""
    x, y = load_digits(return_X_y=True)
    x, y = torch.tensor(x / 16.0, dtype=torch.float32), torch.tensor(y)
    return TensorDataset(x[:1500], y[:1500]), TensorDataset(x[1500:], y[1500:])


def evaluate(model: nn.Module, loader: DataLoader) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over ``loader``."""
    loss = correct = count = 0.0
    with torch.no_grad():
        for x, y in loader:
            logits = model(x)
            loss += nn.functional.cross_entropy(logits, y, reduction="sum").item()
            correct += (logits.argmax(dim=1) == y).sum().item()
            count += len(y)
    return loss / count, correct / count


def main(epochs: int, out: Path, resume: bool, devices: int, strategy: str, lr: float) -> None:
    fabric = Fabric(
        accelerator="cpu",
        devices=devices,
        strategy=strategy,
        loggers=TensorBoardLogger(root_dir=out, name="", version=""),
    )
    fabric.launch()
    fabric.seed_everything(SEED)
    train, val = digits()
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    optimizer = Ranger(model.parameters(), lr=lr, betas=(0.9, BETA2), k=6, alpha=0.5)
    tracker = RectificationTracker(optimizer, probe_size=256, probe_history=64)
    model, optimizer = fabric.setup(model, optimizer)
    val_loader = fabric.setup_dataloaders(DataLoader(val, batch_size=100))
    state = {"model": model, "optimizer": optimizer, "tracker": tracker, "epoch": 0}
    if resume:
        fabric.load(out / "last.ckpt", state)
    if fabric.is_global_zero:
        tracker.write_layout(fabric.logger.experiment)
    for epoch in range(state["epoch"], epochs):
        generator = torch.Generator().manual_seed(SEED + epoch)
        loader = DataLoader(train, batch_size=64, shuffle=True, generator=generator)
        for x, y in fabric.setup_dataloaders(loader):
            loss: Tensor = nn.functional.cross_entropy(model(x), y)
            fabric.backward(loss)
            optimizer.step()
            tracker.update()
            optimizer.zero_grad()
        with optimizer.slow_weights():
            val_loss, val_acc = evaluate(model, val_loader)
        metrics = {
            "train/loss": loss.item(),
            "val/loss": val_loss,
            "val/acc": val_acc,
            "lookahead/steps": optimizer.steps,
            "lookahead/restores": optimizer.restores,
            **tracker.compute(),
        }
        fabric.log_dict(metrics, step=optimizer.steps)
        if fabric.is_global_zero:
            tracker.write_histograms(fabric.logger.experiment, step=optimizer.steps)
        fabric.print(f"epoch {epoch}: val loss {val_loss:.4f}, acc {val_acc:.3f} (slow weights)")
        state["epoch"] = epoch + 1
        fabric.save(out / "last.ckpt", state)
    fabric.print(f"final slow-weight val loss {val_loss!r} after {optimizer.steps} steps")
    fabric.print(f"TensorBoard: tensorboard --logdir {out}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path("outputs/fabric_ranger"))
    parser.add_argument("--resume", action="store_true", help="continue from OUT/last.ckpt")
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--strategy", default="auto")
    parser.add_argument("--lr", type=float, default=1e-2)
    args = parser.parse_args()
    main(args.epochs, args.out, args.resume, args.devices, args.strategy, args.lr)
