"""The callbacks under ``pytorch_lightning`` with 2 CPU processes (gloo), launched by
``tests/test_namespaces.py`` through :func:`helpers.launch.run_two_processes`.

For each variant (DDP; FSDP1 through the CPU stand-in of ``FSDPStrategy``, each linear layer its own
unit; FSDP2 through ``ModelParallelStrategy`` with ``fully_shard`` and single-file checkpoints) it
fits one epoch of 5 steps with ``Lookahead(k=3)``, ``SlowWeightSwap`` and a ``ModelCheckpoint``, all
on ``pytorch_lightning``'s Trainer, and saves each rank's full fast and slow weights to
``OUT/<variant>_rank<r>.pt``; the checkpoint is ``OUT/<variant>/epoch=0-step=5.ckpt``.

Usage (from ``tests/``): ``python -m torch.distributed.run --nproc_per_node=2 --module
scripts.pl_namespace OUT VARIANT...``
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
from helpers.launch import leave_process_group
from helpers.pl import PLCPUFSDPStrategy, PLNet, PLShardedNet, make_trainer
from helpers.sharded import full_fast_and_slow
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.strategies import ModelParallelStrategy
from torch import nn

from lightning_ranger.callbacks.lookahead import Lookahead
from lightning_ranger.callbacks.slow_weight_swap import SlowWeightSwap

K, ALPHA = 3, 0.5
VARIANTS = ("ddp", "fsdp1", "fsdp2")


def fit(out: Path, variant: str) -> None:
    model = PLShardedNet() if variant == "fsdp2" else PLNet()
    strategy: Any = "ddp"
    if variant == "fsdp1":
        strategy = PLCPUFSDPStrategy(auto_wrap_policy={nn.Linear})
    elif variant == "fsdp2":
        strategy = ModelParallelStrategy(
            data_parallel_size=2, tensor_parallel_size=1, save_distributed_checkpoint=False
        )
    lookahead = Lookahead(k=K, alpha=ALPHA, final_weights="fast")
    checkpoint = ModelCheckpoint(dirpath=out / variant, save_top_k=-1, every_n_epochs=1)
    trainer = make_trainer(
        "pytorch_lightning",
        out / variant,
        [lookahead, SlowWeightSwap(), checkpoint],
        devices=2,
        strategy=strategy,
        max_epochs=1,
        enable_checkpointing=True,
    )
    trainer.fit(model)
    fast, slow = full_fast_and_slow(lookahead, model, trainer)
    record = {"fast": fast, "slow": slow, "step": trainer.global_step}
    torch.save(record, out / f"{variant}_rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    for name in sys.argv[2:]:
        fit(Path(sys.argv[1]), name)
    leave_process_group()
