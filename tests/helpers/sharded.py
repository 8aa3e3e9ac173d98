"""Sharded training on the CPU: FSDP1 (``FSDPStrategy``) for either Lightning namespace, and the
full weights of a module under any strategy (and Lookahead's full fast and slow weights).

Lightning accepts ``FSDPStrategy`` only with CUDA (it checks for that exact class, so a subclass
passes), and torch's ``FullyShardedDataParallel`` needs to be told the CPU as its ``device_id``
(Lightning passes the device index, ``None`` on the CPU). With gloo, everything else is FSDP1 as on
GPUs: flat parameters sharded over the ranks, ``use_orig_params=True`` views, full state dicts.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.strategies import FSDPStrategy
from torch.distributed.fsdp import FullyShardedDataParallel
from torch.distributed.tensor import DTensor
from torch.nn import Module

from lightning_ranger._namespaces import lightning_isinstance
from lightning_ranger.callbacks.lookahead import Lookahead


def cpu_fsdp_strategy(base: type, name: str) -> type:
    """A class ``name``: ``base`` (the ``FSDPStrategy`` of either Lightning namespace) wrapping the
    module on the CPU (tests only)."""

    class CPUFSDPStrategy(base):  # type: ignore[valid-type, misc]
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

    CPUFSDPStrategy.__name__ = CPUFSDPStrategy.__qualname__ = name
    return CPUFSDPStrategy


#: ``lightning.pytorch``'s ``FSDPStrategy`` on the CPU.
CPUFSDPStrategy = cpu_fsdp_strategy(FSDPStrategy, "CPUFSDPStrategy")


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


def full_fast_and_slow(
    lookahead: Lookahead, model: Module, trainer: Any
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """``lookahead``'s full fast and slow weights of ``model`` (every rank calls this); the module
    holds the fast weights again afterwards."""
    fast = full_weights(model, trainer)
    lookahead.show_slow_weights()
    slow = full_weights(model, trainer)
    lookahead.show_fast_weights()
    return fast, slow
