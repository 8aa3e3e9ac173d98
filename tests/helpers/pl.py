"""The test kit's Lightning pieces under ``pytorch_lightning``, the standalone distribution's name
for ``lightning.pytorch``: the regression ``Net`` and its FSDP2 variant on that namespace's
``LightningModule``, its CPU FSDP1 strategy, and a quiet Trainer for either namespace."""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

import pytorch_lightning
from pytorch_lightning.strategies import FSDPStrategy

from helpers import trainers
from helpers.models import Net, ShardedNet, regression_module
from helpers.sharded import cpu_fsdp_strategy

NAMESPACES = ("lightning.pytorch", "pytorch_lightning")


def namespace(name: str) -> ModuleType:
    """``lightning.pytorch`` or ``pytorch_lightning``."""
    return importlib.import_module(name)


#: :data:`helpers.models.Net` on ``pytorch_lightning.LightningModule``.
PLNet = regression_module(pytorch_lightning.LightningModule, "PLNet")


def net_class(name: str) -> type:
    """The same regression module on the LightningModule of namespace ``name``."""
    return Net if name == "lightning.pytorch" else PLNet


class PLShardedNet(PLNet):  # type: ignore[valid-type, misc]
    """FSDP2: each linear layer and the root sharded over the data-parallel mesh."""

    configure_model = ShardedNet.configure_model


#: ``pytorch_lightning``'s ``FSDPStrategy`` on the CPU.
PLCPUFSDPStrategy = cpu_fsdp_strategy(FSDPStrategy, "PLCPUFSDPStrategy")


def make_trainer(name: str, root: Any, callbacks: list[Any], **kwargs: Any) -> Any:
    """A quiet single-device CPU Trainer of namespace ``name``, validating every epoch, with no
    logger and no checkpoints unless given."""
    return trainers.make_trainer(
        root, callbacks, namespace=name, **{"limit_val_batches": None, **kwargs}
    )
