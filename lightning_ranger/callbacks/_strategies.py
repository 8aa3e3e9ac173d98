"""Which Lightning strategies the callbacks take: those whose parameters keep their names and
shapes (or shard them as DTensors), not the flat-parameter ones."""

from __future__ import annotations

from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, Strategy

__all__ = ["SUPPORTED_STRATEGIES", "refuse_flat_parameter_strategies"]

SUPPORTED_STRATEGIES = (
    'a single device, `strategy="ddp"` (or its spawn/fork variants), or `ModelParallelStrategy` '
    "with `torch.distributed.fsdp.fully_shard` applied in `configure_model` (FSDP2)"
)


def refuse_flat_parameter_strategies(strategy: Strategy, callback: str, reason: str) -> None:
    """Raise a ``ValueError`` for ``FSDPStrategy`` (FSDP1) and ``DeepSpeedStrategy``, whose
    flattened parameters ``callback`` cannot handle (``reason`` says why), naming what works."""
    if isinstance(strategy, (DeepSpeedStrategy, FSDPStrategy)):
        raise ValueError(
            f"`{callback}` does not support `Trainer(strategy={type(strategy).__name__})`: "
            f"{reason}. Use {SUPPORTED_STRATEGIES}."
        )
