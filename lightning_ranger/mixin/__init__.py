"""RangerConfig and RangerMixin: RAdam, Ranger or an Adam baseline from hyperparameters.

- :mod:`~lightning_ranger.mixin.config`: :class:`RangerConfig`, the fields and their checks.
- :mod:`~lightning_ranger.mixin.param_groups`: which parameters get weight decay.
- :mod:`~lightning_ranger.mixin.factory`: the optimizer, scheduler and callbacks of a config.
- :mod:`~lightning_ranger.mixin.module`: :class:`RangerMixin`, whose hooks call the factory.
"""

from lightning_ranger.mixin.config import RangerConfig
from lightning_ranger.mixin.module import RangerMixin

__all__ = ["RangerConfig", "RangerMixin"]
