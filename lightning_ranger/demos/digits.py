"""scikit-learn's bundled 8x8 handwritten digits as a LightningDataModule, and a small CNN."""

from __future__ import annotations

import importlib.util

import lightning as L
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics.classification import MulticlassAccuracy
from typing_extensions import override

from lightning_ranger.mixin import RangerConfig, RangerMixin

__all__ = ["DigitsClassifier", "DigitsDataModule", "require_scikit_learn"]

PLAIN_RADAM = RangerConfig(optimizer="radam", monitor=False)


def require_scikit_learn() -> None:
    """Check that scikit-learn, which holds the digits, is installed (the ``examples`` extra).

    Raises:
        ModuleNotFoundError: in one line that names the extra to install, if it is not.

    """
    if importlib.util.find_spec("sklearn") is None:
        raise ModuleNotFoundError(
            'DigitsDataModule needs scikit-learn: pip install "lightning-ranger[examples]"',
            name="sklearn",
        )


def _load_digits() -> tuple[Tensor, Tensor]:
    from sklearn.datasets import load_digits  # the `examples` extra, checked at construction

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    return images, torch.tensor(digits.target, dtype=torch.long)


class DigitsDataModule(L.LightningDataModule):
    """The 1,797 8x8 grey-level digit images bundled with scikit-learn (no download), scaled to
    ``[0, 1]`` and split once, by a fixed permutation, into train, validation and test sets.

    Args:
        batch_size: training batch size.
        val_size: number of validation images.
        test_size: number of test images.
        split_seed: seed of the permutation that defines the split (the same split every run).
        num_workers: DataLoader workers.

    Raises:
        ModuleNotFoundError: if scikit-learn (the ``examples`` extra) is not installed.

    Example::

        >>> data = DigitsDataModule(batch_size=32)
        >>> data.setup("fit")
        >>> x, y = next(iter(data.train_dataloader()))
        >>> tuple(x.shape), len(data.train_set), len(data.val_set)
        ((32, 1, 8, 8), 1437, 180)

    """

    def __init__(
        self,
        batch_size: int = 64,
        val_size: int = 180,
        test_size: int = 180,
        split_seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        require_scikit_learn()
        super().__init__()
        self.save_hyperparameters()
        self.batch_size = batch_size
        self.num_workers = num_workers

    @override
    def setup(self, stage: str) -> None:
        images, labels = _load_digits()
        seed = torch.Generator().manual_seed(self.hparams["split_seed"])
        order = torch.randperm(len(labels), generator=seed)
        n_val, n_test = self.hparams["val_size"], self.hparams["test_size"]
        parts = torch.split(order, [len(order) - n_val - n_test, n_val, n_test])
        self.train_set, self.val_set, self.test_set = (
            TensorDataset(images[idx], labels[idx]) for idx in parts
        )

    @override
    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            self.train_set, self.batch_size, shuffle=True, num_workers=self.num_workers
        )

    @override
    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=256, num_workers=self.num_workers)

    @override
    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.test_set, batch_size=256, num_workers=self.num_workers)

    @override
    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()


class DigitsClassifier(RangerMixin, L.LightningModule):
    """A small CNN for :class:`DigitsDataModule`, optimized as its ``ranger`` config says; logs
    ``train_loss``, ``val_loss``, ``val_acc`` and ``test_acc`` (torchmetrics accuracy).

    Args:
        ranger: the optimizer configuration (a :class:`~lightning_ranger.RangerConfig` or a dict
            of its fields). The default is plain RAdam without callbacks, so that the LightningCLI
            configs in ``callbacks/`` add them.
        channels: width of the first convolution (the second has twice as many).

    Example::

        import lightning as L
        from lightning_ranger import RangerConfig
        from lightning_ranger.demos import DigitsClassifier, DigitsDataModule

        model = DigitsClassifier(RangerConfig(optimizer="ranger", lr=3e-3))
        L.Trainer(max_epochs=5).fit(model, DigitsDataModule())

    """

    def __init__(
        self,
        ranger: RangerConfig | None = PLAIN_RADAM,
        channels: int = 16,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, 2 * channels, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(2 * channels * 4 * 4, 64),
            nn.ReLU(),
            nn.Linear(64, 10),
        )
        self.val_acc = MulticlassAccuracy(num_classes=10)
        self.test_acc = MulticlassAccuracy(num_classes=10)

    @override
    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    @override
    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    @override
    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.log("val_loss", nn.functional.cross_entropy(logits, y), prog_bar=True)
        self.val_acc(logits, y)
        self.log("val_acc", self.val_acc, prog_bar=True)

    @override
    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        self.test_acc(self(x), y)
        self.log("test_acc", self.test_acc)

    @override
    def predict_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self(batch[0]).argmax(dim=1)
