"""RectificationMonitor with 2 CPU processes (gloo), launched by
``tests/test_rectification_monitor_distributed.py`` through
:func:`helpers.launch.run_two_processes`: the same regressor trained with DDP, FSDP2
(``ModelParallelStrategy``) and FSDP1 (the CPU ``FSDPStrategy``) in one process group, logging
under ``argv[1]``; under FSDP2 and FSDP1 also 2 epochs of 12 steps uninterrupted (``<name>_long``,
checkpointing each epoch) and resumed from its checkpoint after step 12
(``<name>_resumed``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch
from helpers.launch import leave_process_group
from helpers.monitor import PROBE, TWO_GROUPS, Regressor, trainer
from helpers.sharded import CPUFSDPStrategy
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.strategies import DDPStrategy, ModelParallelStrategy
from torch.distributed.tensor import DTensor

from lightning_ranger.callbacks.rectification_monitor import RectificationMonitor


def _strategy(name: str) -> Any:
    if name == "fsdp2":
        return ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1)
    return CPUFSDPStrategy() if name == "fsdp1" else DDPStrategy()


def main(out: Path) -> None:
    """Train with DDP, FSDP2, then FSDP1 in the 2 processes torchrun started; logs under ``out``."""
    facts: dict[str, Any] = {}
    for name in ("ddp", "fsdp2", "fsdp1"):
        strategy = _strategy(name)
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
        if name != "ddp":  # sharded probes: resume mid-run from the gathered tracker state
            for run, ckpt_path in (
                ("long", None),
                ("resumed", out / name / "epoch=0-step=12.ckpt"),
            ):
                checkpoint = ModelCheckpoint(dirpath=out / name, save_top_k=-1, every_n_epochs=1)
                again = trainer(  # max_epochs: Lightning resumes exactly from epoch ends then
                    out / f"{name}_{run}",
                    max_steps=-1,
                    max_epochs=2,
                    callbacks=[
                        RectificationMonitor(logging_interval=1, probe_size=PROBE),
                        checkpoint,
                    ],
                    devices=2,
                    strategy=_strategy(name),
                    use_distributed_sampler=False,
                    enable_checkpointing=True,
                )
                again.fit(Regressor(groups=TWO_GROUPS, batch_size=4), ckpt_path=ckpt_path)
    if torch.distributed.get_rank() == 0:
        (out / "facts.json").write_text(json.dumps(facts))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
    leave_process_group()
