"""The test kit's Lightning pieces under ``pytorch_lightning``, the standalone distribution's
name for ``lightning.pytorch``: the Lookahead tests' ``Net`` on its ``LightningModule`` (the same
layers, data and optimizer; the methods are ``Net``'s own), the FSDP2 variant, the CPU FSDP1
stand-in, and a quiet Trainer for either namespace.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

import pytorch_lightning
import torch
from _lookahead_distributed_script import ShardedNet
from _lookahead_helpers import Net, TinyNet
from pytorch_lightning.strategies import FSDPStrategy
from torch.distributed.fsdp import FullyShardedDataParallel
from torch.distributed.tensor import DTensor
from torch.nn import Module

from lightning_ranger._namespaces import lightning_isinstance

NAMESPACES = ("lightning.pytorch", "pytorch_lightning")


def namespace(name: str) -> ModuleType:
    """``lightning.pytorch`` or ``pytorch_lightning``."""
    return importlib.import_module(name)


class PLNet(pytorch_lightning.LightningModule):
    """``_lookahead_helpers.Net`` (regression on ``make_data``, logs ``val_loss``) on
    ``pytorch_lightning.LightningModule``."""

    def __init__(
        self,
        optimizer: str = "radam",
        lr: float = 0.05,
        batch_size: int = 4,
        n_batches: int = 5,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = TinyNet(seed)

    forward = Net.forward
    loss = Net.loss
    training_step = Net.training_step
    validation_step = Net.validation_step
    test_step = Net.test_step
    configure_optimizers = Net.configure_optimizers
    _loader = Net._loader
    train_dataloader = Net.train_dataloader
    val_dataloader = Net.val_dataloader
    test_dataloader = Net.test_dataloader


def net_class(name: str) -> type:
    """The same regression module on the LightningModule of namespace ``name``."""
    return Net if name == "lightning.pytorch" else PLNet


class PLShardedNet(PLNet):
    """FSDP2: each linear layer and the root sharded over the data-parallel mesh."""

    configure_model = ShardedNet.configure_model


class PLCPUFSDPStrategy(FSDPStrategy):
    """``pytorch_lightning``'s ``FSDPStrategy`` wrapping the module on the CPU, as
    ``_cpu_fsdp.CPUFSDPStrategy`` does for ``lightning.pytorch`` (tests only)."""

    def _setup_model(self, model: Module) -> Module:
        model = FullyShardedDataParallel(
            module=model,
            cpu_offload=self.cpu_offload,
            mixed_precision=self.mixed_precision_config,
            sharding_strategy=self.sharding_strategy,
            device_id=torch.device("cpu"),
            **self.kwargs,
        )
        self.kwargs.pop("auto_wrap_policy", None)  # applied; Lightning would warn it is unused
        return super()._setup_model(model)


def full_weights(model: Module, trainer: Any) -> dict[str, torch.Tensor]:
    """The module's parameters as full tensors (gathering shards: every rank calls this), under
    either namespace's strategies."""
    if lightning_isinstance(trainer.strategy, "strategies.FSDPStrategy"):
        with FullyShardedDataParallel.summon_full_params(trainer.strategy.model):
            return {
                n.replace("_fsdp_wrapped_module.", ""): p.detach().clone()
                for n, p in model.named_parameters()
            }
    return {
        n: (p.full_tensor() if isinstance(p, DTensor) else p).detach().clone()
        for n, p in model.named_parameters()
    }


def make_trainer(name: str, root: Any, callbacks: list[Any], **kwargs: Any) -> Any:
    """A quiet single-device CPU Trainer of namespace ``name``, validating every epoch, with no
    logger and no checkpoints unless given."""
    defaults: dict[str, Any] = {
        "accelerator": "cpu",
        "devices": 1,
        "max_epochs": 2,
        "num_sanity_val_steps": 0,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "default_root_dir": str(root),
    }
    return namespace(name).Trainer(callbacks=callbacks, **{**defaults, **kwargs})
