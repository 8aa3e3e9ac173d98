"""Quiet CPU Trainers, and the Lookahead + SlowWeightSwap fits that checkpoint every epoch."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningModule
from lightning.pytorch.callbacks import ModelCheckpoint

from helpers.asserts import fast_and_slow
from helpers.models import Net
from lightning_ranger.callbacks.lookahead import Lookahead
from lightning_ranger.callbacks.slow_weight_swap import SlowWeightSwap


def make_trainer(
    tmp_path: Any, callbacks: list[Any], namespace: str = "lightning.pytorch", **kwargs: Any
) -> Any:
    """A quiet single-device CPU Trainer of ``namespace`` (``lightning.pytorch`` or
    ``pytorch_lightning``), no validation unless ``limit_val_batches`` is given."""
    defaults: dict[str, Any] = {
        "accelerator": "cpu",
        "devices": 1,
        "max_epochs": 2,
        "limit_val_batches": 0,
        "num_sanity_val_steps": 0,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "default_root_dir": str(tmp_path),
    }
    trainer_class = importlib.import_module(namespace).Trainer
    return trainer_class(callbacks=callbacks, **{**defaults, **kwargs})


def fit_lookahead(
    tmp_path: Path,
    name: str,
    model: LightningModule,
    max_epochs: int,
    ckpt_path: Any = None,
    **kw: Any,
) -> Any:
    """Fit with Lookahead(k=3) + SlowWeightSwap, validating each epoch and checkpointing each epoch
    into ``tmp_path / name`` (with ``Net``'s or ``TiedLM``'s 5 batches per epoch, the first
    checkpoint, `epoch=0-step=5`, is 2 steps into a cycle)."""
    lookahead = Lookahead(k=3, alpha=0.5, final_weights=kw.pop("final_weights", "fast"))
    checkpoint = ModelCheckpoint(dirpath=tmp_path / name, save_top_k=-1, every_n_epochs=1)
    trainer = make_trainer(
        tmp_path / name,
        [lookahead, SlowWeightSwap(), checkpoint],
        max_epochs=max_epochs,
        limit_val_batches=None,
        enable_checkpointing=True,
        **kw,
    )
    trainer.fit(model, ckpt_path=ckpt_path)
    return trainer, lookahead


def lookahead_state(trainer: Any, lookahead: Lookahead, model: Net) -> dict[str, Any]:
    """The fast and slow weights, the optimizer state and the step of a :func:`fit_lookahead`."""
    fast, slow = fast_and_slow(lookahead, model)
    optimizer = trainer.optimizers[0].state_dict()["state"]
    return {"fast": fast, "slow": slow, "optimizer": optimizer, "step": trainer.global_step}
