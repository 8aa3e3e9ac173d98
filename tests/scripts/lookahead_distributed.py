"""Lookahead with 2 CPU processes (gloo), launched by ``tests/test_lookahead_distributed.py``
through :func:`helpers.launch.run_two_processes`.

Lightning sees the launcher's environment and does not start processes itself, so one launch runs
several Trainers in the same process group. For each variant in :data:`VARIANTS` (DDP; FSDP2
through ``ModelParallelStrategy`` with ``fully_shard``, with sharded or single-file checkpoints, in
float32 or bf16-true; FSDP1 through ``FSDPStrategy`` on the CPU, each linear layer its own FSDP
unit, with RAdam or SGD-momentum, in float32 or bf16-mixed; the ``*_root`` variants with the root
as the only FSDP unit) it fits 3 epochs uninterrupted, then 1
epoch that checkpoints mid-cycle, then resumes that checkpoint to 3 epochs, and saves each rank's
full fast and slow weights (at the end, and when training starts) to
``OUT/<variant>_<run>_rank<r>.pt`` for the test to compare. The ``*_nan`` variants (a NaN gradient
on one rank) and ``fsdp2_meta`` (parameters created on the meta device) fit uninterrupted only;
``fsdp2_tied`` fits a tied-embedding language model and keeps its sharded checkpoints.

Usage (from ``tests/``): ``python -m torch.distributed.run --nproc_per_node=2 --module
scripts.lookahead_distributed OUT VARIANT...``
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from helpers.launch import leave_process_group
from helpers.models import (
    NaNGradientNet,
    Net,
    RootShardedNet,
    ShardedNaNGradientNet,
    ShardedNet,
    ShardedTiedLM,
)
from helpers.sharded import CPUFSDPStrategy, full_fast_and_slow
from helpers.trainers import make_trainer
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn

from lightning_ranger.callbacks.lookahead import Lookahead
from lightning_ranger.callbacks.slow_weight_swap import SlowWeightSwap

K, ALPHA = 3, 0.5
CKPT = "epoch=0-step=5.ckpt"


class StartRecorder(Callback):
    """The full fast and slow weights when training starts (after a resume restored them)."""

    def __init__(self, lookahead: Lookahead) -> None:
        self.lookahead = lookahead
        self.record: dict[str, dict[str, torch.Tensor]] = {}

    def on_train_start(self, trainer: Trainer, pl_module: Net) -> None:  # type: ignore[override]
        fast, slow = full_fast_and_slow(self.lookahead, pl_module, trainer)
        self.record["start_fast"], self.record["start_slow"] = fast, slow


# variant: (strategy[:FSDP1 sharding strategy], save_distributed_checkpoint, precision,
# optimizer). Every fit runs Lightning's sanity check and validates at each epoch's end, on the
# slow weights (SlowWeightSwap).
VARIANTS = {
    "ddp": ("ddp", False, "32-true", "radam"),
    "fsdp2": ("fsdp2", True, "32-true", "radam"),
    "fsdp2_full": ("fsdp2", False, "32-true", "radam"),
    # The root as the only FSDP2 unit, and the root FSDP1 unit holding every parameter
    # (Lightning's default, no auto-wrap policy): both keep the root's unsharded parameters after
    # the validation forward, which the swap must not let into training.
    "fsdp2_root": ("fsdp2", True, "32-true", "radam"),
    "fsdp1_root": ("fsdp1", False, "32-true", "radam"),
    "fsdp2_bf16": ("fsdp2", True, "bf16-true", "radam"),
    "fsdp1": ("fsdp1", False, "32-true", "radam"),
    "fsdp1_sgd": ("fsdp1", False, "32-true", "sgd"),
    "fsdp1_bf16": ("fsdp1", False, "bf16-mixed", "sgd"),
    "fsdp1_bf16_true": ("fsdp1", False, "bf16-true", "sgd"),
    "fsdp1_no_shard": ("fsdp1:NO_SHARD", False, "32-true", "sgd"),
    "fsdp1_shard_grad_op": ("fsdp1:SHARD_GRAD_OP", False, "32-true", "radam"),
    "fsdp2_full_bf16": ("fsdp2", False, "bf16-true", "radam"),
    "fsdp2_bf16_mixed": ("fsdp2", True, "bf16-mixed", "radam"),
    "ddp_bf16": ("ddp", False, "bf16-mixed", "radam"),
    "ddp_bf16_true": ("ddp", False, "bf16-true", "radam"),
    "ddp_16_true": ("ddp", False, "16-true", "radam"),
    "fsdp2_16_true": ("fsdp2", True, "16-true", "radam"),
    "fsdp1_16_true": ("fsdp1", False, "16-true", "sgd"),
    # A NaN in rank 1's gradient (its shard, under FSDP2) of `out.bias` at step 6, right before
    # the sync: only rank 1 sees a non-finite fast weight there. Fitted uninterrupted only.
    "ddp_nan": ("ddp", False, "32-true", "radam"),
    "fsdp2_nan": ("fsdp2", True, "32-true", "radam"),
    # Parameters created on the meta device (`trainer.init_module(empty_init=True)`); Lightning
    # materializes them (`to_empty`, `reset_parameters`) before Lookahead copies them.
    "fsdp2_meta": ("fsdp2", True, "32-true", "radam"),
}
NAN_AT_STEP, NAN_RANK = 6, 1
#: Suffixes of the variants fitted uninterrupted only (no checkpoint, no resume).
UNINTERRUPTED_ONLY = ("_nan", "_meta")


def fit(out: Path, variant: str, run: str, max_epochs: int, ckpt_path: Any = None) -> None:
    kind, distributed_checkpoint, precision, optimizer = VARIANTS[variant]
    kind, _, sharding = kind.partition(":")  # FSDP1's sharding strategy, if not FULL_SHARD
    seed = 7 if ckpt_path else 0
    strategy: Any = "ddp"
    if kind == "fsdp2":
        strategy = ModelParallelStrategy(
            data_parallel_size=2,
            tensor_parallel_size=1,
            save_distributed_checkpoint=distributed_checkpoint,
        )
    elif kind == "fsdp1":
        policy = {} if variant.endswith("_root") else {"auto_wrap_policy": {nn.Linear}}
        strategy = CPUFSDPStrategy(sharding_strategy=sharding or "FULL_SHARD", **policy)
    lookahead = Lookahead(k=K, alpha=ALPHA, final_weights="fast")
    start = StartRecorder(lookahead)
    checkpoint = ModelCheckpoint(dirpath=out / variant / run, save_top_k=-1, every_n_epochs=1)
    trainer = make_trainer(
        out / variant / run,
        [lookahead, SlowWeightSwap(), checkpoint, start],
        devices=2,
        strategy=strategy,
        precision=precision,
        max_epochs=max_epochs,
        limit_val_batches=None,
        num_sanity_val_steps=2,
        enable_checkpointing=True,
    )
    if variant.endswith("_nan"):
        nan_class = ShardedNaNGradientNet if kind == "fsdp2" else NaNGradientNet
        model: Net = nan_class(NAN_AT_STEP, (NAN_RANK,), optimizer=optimizer, seed=seed)
    elif variant.endswith("_meta"):  # deferred initialisation: Lightning materializes in setup
        with trainer.init_module(empty_init=True):
            model = ShardedNet(optimizer, seed=seed)
        assert all(p.is_meta for p in model.parameters())
    elif kind == "fsdp2":
        model = (RootShardedNet if variant.endswith("_root") else ShardedNet)(optimizer, seed=seed)
    else:
        model = Net(optimizer, seed=seed)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model, ckpt_path=ckpt_path)
    fast, slow = full_fast_and_slow(lookahead, model, trainer)
    record = {
        "fast": fast,
        "slow": slow,
        "step": trainer.global_step,
        "restores": lookahead.restores,
        "warnings": [str(w.message) for w in caught if "NaN" in str(w.message)],
        **start.record,
    }
    torch.save(record, out / f"{variant}_{run}_rank{trainer.global_rank}.pt")


def fit_tied(out: Path) -> None:
    """The tied language model under FSDP2 with sharded checkpoints: 2 epochs of 3 steps, k=4, so
    the epoch-1 checkpoint (step 6) is 2 steps after a sync; saves the full slow weights."""
    lookahead = Lookahead(k=4, alpha=ALPHA, final_weights="fast")
    checkpoint = ModelCheckpoint(dirpath=out / "fsdp2_tied", save_top_k=-1, every_n_epochs=1)
    trainer = make_trainer(
        out / "fsdp2_tied",
        [lookahead, checkpoint],
        devices=2,
        strategy=ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1),
        max_epochs=2,
        enable_checkpointing=True,
    )
    model = ShardedTiedLM()
    trainer.fit(model)
    fast, slow = full_fast_and_slow(lookahead, model, trainer)
    torch.save({"fast": fast, "slow": slow}, out / f"fsdp2_tied_rank{trainer.global_rank}.pt")


def main(out: Path, variants: list[str]) -> None:
    for variant in variants:
        if variant == "fsdp2_tied":
            fit_tied(out)
            continue
        fit(out, variant, "uninterrupted", max_epochs=3)
        if variant.endswith(UNINTERRUPTED_ONLY):
            continue
        fit(out, variant, "first", max_epochs=1)
        # 5 steps per epoch: the epoch-0 checkpoint is 2 steps into a 3-step cycle.
        fit(out, variant, "resumed", max_epochs=3, ckpt_path=out / variant / "first" / CKPT)


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])
    leave_process_group()
