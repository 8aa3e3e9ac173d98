"""``lightning_ranger.optim.Lookahead`` and ``Ranger`` in loops of one's own with 2 CPU processes
(gloo), launched by ``tests/test_lookahead_optimizer_distributed.py`` through
:func:`helpers.launch.run_two_processes`.

- ``fabric``: Lightning Fabric with DDP, ``Ranger(k=4)`` on the regression data (each rank half of
  each batch of 4), 3 epochs, evaluated on the slow weights at the end of each; ``fabric.save``
  after step 6 (2 steps into the second cycle), then a second run that ``fabric.load``-s it and
  trains to the end.
- ``fsdp2``: torch's ``fully_shard`` (each linear layer its own unit beside the root, and the root
  alone) with ``Lookahead(RAdam)`` and a ``RectificationTracker``, evaluated inside
  ``slow_weights(model)`` at the end of each epoch; a distributed checkpoint of the
  model and optimizer (``get_optimizer_state_dict``) and the tracker's gathered state after step
  6, and a fresh model, optimizer and tracker that load them and train to the end; forwards inside
  and after ``slow_weights(model)``.

Rank 0 saves what the test compares to ``OUT/<part>.pt``.

Usage (from ``tests/``): ``python -m torch.distributed.run --nproc_per_node=2 --module
scripts.plain_loops OUT PART...``
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from helpers.data import make_data
from helpers.launch import leave_process_group
from helpers.models import TinyNet
from lightning.fabric import Fabric
from torch import Tensor, nn
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor, init_device_mesh

from lightning_ranger import RAdam, Ranger
from lightning_ranger.optim import Lookahead, RectificationTracker
from lightning_ranger.optim.lookahead_optimizer import SLOW_KEY

K, EPOCHS, SAVE_AT = 4, 3, 6
#: The tracker's probe: every coordinate of the 58 parameters' elements is not needed.
PROBE, HISTORY = 32, 8
#: The validation batch that the evaluation forwards run on (each rank half of it).
VAL = make_data(8, seed=99)


def rank_batches() -> list[tuple[Tensor, Tensor]]:
    """This rank's half of each batch of 4 of the regression data (samples ``rank``, ``rank + 2``):
    the ranks' batches together are the single-process batches."""
    x, y = make_data(20).tensors
    rank = dist.get_rank()
    return [(x[i + rank : i + 4 : 2], y[i + rank : i + 4 : 2]) for i in range(0, 20, 4)]


def full(module: nn.Module) -> dict[str, Tensor]:
    return {
        n: (p.full_tensor() if isinstance(p, DTensor) else p).detach().clone()
        for n, p in module.named_parameters()
    }


def evaluate(model: nn.Module) -> Tensor:
    """The validation loss over both ranks' halves (a forward without backward)."""
    x, y = VAL.tensors
    rank = dist.get_rank()
    with torch.no_grad():
        loss = nn.functional.mse_loss(model(x[rank::2]), y[rank::2])
    dist.all_reduce(loss)
    return loss / dist.get_world_size()


def fabric_run(out: Path, resume: bool) -> dict[str, Any]:
    fabric = Fabric(accelerator="cpu", devices=2, strategy="ddp")
    fabric.launch()
    net = TinyNet()
    model, optimizer = fabric.setup(net, Ranger(net.parameters(), lr=0.05, k=K))
    state = {"model": model, "optimizer": optimizer, "step": 0}
    if resume:
        fabric.load(out / "fabric.ckpt", state)
    losses = []
    step = 0
    for _ in range(EPOCHS):
        for x, y in rank_batches():
            step += 1
            if step <= state["step"]:
                continue
            fabric.backward(nn.functional.mse_loss(model(x), y))
            optimizer.step()
            optimizer.zero_grad()
            if step == SAVE_AT and not resume:
                state["step"] = step
                fabric.save(out / "fabric.ckpt", state)
        with optimizer.slow_weights():
            losses.append(float(evaluate(model)))
    fast = full(model.module)
    with optimizer.slow_weights():
        slow = full(model.module)
    return {"fast": fast, "slow": slow, "losses": losses, "steps": optimizer.steps}


