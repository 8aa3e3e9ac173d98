"""The RAdam paper's CIFAR-10 setting, for users who have the data: the learning-rate robustness
sweep of Adam, Adam with warmup, RAdam, Ranger and SGD with momentum on a ResNet-18.

Liu et al. (2020) show on CIFAR-10 that Adam's test accuracy depends much more on the learning rate
than RAdam's. This script runs that sweep with torchvision's ResNet-18 (3x3 stem without max-pool,
the usual CIFAR adaptation), standard augmentation (random crop with 4-pixel padding, horizontal
flip), on a GPU when there is one (Lightning's ``accelerator="auto"``). Nothing is downloaded:
``--data-dir`` must hold torchvision's CIFAR-10 layout::

    DATA_DIR/cifar-10-batches-py/data_batch_1 ... data_batch_5, test_batch

(the "CIFAR-10 python version" archive, https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz,
extracted in DATA_DIR, or what ``torchvision.datasets.CIFAR10(DATA_DIR, download=True)`` writes on a
machine with internet access). The test set serves as validation set, as in the paper's curves.
It prints a table of the test accuracy and writes ``OUT/accuracy_vs_lr.png``, ``OUT/summary.md``
and ``OUT/results.json``.

Run::

    python examples/cifar10_resnet.py --data-dir ~/data                      # 5 x 4 runs
    python examples/cifar10_resnet.py --data-dir ~/data --epochs 200 --seeds 3
    python examples/cifar10_resnet.py --data-dir ~/data --optimizers adam radam --lrs 0.1 0.003
"""

from __future__ import annotations

import argparse
import json
import math
import pickle
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import lightning as L
import torch
import torchvision
from _study.figures import accuracy_vs_lr
from _study.recipes import RECIPES, RecipeOptimizers, ranger_config
from _study.runner import run_all
from _study.summary import aggregate, markdown_table
from lightning.pytorch import LightningModule
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from torchmetrics.classification import MulticlassAccuracy
from torchvision.transforms import v2

from lightning_ranger import RangerConfig, RangerMixin

FOLDER = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
RECIPE_NAMES = ("adam", "adam-warmup", "radam", "ranger", "sgd")


def find_batches(data_dir: Path) -> Path:
    """The ``cifar-10-batches-py`` folder under ``data_dir`` (or ``data_dir`` itself).

    Raises:
        FileNotFoundError: naming the missing files and where to put them.

    """
    for folder in (data_dir / FOLDER, data_dir):
        if all((folder / name).is_file() for name in (*TRAIN_FILES, TEST_FILE)):
            return folder
    missing = [n for n in (*TRAIN_FILES, TEST_FILE) if not (data_dir / FOLDER / n).is_file()]
    raise FileNotFoundError(
        f"CIFAR-10 not found: {data_dir / FOLDER} lacks {', '.join(missing)}. Put the extracted "
        "'CIFAR-10 python version' there (https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz "
        f"contains the {FOLDER} folder), or run torchvision.datasets.CIFAR10('{data_dir}', "
        "download=True) on a machine with internet access; this script downloads nothing."
    )


def load_batches(folder: Path, names: tuple[str, ...]) -> tuple[Tensor, Tensor]:
    """Images ``[N, 3, 32, 32]`` (uint8) and labels ``[N]`` from the pickled CIFAR batches."""
    images, labels = [], []
    for name in names:
        with open(folder / name, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
        images.append(torch.as_tensor(batch[b"data"], dtype=torch.uint8).reshape(-1, 3, 32, 32))
        labels.append(torch.as_tensor(batch[b"labels"], dtype=torch.long))
    return torch.cat(images), torch.cat(labels)


class CifarImages(Dataset[tuple[Tensor, Tensor]]):
    """CIFAR images as normalized float tensors, through ``transform`` (uint8 in)."""

    def __init__(self, images: Tensor, labels: Tensor, transform: v2.Transform) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.transform(self.images[i]), self.labels[i]


class Cifar10(L.LightningDataModule):
    """CIFAR-10 from a local ``cifar-10-batches-py`` folder; the test set is also the validation
    set. Training images are randomly cropped (4-pixel padding) and flipped.

    Args:
        data_dir: the folder that holds ``cifar-10-batches-py``.
        batch_size: training batch size.
        num_workers: DataLoader workers.

    """

    def __init__(self, data_dir: Path, batch_size: int = 128, num_workers: int = 2) -> None:
        super().__init__()
        self.folder = find_batches(data_dir)
        self.batch_size, self.num_workers = batch_size, num_workers
        normalize = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)]
        self.train_transform = v2.Compose(
            [v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip(), *normalize]
        )
        self.test_transform = v2.Compose(normalize)

    def setup(self, stage: str) -> None:
        self.train_set = CifarImages(*load_batches(self.folder, TRAIN_FILES), self.train_transform)
        self.test_set = CifarImages(*load_batches(self.folder, (TEST_FILE,)), self.test_transform)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            self.train_set,
            self.batch_size,
            shuffle=True,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.test_set, 512, num_workers=self.num_workers)


class CifarResNet(RecipeOptimizers, RangerMixin, LightningModule):
    """torchvision's ResNet-18 with a CIFAR stem, optimized as its ``ranger`` config and recipe
    say; logs ``train_loss``, ``val_loss`` and ``val_acc`` (micro-averaged accuracy).

    Args:
        ranger: the optimizer configuration.
        recipe: a name of :data:`_study.recipes.RECIPES`.
        freeze_steps: Adam-2k's ``v_t``-only steps (unused by the other recipes).

    """

    def __init__(self, ranger: RangerConfig, recipe: str, freeze_steps: int = 0) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = torchvision.models.resnet18(num_classes=10)
        self.net.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
        self.net.maxpool = nn.Identity()
        self.val_acc = MulticlassAccuracy(num_classes=10, average="micro")

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.log("val_loss", nn.functional.cross_entropy(logits, y))
        self.val_acc(logits, y)
        self.log("val_acc", self.val_acc)


