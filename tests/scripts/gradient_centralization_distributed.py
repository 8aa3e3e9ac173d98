"""GradientCentralization with 2 CPU processes (gloo), launched by
``tests/test_gradient_centralization_distributed.py`` through
:func:`helpers.launch.run_two_processes`: the same model fitted three times in one process group
(DDP; FSDP2 through ``ModelParallelStrategy`` with ``fully_shard``; FSDP2 with ``min_ndim=1``, whose
sharded 1-D gradients need collectives), then DTensors of other placements centralized directly;
each rank saves what it got under ``argv[1]``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
from helpers.launch import leave_process_group
from helpers.models import Net, ShardedNet
from helpers.sharded import full_weights
from helpers.trainers import make_trainer
from lightning.pytorch.strategies import ModelParallelStrategy
from torch.distributed.tensor import DTensor

from lightning_ranger.callbacks.gradient_centralization import GradientCentralization
from lightning_ranger.optim.centralization import centralize_gradients

# variant: (FSDP2, min_ndim)
VARIANTS = {"ddp": (False, 2), "fsdp2": (True, 2), "fsdp2_min_ndim_1": (True, 1)}


EPOCHS = 2


def fit(out: Path, variant: str) -> None:
    sharded, min_ndim = VARIANTS[variant]
    model = (ShardedNet if sharded else Net)("radam")
    strategy: Any = "ddp"
    if sharded:
        strategy = ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1)
    callback = GradientCentralization(min_ndim=min_ndim)
    trainer = make_trainer(
        out / variant, [callback], devices=2, strategy=strategy, max_epochs=EPOCHS
    )
    trainer.fit(model)
    record = {
        "weights": full_weights(model, trainer),
        "step": trainer.global_step,
        "sharded": [isinstance(p, DTensor) for p in model.parameters()],
    }
    torch.save(record, out / f"{variant}_rank{trainer.global_rank}.pt")


def placements(out: Path) -> None:
    """Centralize DTensors of several placements (uneven shards included) on a 2-rank mesh."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Partial, Replicate, Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (2,))
    torch.manual_seed(0)  # the same full tensors on both ranks
    full = {
        "rows_uneven": (torch.randn(5, 6), [Shard(0)]),
        "conv_rows": (torch.randn(4, 3, 2, 2), [Shard(0)]),
        "columns": (torch.randn(4, 7), [Shard(1)]),  # tensor parallel's row-wise sharding
        "vector": (torch.randn(5), [Shard(0)]),
        "replicated": (torch.randn(3, 4), [Replicate()]),
    }
    tensors = {n: distribute_tensor(t, mesh, p) for n, (t, p) in full.items()}
    partial = torch.randn(3, 5)
    half = partial / 2 + (1 if dist.get_rank() == 0 else -1)  # the halves add up to `partial`
    tensors["partial_sum"] = DTensor.from_local(half, mesh, [Partial("sum")], run_check=False)
    full["partial_sum"] = (partial, [Partial("sum")])
    centralize_gradients(list(tensors.values()))
    got = {n: t.full_tensor() for n, t in tensors.items()}
    torch.save(
        {"got": got, "full": {n: t for n, (t, _) in full.items()}},
        out / f"placements_rank{dist.get_rank()}.pt",
    )


def main(out: Path) -> None:
    for variant in VARIANTS:
        fit(out, variant)
    placements(out)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
    leave_process_group()
