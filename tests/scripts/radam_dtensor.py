"""RAdam on DTensor parameters sharded over 2 CPU processes (gloo), launched by
``tests/test_radam_numerics.py`` through :func:`helpers.launch.run_two_processes`: every
implementation, in bfloat16 and float32, steps a row-sharded parameter exactly as a plain tensor
holding the same values (FSDP2 parameters are DTensors)."""

from __future__ import annotations

import torch
import torch.distributed as dist
from helpers.data import IMPLEMENTATIONS
from helpers.launch import leave_process_group
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import Shard, distribute_tensor

from lightning_ranger import RAdam


def main() -> None:
    dist.init_process_group("gloo")
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    for dtype in (torch.bfloat16, torch.float32):
        for name, options in IMPLEMENTATIONS.items():
            torch.manual_seed(0)  # the same values on every rank
            value = torch.randn(6, 4).to(dtype)
            sharded = torch.nn.Parameter(distribute_tensor(value, mesh, [Shard(0)]))
            plain = torch.nn.Parameter(value.clone())
            optimizers = [RAdam([p], lr=1e-2, **options) for p in (sharded, plain)]
            for _ in range(8):
                grad = torch.randn(6, 4).to(dtype)
                sharded.grad = distribute_tensor(grad, mesh, [Shard(0)])
                plain.grad = grad.clone()
                for optimizer in optimizers:
                    optimizer.step()
            assert torch.equal(sharded.full_tensor(), plain.detach()), (dtype, name)


if __name__ == "__main__":
    main()
    leave_process_group()