@dataclass(frozen=True)
class CifarRun:
    """One run of the sweep."""

    recipe: str
    lr: float
    seed: int
    epochs: int
    batch_size: int
    warmup_steps: int
    weight_decay: float
    data_dir: str
    num_workers: int
    limit_batches: int | None = None


@dataclass
class CifarResult:
    """A run's final test accuracy and its time."""

    run: CifarRun
    test_acc: float
    seconds: float


def train_cifar(run: CifarRun) -> CifarResult:
    """Train one run and evaluate on the test set."""
    start = time.perf_counter()
    L.seed_everything(run.seed, verbose=False)
    config = ranger_config(run.recipe, run.lr, 0.999, run.warmup_steps)
    config = RangerConfig(**(config.as_dict() | {"weight_decay": run.weight_decay}))
    model = CifarResNet(config, run.recipe)
    data = Cifar10(Path(run.data_dir), run.batch_size, run.num_workers)
    trainer = L.Trainer(
        max_epochs=run.epochs,
        accelerator="auto",
        devices=1,
        limit_train_batches=run.limit_batches,
        limit_val_batches=run.limit_batches,
        logger=False,
        num_sanity_val_steps=0,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=False,
    )
    trainer.fit(model, data)
    (metrics,) = trainer.validate(model, data, verbose=False)
    return CifarResult(run, metrics["val_acc"], time.perf_counter() - start)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; ``--data-dir`` is required and checked before anything runs."""
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--data-dir", type=Path, required=True, help=f"the folder that holds {FOLDER}/"
    )
    parser.add_argument("--lrs", type=float, nargs="+", default=[0.1, 0.03, 0.01, 0.003])
    parser.add_argument(
        "--optimizers",
        nargs="+",
        choices=RECIPE_NAMES,
        default=list(RECIPE_NAMES),
        metavar="NAME",
        help=f"optimizers, of {list(RECIPE_NAMES)}",
    )
    parser.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1 per cell")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument(
        "--warmup-steps",
        type=int,
        default=2000,
        help="Adam + warmup's linear warmup (2 / (1 - beta2) at beta2 = 0.999)",
    )
    parser.add_argument("--num-workers", type=int, default=2, help="DataLoader workers")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="for tests: 1 batch of 4 images per epoch, lr 0.03, 1 seed, no DataLoader workers",
    )
    parser.add_argument("--out", type=Path, default=Path("outputs/cifar10_resnet"))
    args = parser.parse_args(argv)
    args.limit_batches = 1 if args.quick else None
    if args.quick:
        args.epochs, args.lrs, args.seeds, args.batch_size, args.num_workers = 1, [0.03], 1, 4, 0
    try:
        find_batches(args.data_dir)
    except FileNotFoundError as err:
        parser.exit(2, f"error: {err}\n")
    if min(args.seeds, args.epochs, args.batch_size) < 1:
        parser.error("--seeds, --epochs and --batch-size must be >= 1")
    return args


def main(argv: list[str] | None = None) -> None:
    """Run the sweep one run after another (one GPU), print the table, write the figure."""
    start = time.perf_counter()
    args = parse_args(argv)
    images = len(load_batches(find_batches(args.data_dir), TRAIN_FILES)[1])
    steps = args.epochs * min(-(-images // args.batch_size), args.limit_batches or math.inf)
    warmup = min(args.warmup_steps, steps)
    runs = [
        CifarRun(
            recipe,
            lr,
            seed,
            args.epochs,
            args.batch_size,
            warmup,
            args.weight_decay,
            str(args.data_dir),
            args.num_workers,
            args.limit_batches,
        )
        for recipe in args.optimizers
        for lr in sorted(args.lrs)
        for seed in range(args.seeds)
    ]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(
        f"CIFAR-10 ResNet-18: {len(runs)} runs of {args.epochs} epochs ({steps} steps of batch "
        f"{args.batch_size}, {images} training images) on {device}; warmup {warmup} steps",
        flush=True,
    )
    results = run_all(
        train_cifar, runs, workers=1, describe=lambda r: f"{r.recipe}/lr={r.lr:g}", threads=None
    )
    grid = aggregate((r.run.recipe, r.run.lr, 100 * r.test_acc) for r in results)
    lrs = sorted(args.lrs)
    table = markdown_table(grid, args.optimizers, lrs, RECIPES)
    args.out.mkdir(parents=True, exist_ok=True)
    title = f"CIFAR-10, ResNet-18: test accuracy vs lr ({args.epochs} epochs, {args.seeds} seed(s))"
    figure = accuracy_vs_lr(grid, lrs, title, args.out / "accuracy_vs_lr.png")
    report = (
        f"Test accuracy (%), mean ± std over {args.seeds} seed(s):\n\n{table}\n\n"
        f"Wall time: {time.perf_counter() - start:.0f} s on {device} ({len(runs)} runs)\n"
    )
    (args.out / "summary.md").write_text(report)
    (args.out / "results.json").write_text(json.dumps([asdict(r) for r in results], indent=1))
    print("\n" + report + f"\nFigure: {figure}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
