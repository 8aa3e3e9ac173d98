"""Sharded training on the CPU: FSDP1 (``FSDPStrategy``) for either Lightning namespace, the
full weights of a module under any strategy (and Lookahead's full fast and slow weights), and the
weights that each forward computes with.

Lightning accepts ``FSDPStrategy`` only with CUDA (it checks for that exact class, so a subclass
passes), and torch's ``FullyShardedDataParallel`` needs to be told the CPU as its ``device_id``
(Lightning passes the device index, ``None`` on the CPU). With gloo, everything else is FSDP1 as on
GPUs: flat parameters sharded over the ranks, ``use_orig_params=True`` views, full state dicts.
The full optimizer state dict is gathered without ``offload_to_cpu``: on a CPU device torch's
offload is no copy (``Tensor.cpu()`` returns the tensor itself), so every state tensor of a
parameter would come back as the one all-gather buffer that torch reuses for them (each
``exp_avg`` equal to its ``exp_avg_sq``); on GPUs the offload copies and Lightning's default works.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import Callback
from lightning.pytorch.strategies import FSDPStrategy
from torch import Tensor, nn
from torch.distributed.fsdp import (
    FullOptimStateDictConfig,
    FullStateDictConfig,
    FullyShardedDataParallel,
    OptimStateKeyType,
    StateDictType,
)
from torch.distributed.tensor import DTensor
from torch.nn import Module

from lightning_ranger._namespaces import lightning_isinstance
from lightning_ranger.callbacks.lookahead import Lookahead


def cpu_fsdp_strategy(base: type, name: str) -> type:
    """A class ``name``: ``base`` (the ``FSDPStrategy`` of either Lightning namespace) wrapping the
    module on the CPU (tests only)."""

    class CPUFSDPStrategy(base):  # type: ignore[valid-type, misc]
        def _setup_model(self, model: Module) -> Module:
            # As Lightning does: a module that holds FSDP units (from an earlier stage of the
            # trainer, or auto-wrapped) is not wrapped again.
            if not any(isinstance(m, FullyShardedDataParallel) for m in model.modules()):
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

        def optimizer_state(self, optimizer: Any) -> dict[str, Any]:
            optimizer = getattr(optimizer, "_optimizer", optimizer)  # a LightningOptimizer
            with FullyShardedDataParallel.state_dict_type(
                self.model,
                StateDictType.FULL_STATE_DICT,
                FullStateDictConfig(offload_to_cpu=False, rank0_only=True),
                FullOptimStateDictConfig(offload_to_cpu=False, rank0_only=True),
            ):
                state = FullyShardedDataParallel.optim_state_dict(self.model, optimizer)
                if self.global_rank == 0:  # Lightning's format: keyed by parameter index
                    state = FullyShardedDataParallel.rekey_optim_state_dict(
                        state, OptimStateKeyType.PARAM_ID, self.model
                    )
                return state

    CPUFSDPStrategy.__name__ = CPUFSDPStrategy.__qualname__ = name
    return CPUFSDPStrategy


#: ``lightning.pytorch``'s ``FSDPStrategy`` on the CPU.
CPUFSDPStrategy = cpu_fsdp_strategy(FSDPStrategy, "CPUFSDPStrategy")


def full_weights(model: Module, trainer: Any) -> dict[str, torch.Tensor]:
    """The module's parameters as full tensors (gathering shards: every rank calls this), under
    either namespace's strategies."""
    if lightning_isinstance(trainer.strategy, "strategies.FSDPStrategy"):
        with FullyShardedDataParallel.summon_full_params(trainer.strategy.model, writeback=False):
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


class ForwardRecorder(Callback):
    """The full weights that the module's linear layers compute with, at each forward: under
    ``training`` those of forwards with gradients, under ``evaluation`` the others, one dict of
    ``{parameter name: full tensor}`` per forward of the module. The hooks are set when the trainer
    sets up (every later forward is recorded); they run after the pre-forward hooks of FSDP1 and
    FSDP2, which unshard the parameters."""

    def __init__(self) -> None:
        self.training: list[dict[str, Tensor]] = []
        self.evaluation: list[dict[str, Tensor]] = []
        self._hooked = False

    def setup(self, trainer: Any, pl_module: Module, stage: str) -> None:
        if self._hooked:
            return
        self._hooked = True
        for name, module in pl_module.named_modules():
            if isinstance(module, nn.Linear):
                module.register_forward_pre_hook(self._hook(name))

    def _hook(self, layer: str) -> Any:
        def record(module: nn.Linear, args: Any) -> None:
            records = self.training if torch.is_grad_enabled() else self.evaluation
            if not records or f"{layer}.weight" in records[-1]:
                records.append({})
            for kind, p in (("weight", module.weight), ("bias", module.bias)):
                full = p.full_tensor() if isinstance(p, DTensor) else p
                records[-1][f"{layer}.{kind}"] = full.detach().clone()

        return record