def fsdp2_model(root_only: bool) -> nn.Module:
    model = TinyNet()
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    if not root_only:
        for layer in (model.layers["inp"], model.layers["out"]):
            fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def fsdp2_run(out: Path, root_only: bool, resume: bool) -> dict[str, Any]:
    model = fsdp2_model(root_only)
    optimizer = Lookahead(RAdam(model.parameters(), lr=0.05), k=K)
    tracker = RectificationTracker(optimizer, probe_size=PROBE, probe_history=HISTORY)
    checkpoint = out / f"fsdp2_{'root' if root_only else 'layers'}"
    start = 0
    if resume:
        state = {
            "model": get_model_state_dict(model),
            "optim": get_optimizer_state_dict(model, optimizer),
        }
        dcp.load(state, checkpoint_id=checkpoint)
        set_model_state_dict(model, state["model"])
        set_optimizer_state_dict(model, optimizer, state["optim"])
        tracker.load_state_dict(torch.load(checkpoint / "tracker.pt", weights_only=True))
        start = optimizer.steps
    step = 0
    losses = []
    for _ in range(EPOCHS):
        for x, y in rank_batches():
            step += 1
            if step <= start:
                continue
            nn.functional.mse_loss(model(x), y).backward()
            optimizer.step()
            tracker.update()
            optimizer.zero_grad()
            if step == SAVE_AT and not resume:
                state = {
                    "model": get_model_state_dict(model),
                    "optim": get_optimizer_state_dict(model, optimizer),
                }
                dcp.save(state, checkpoint_id=checkpoint)
                tracker_state = tracker.state_dict()  # gathered over the ranks: a collective
                if dist.get_rank() == 0:
                    torch.save(tracker_state, checkpoint / "tracker.pt")
                dist.barrier()
        # Evaluation on the slow weights at each epoch's end, with no checkpoint after it: the
        # root keeps its unsharded parameters after the forward, and training must go on with
        # the fast weights all the same.
        with optimizer.slow_weights(model):
            losses.append(float(evaluate(model)))
    record: dict[str, Any] = {"steps": optimizer.steps, "tracker": tracker.compute()}
    record["epoch_losses"] = losses
    try:  # DTensor parameters: the swap needs the module, to reshard it
        with optimizer.slow_weights():
            pass
    except ValueError as error:
        record["without_module"] = str(error)
    # Forwards without backward: the root keeps its unsharded parameters after each.
    record["fast_loss"] = float(evaluate(model))
    with optimizer.slow_weights(model):
        record["slow_loss"] = float(evaluate(model))
        record["slow"] = full(model)
    record["fast_loss_after"] = float(evaluate(model))
    record["fast"] = full(model)
    state = optimizer.state_dict()["state"]
    record["slow_is_sharded"] = all(isinstance(s[SLOW_KEY], DTensor) for s in state.values())
    return record


def main(out: Path, parts: list[str]) -> None:
    records: dict[str, Any] = {}
    for part in parts:
        if part == "fabric":
            records["fabric"] = fabric_run(out, resume=False)
            records["fabric_resumed"] = fabric_run(out, resume=True)
        else:
            for root_only in (False, True):
                name = f"{part}_{'root' if root_only else 'layers'}"
                records[name] = fsdp2_run(out, root_only, resume=False)
                records[f"{name}_resumed"] = fsdp2_run(out, root_only, resume=True)
    if dist.get_rank() == 0:
        torch.save(records, out / "plain_loops.pt")


if __name__ == "__main__":
    if not dist.is_initialized():
        dist.init_process_group("gloo")
    main(Path(sys.argv[1]), sys.argv[2:])
    leave_process_group()
