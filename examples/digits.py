"""Train a small convolutional network on scikit-learn's bundled 8x8 digits with RAdam.

The main job of ``make demo``: no download, a couple of minutes at most on 2 CPU cores. It prints the
test accuracy of a network trained with :class:`lightning_ranger.RAdam` and no warmup.

Run::

    python examples/digits.py [--epochs 12] [--lr 3e-3] [--seed 0]
"""

from __future__ import annotations

import argparse

import lightning as L
import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset, random_split
from torchmetrics.classification import MulticlassAccuracy

from lightning_ranger import RAdam


class DigitsNet(L.LightningModule):
    """A small CNN for 1x8x8 digit images, optimized with RAdam."""

    def __init__(self, lr: float = 1e-3) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(32 * 4 * 4, 64),
            nn.ReLU(),
            nn.Linear(64, 10),
        )
        self.test_accuracy = MulticlassAccuracy(num_classes=10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int
    ) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        self.test_accuracy(self(x), y)
        self.log("test_acc", self.test_accuracy)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return RAdam(self.parameters(), lr=self.hparams.lr)


def digits_loaders(seed: int, batch_size: int = 64) -> tuple[DataLoader, DataLoader]:
    """Train and test loaders over load_digits (1797 images), scaled to [0, 1], an 80/20 split."""
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    train, test = random_split(
        TensorDataset(x, y), [0.8, 0.2], generator=torch.Generator().manual_seed(seed)
    )
    return (
        DataLoader(train, batch_size=batch_size, shuffle=True),
        DataLoader(test, batch_size=256),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    L.seed_everything(args.seed, verbose=False)
    train_loader, test_loader = digits_loaders(args.seed)
    model = DigitsNet(lr=args.lr)
    trainer = L.Trainer(
        max_epochs=args.epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    trainer.fit(model, train_loader)
    (result,) = trainer.test(model, test_loader, verbose=False)
    print(
        f"RAdam (lr={args.lr}, no warmup), {args.epochs} epochs: test accuracy {result['test_acc']:.4f}"
    )


if __name__ == "__main__":
    main()
