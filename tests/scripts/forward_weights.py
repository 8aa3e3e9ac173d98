"""The weights that each forward computes with, under Lookahead with and without SlowWeightSwap,
with 2 CPU processes (gloo); launched by ``tests/test_forward_weights.py`` through
:func:`helpers.launch.run_two_processes`.

For each strategy of :data:`STRATEGIES` and each scenario of :data:`SCENARIOS` it fits the
regression ``Net`` (3 epochs of 5 steps, ``Lookahead(k=4)``, whose last sync is 3 steps before the
end) and records, at every forward of every linear layer, the full weights that the layer computes
with (:class:`~helpers.sharded.ForwardRecorder`); rank 0 saves them to
``OUT/<strategy>_<scenario>.pt`` with the full fast and slow weights at the end. After the fit, the
``show`` scenario runs forwards on the fast weights, on the slow weights (``show_slow_weights()``)
and on the fast ones again (``show_fast_weights()``), and ``final_slow`` runs one forward after
``Lookahead(final_weights="slow")``.

Usage (from ``tests/``): ``python -m torch.distributed.run --nproc_per_node=2 --module
scripts.forward_weights OUT STRATEGY...``
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
from helpers.data import make_data
from helpers.launch import leave_process_group
from helpers.models import Net, RootShardedNet, ShardedNet
from helpers.sharded import CPUFSDPStrategy, ForwardRecorder, full_fast_and_slow
from helpers.trainers import make_trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn

from lightning_ranger.callbacks.lookahead import Lookahead
from lightning_ranger.callbacks.slow_weight_swap import SlowWeightSwap

K, EPOCHS = 4, 3

#: strategy: (Lightning strategy kind, FSDP1 sharding strategy or FSDP2 layout, auto-wrap Linear)
STRATEGIES = {
    "ddp": ("ddp", None, False),
    # FSDP2: each linear layer its own unit beside the root; the root alone holding every parameter.
    "fsdp2": ("fsdp2", "layers", False),
    "fsdp2_root": ("fsdp2", "root", False),
    # FSDP1: each linear layer its own unit; the root unit holding every parameter (Lightning's
    # default, no auto-wrap policy), fully sharded or not sharded.
    "fsdp1": ("fsdp1", "FULL_SHARD", True),
    "fsdp1_root": ("fsdp1", "FULL_SHARD", False),
    "fsdp1_no_shard": ("fsdp1", "NO_SHARD", False),
    # FSDP1 keeping every unit's parameters unsharded after a forward until the next backward.
    "fsdp1_shard_grad_op": ("fsdp1", "SHARD_GRAD_OP", True),
}

#: scenario: (SlowWeightSwap, Trainer arguments, checkpoint every n epochs or None). ``baseline``
#: neither validates nor checkpoints; every other scenario must train exactly as it does.
SCENARIOS: dict[str, tuple[bool, dict[str, Any], int | None]] = {
    "baseline": (False, {"limit_val_batches": 0, "num_sanity_val_steps": 0}, None),
    # Validation without the swap, checkpoints every epoch: the controls.
    "no_swap": (False, {}, 1),
    # The sanity check (Lightning's default) and a validation at each epoch's end.
    "sanity": (True, {}, None),
    # Validation after every 2 training batches, inside the epochs.
    "interval": (True, {"val_check_interval": 2}, None),
    "every_2_epochs": (True, {"check_val_every_n_epoch": 2}, None),
    "checkpoint_every_epoch": (True, {}, 1),
    "checkpoint_every_2_epochs": (True, {}, 2),
    # Two fits, the second continuing the first's steps, with `trainer.validate()` between them
    # (``two_fits_baseline``: without validation).
    "two_fits_baseline": (False, {"limit_val_batches": 0, "num_sanity_val_steps": 0}, None),
    "two_fits_validate": (True, {}, None),
    # Forwards outside `fit`: `show_*_weights()` by hand, and `final_weights="slow"`.
    "show": (True, {}, None),
    "final_slow": (True, {}, None),
}


def make_model(strategy: str) -> Net:
    kind, layout, _ = STRATEGIES[strategy]
    if kind == "fsdp2":
        return (ShardedNet if layout == "layers" else RootShardedNet)("radam")
    return Net("radam")


def make_strategy(strategy: str) -> Any:
    kind, layout, wrap = STRATEGIES[strategy]
    if kind == "fsdp2":
        return ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1)
    if kind == "fsdp1":
        policy = {"auto_wrap_policy": {nn.Linear}} if wrap else {}
        return CPUFSDPStrategy(sharding_strategy=layout, **policy)
    return "ddp"


def forward(trainer: Any, model: Net) -> None:
    """One evaluation forward on a validation batch, as a user would call the module (FSDP1 runs
    it through its root wrapper, which holds the module)."""
    x, _ = make_data(8, seed=99)[trainer.global_rank :: 2]
    with torch.no_grad():
        trainer.strategy.model(x)


def run(out: Path, strategy: str, scenario: str) -> None:
    swap, trainer_kwargs, checkpoint_every = SCENARIOS[scenario]
    final_weights = "slow" if scenario == "final_slow" else "fast"
    lookahead = Lookahead(k=K, alpha=0.5, final_weights=final_weights)
    recorder = ForwardRecorder()
    callbacks: list[Any] = [lookahead, recorder]
    if swap:
        callbacks.append(SlowWeightSwap())
    if checkpoint_every is not None:
        callbacks.append(
            ModelCheckpoint(
                dirpath=out / strategy / scenario, save_top_k=-1, every_n_epochs=checkpoint_every
            )
        )
    two_fits = scenario.startswith("two_fits")
    trainer = make_trainer(
        out / strategy / scenario,
        callbacks,
        devices=2,
        strategy=make_strategy(strategy),
        max_epochs=EPOCHS - 1 if two_fits else EPOCHS,
        enable_checkpointing=checkpoint_every is not None,
        **{"limit_val_batches": None, "num_sanity_val_steps": 2, **trainer_kwargs},
    )
    model = make_model(strategy)
    trainer.fit(model)
    if two_fits:
        if scenario == "two_fits_validate":
            trainer.validate(model)
        trainer.fit_loop.max_epochs = EPOCHS
        trainer.fit(model)
    record: dict[str, Any] = {"step": trainer.global_step}
    validations = len(recorder.evaluation)
    if scenario == "final_slow":
        forward(trainer, model)
    elif scenario == "show":
        forward(trainer, model)
        assert lookahead.show_slow_weights()
        forward(trainer, model)
        lookahead.show_fast_weights()
        forward(trainer, model)
    if final_weights == "slow":
        lookahead.show_fast_weights()
    record["fast"], record["slow"] = full_fast_and_slow(lookahead, model, trainer)
    record["training"] = recorder.training
    record["evaluation"] = recorder.evaluation[:validations]
    record["after_fit"] = recorder.evaluation[validations:]
    if trainer.global_rank == 0:
        torch.save(record, out / f"{strategy}_{scenario}.pt")


def scenarios(strategy: str) -> list[str]:
    """The scenarios that run under ``strategy``. Lightning cannot take a module through several
    stages (fit, validate, fit) under FSDP1: each stage's strategy set-up wraps it again, or finds
    it wrapped without its root unit, whose state stays in its last forward; this fails without
    any callback of this package (Lightning issue 19015)."""
    two_stages = STRATEGIES[strategy][0] != "fsdp1"
    return [s for s in SCENARIOS if two_stages or not s.startswith("two_fits")]


def main(out: Path, strategies: list[str]) -> None:
    for strategy in strategies:
        for scenario in scenarios(strategy):
            run(out, strategy, scenario)


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])
    leave_process_group()
