"""RangerConfig and RangerMixin: RAdam, Ranger or an Adam baseline from hyperparameters."""

from lightning_ranger.mixin.module import RangerConfig, RangerMixin

__all__ = ["RangerConfig", "RangerMixin"]
