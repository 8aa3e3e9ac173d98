"""FSDP1 (``FSDPStrategy``) on the CPU, for the multi-process tests.

Lightning accepts ``FSDPStrategy`` only with CUDA (it checks for that exact class, so a subclass
passes), and torch's ``FullyShardedDataParallel`` needs to be told the CPU as its ``device_id``
(Lightning passes the device index, ``None`` on the CPU). With gloo, everything else is FSDP1 as on
GPUs: flat parameters sharded over the ranks, ``use_orig_params=True`` views, full state dicts.
"""

from __future__ import annotations

import torch
from lightning.pytorch.strategies import FSDPStrategy
from torch.distributed.fsdp import FullyShardedDataParallel
from torch.nn import Module


class CPUFSDPStrategy(FSDPStrategy):
    """``FSDPStrategy`` that wraps the module on the CPU (tests only)."""

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
