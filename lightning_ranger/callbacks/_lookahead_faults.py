"""What :class:`~lightning_ranger.callbacks.lookahead.Lookahead` does about a NaN or infinite fast
weight before a sync: find it on any rank, and restart the fast weights from the slow ones."""

from __future__ import annotations

import lightning.pytorch as pl
from lightning.pytorch.utilities.rank_zero import rank_zero_warn

from lightning_ranger.callbacks._slow_weights import SlowWeights

__all__ = ["RESTORES_METRIC", "nonfinite_parameter", "restart_fast_weights"]

#: The metric under which Lookahead logs its running count of restores.
RESTORES_METRIC = "lookahead/restores"


def nonfinite_parameter(weights: SlowWeights, trainer: pl.Trainer) -> str | None:
    """The name of the first tracked parameter whose fast weights hold a NaN or an infinity on
    any rank (one all-reduce, which every rank must join), ``None`` if none does: every rank gets
    the same answer, so all of them sync or all of them restore."""
    index = weights.nonfinite(trainer.strategy.root_device)
    return None if index is None else weights.names[index]


def restart_fast_weights(
    weights: SlowWeights, trainer: pl.Trainer, name: str, synced_at_step: int, restores: int
) -> None:
    """Reset the fast weights to the slow ones and empty every optimizer's state (its moments
    were computed from the faulty weights), then warn and log ``restores``, the running count."""
    weights.restore()
    for optimizer in trainer.optimizers:
        optimizer.state.clear()
    step = trainer.global_step
    rank_zero_warn(
        f"Lookahead found a NaN or infinite fast weight in parameter {name!r} at step {step}: "
        f"the fast weights restart from the slow weights of step {synced_at_step} and "
        f"the optimizers' state is cleared (restores so far: {restores})"
    )
    for logger in trainer.loggers:
        logger.log_metrics({RESTORES_METRIC: float(restores)}, step=step)
