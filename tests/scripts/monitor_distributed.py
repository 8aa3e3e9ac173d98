"""RectificationMonitor with 2 CPU processes (gloo), launched by
``tests/test_rectification_monitor_distributed.py`` through
:func:`helpers.launch.run_two_processes`: the same regressor trained with DDP, FSDP2
(``ModelParallelStrategy``) and FSDP1 (the CPU ``FSDPStrategy``) in one process group, logging
under ``argv[1]``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch
from helpers.launch import leave_process_group
from helpers.monitor import PROBE, TWO_GROUPS, Regressor, trainer
from helpers.sharded import CPUFSDPStrategy
from lightning.pytorch.strategies import DDPStrategy, ModelParallelStrategy
from torch.distributed.tensor import DTensor

from lightning_ranger.callbacks.rectification_monitor import RectificationMonitor


def main(out: Path) -> None:
    """Train with DDP, FSDP2, then FSDP1 in the 2 processes torchrun started; logs under ``out``."""
    strategies = {
        "ddp": DDPStrategy(),
        "fsdp2": ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1),
        "fsdp1": CPUFSDPStrategy(),
    }
    facts: dict[str, Any] = {}
    for name, strategy in strategies.items():
        model = Regressor(groups=TWO_GROUPS, batch_size=4)
        fit = trainer(
            out / name,
            max_steps=12,
            callbacks=[RectificationMonitor(logging_interval=1, probe_size=PROBE)],
            devices=2,
            strategy=strategy,
            use_distributed_sampler=False,
        )
        fit.fit(model)
        optimizer = fit.optimizers[0]
        v = [
            optimizer.state[p]["exp_avg_sq"]
            for g in optimizer.param_groups
            for p in g["params"]
            if p in optimizer.state  # FSDP1: only the parameters with elements on this rank
        ]
        facts[name] = {
            "world_size": fit.world_size,
            "dtensor": all(isinstance(t, DTensor) for t in v),
            "local_numel": sum(
                t.to_local().numel() if isinstance(t, DTensor) else t.numel() for t in v
            ),
            "global_step": fit.global_step,
        }
        all_facts: list[Any] = [None] * fit.world_size
        torch.distributed.all_gather_object(all_facts, facts[name])
        facts[name] = all_facts
    if torch.distributed.get_rank() == 0:
        (out / "facts.json").write_text(json.dumps(facts))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
    leave_process_group()
