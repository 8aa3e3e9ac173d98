"""A callback that keeps a run's learning curves in memory: training loss and validation metrics."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor
from typing_extensions import override


class ValidationHistory(Callback):
    """At every validation (not the sanity check): the optimizer step, the mean training loss since
    the previous validation, and the logged validation metrics ``keys``.

    Args:
        keys: names in ``trainer.callback_metrics`` to record, e.g. ``("val_loss", "val_acc")``.

    """

    def __init__(self, keys: Sequence[str]) -> None:
        self.keys = tuple(keys)
        self.steps: list[int] = []
        self.train_loss: list[float] = []
        self.metrics: dict[str, list[float]] = {key: [] for key in self.keys}
        self._losses: list[float] = []

    @override
    def on_train_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if isinstance(loss, Tensor):
            self._losses.append(loss.item())

    @override
    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self.steps.append(trainer.global_step)
        mean = sum(self._losses) / len(self._losses) if self._losses else math.nan
        self.train_loss.append(mean)
        self._losses = []
        for key in self.keys:
            self.metrics[key].append(float(trainer.callback_metrics[key]))
