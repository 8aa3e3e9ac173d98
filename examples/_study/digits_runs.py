"""One training run of the digits study: its description, the worker function, its result."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import lightning as L
import torch
from lightning.pytorch import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor

from _study.history import ValidationHistory
from _study.lookahead_line import LineScan, LookaheadLine
from _study.recipes import RecipeOptimizers, ranger_config
from _study.sampling_variance import minibatch_gradients
from lightning_ranger import RangerConfig
from lightning_ranger.callbacks import RectificationMonitor
from lightning_ranger.demos import DigitsClassifier, DigitsDataModule


class StudyDigitsClassifier(RecipeOptimizers, DigitsClassifier):
    """:class:`~lightning_ranger.demos.DigitsClassifier` that also trains with Adam-2k and SGD.

    Args:
        ranger: the optimizer configuration (lr, betas, eps; everything for the other recipes).
        recipe: a name of :data:`_study.recipes.RECIPES`.
        freeze_steps: Adam-2k's ``v_t``-only steps.

    """

    def __init__(self, ranger: RangerConfig, recipe: str, freeze_steps: int = 0) -> None:
        super().__init__(ranger)
        self.save_hyperparameters()


@dataclass(frozen=True)
class DigitsRun:
    """Everything one run needs; ``seed`` fixes initialization and batch order."""

    recipe: str
    lr: float
    seed: int
    epochs: int
    batch_size: int
    beta2: float
    warmup_steps: int
    freeze_steps: int
    log_dir: str
    monitor_interval: int | None = None
    line_syncs: tuple[int, ...] = ()

    @property
    def name(self) -> str:
        """``recipe/lr=...-seed=...``, also the run's TensorBoard folder under ``log_dir``."""
        return f"{self.recipe}/lr={self.lr:g}-seed={self.seed}"


@dataclass
class DigitsResult:
    """What a run measured: test accuracy, learning curves per epoch, and line scans (Ranger)."""

    run: DigitsRun
    test_acc: float
    steps: list[int]
    train_loss: list[float]
    val_loss: list[float]
    val_acc: list[float]
    seconds: float
    line_scans: list[LineScan] = field(default_factory=list)


def train_digits(run: DigitsRun) -> DigitsResult:
    """Train and test one run on the bundled digits; logs to TensorBoard under ``run.log_dir``."""
    start = time.perf_counter()
    L.seed_everything(run.seed, verbose=False)
    config = ranger_config(run.recipe, run.lr, run.beta2, run.warmup_steps)
    model = StudyDigitsClassifier(config, run.recipe, run.freeze_steps)
    history = ValidationHistory(("val_loss", "val_acc"))
    callbacks: list[Callback] = [history]
    if run.monitor_interval is not None:
        callbacks.append(RectificationMonitor(logging_interval=run.monitor_interval))
    line = LookaheadLine(run.line_syncs)
    if run.line_syncs:
        callbacks.append(line)
    recipe, version = run.name.split("/")
    trainer = L.Trainer(
        max_epochs=run.epochs,
        accelerator="cpu",
        devices=1,
        logger=TensorBoardLogger(
            run.log_dir, name=recipe, version=version, default_hp_metric=False
        ),
        callbacks=callbacks,
        log_every_n_steps=10,
        num_sanity_val_steps=0,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=False,
    )
    data = DigitsDataModule(batch_size=run.batch_size)
    trainer.fit(model, data)
    (test,) = trainer.test(model, data, verbose=False)
    return DigitsResult(
        run=run,
        test_acc=test["test_acc"],
        steps=history.steps,
        train_loss=history.train_loss,
        val_loss=history.metrics["val_loss"],
        val_acc=history.metrics["val_acc"],
        seconds=time.perf_counter() - start,
        line_scans=line.scans,
    )


def initial_gradients(batch_size: int, pool: int, seed: int = 0) -> Tensor:
    """``[pool, parameters]``: gradients of the study's CNN at its seed-``seed`` initialization
    on random minibatches of the training set (see :mod:`_study.sampling_variance`)."""
    L.seed_everything(seed, verbose=False)
    model = StudyDigitsClassifier(ranger_config("adam", 1e-3, 0.999), "adam")
    data = DigitsDataModule(batch_size=batch_size)
    data.setup("fit")
    generator = torch.Generator().manual_seed(seed)
    return minibatch_gradients(model, data.train_set, batch_size, pool, generator)
