"""Which Lightning strategies the callbacks take, and what FSDP1 needs of them.

Parameters that keep their names and shapes (single device, DDP) or shard them as DTensors (FSDP2)
work everywhere. FSDP1 (``FSDPStrategy``) flattens them: Lookahead's elementwise arithmetic works on
the 1-D local views that ``use_orig_params=True`` gives, and its checkpoints go through full state
dicts; Gradient Centralization needs whole output channels, which the flat shards cut. DeepSpeed
keeps its own flat partitions, out of reach by parameter name.

The strategies are recognised under both ``lightning.pytorch`` and ``pytorch_lightning``
(:func:`~lightning_ranger._namespaces.lightning_isinstance`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import torch

from lightning_ranger._namespaces import lightning_isinstance

if TYPE_CHECKING:
    from lightning.pytorch.strategies import FSDPStrategy, Strategy

__all__ = ["check_strategy", "flat_shard_device"]

_EVERYWHERE = (
    'a single device, `strategy="ddp"` (or its spawn/fork variants), or `ModelParallelStrategy` '
    "with `torch.distributed.fsdp.fully_shard` applied in `configure_model` (FSDP2)"
)
_FSDP1 = (
    '; `FSDPStrategy` (FSDP1) with `use_orig_params=True`, `state_dict_type="full"` (both '
    "Lightning's defaults) and the `FULL_SHARD`, `SHARD_GRAD_OP` or `NO_SHARD` sharding strategy"
)
#: FSDP1 sharding strategies whose parameters are the local slices whenever callbacks run (what
#: ``FULL_SHARD``'s root unit and ``SHARD_GRAD_OP`` keep unsharded after a forward without backward
#: is freed before each write: :func:`~lightning_ranger.optim.resharding.reshard`); hybrid sharding
#: replicates slices across shard groups.
_SHARDING = ("FULL_SHARD", "SHARD_GRAD_OP", "NO_SHARD")


def check_strategy(strategy: Strategy, callback: str, reason: str, allow_fsdp1: bool) -> None:
    """Raise a ``ValueError`` naming what works if ``callback`` cannot run under ``strategy``:
    DeepSpeed always (``reason`` says why), FSDP1 unless ``allow_fsdp1`` and configured as
    :func:`flat_shard_device` needs."""
    supported = _EVERYWHERE + (_FSDP1 if allow_fsdp1 else "")
    name = type(strategy).__name__
    fsdp = _fsdp1(strategy)
    deepspeed = lightning_isinstance(strategy, "strategies.DeepSpeedStrategy")
    if deepspeed or (fsdp is not None and not allow_fsdp1):
        raise ValueError(
            f"`{callback}` does not support `Trainer(strategy={name})`: {reason}. Use {supported}."
        )
    if fsdp is None:
        return
    problems = []
    if not fsdp.kwargs.get("use_orig_params", False):
        problems.append("`use_orig_params=False` (its parameters are not addressable by name)")
    state_dict_type = getattr(fsdp, "_state_dict_type", "full")
    if state_dict_type != "full":
        problems.append(f"`state_dict_type={state_dict_type!r}` (sharded FSDP1 checkpoints)")
    sharding = fsdp.sharding_strategy.name
    if sharding not in _SHARDING:
        problems.append(
            f"`sharding_strategy={sharding}` (its parameters are not the local slices whenever "
            "callbacks run, or are replicated across shard groups)"
        )
    if problems:
        raise ValueError(
            f"`{callback}` does not support `{name}` with {' or '.join(problems)}. Use {supported}."
        )


def flat_shard_device(strategy: Strategy) -> torch.device | None:
    """The device to gather FSDP1 flat shards on if ``strategy`` shards the parameters over more
    than one rank (``FSDPStrategy`` other than ``NO_SHARD``); ``None`` for whole or DTensor
    parameters."""
    fsdp = _fsdp1(strategy)
    if fsdp is not None and fsdp.world_size > 1 and fsdp.sharding_strategy.name != "NO_SHARD":
        return fsdp.root_device
    return None


def _fsdp1(strategy: Strategy) -> FSDPStrategy | None:
    """``strategy`` if it is an ``FSDPStrategy`` (FSDP1) of either namespace, else ``None``."""
    if lightning_isinstance(strategy, "strategies.FSDPStrategy"):
        return cast("FSDPStrategy", strategy)
    return None
