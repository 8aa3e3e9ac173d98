"""RangerConfig: what :class:`~lightning_ranger.mixin.RangerMixin` builds, checked when made."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

from lightning_ranger._validation import check_bool, check_choice, check_real
from lightning_ranger.callbacks.lookahead import Lookahead
from lightning_ranger.optim.radam import validate_options
from lightning_ranger.optim.rectification import DEFAULT_RECTIFY_THRESHOLD
from lightning_ranger.optim.schedules import ScheduleName, check_schedule_options

__all__ = ["OPTIMIZERS", "OptimizerName", "RangerConfig"]

OptimizerName = Literal["radam", "ranger", "adam", "adamw"]
OPTIMIZERS: tuple[OptimizerName, ...] = get_args(OptimizerName)

#: The on/off fields that only this config reads, so only it checks them.
_SWITCHES = ("no_decay_norm_and_bias", "slow_weight_eval", "monitor", "gradient_centralization")


@dataclass(frozen=True)
class RangerConfig:
    """What :class:`~lightning_ranger.mixin.RangerMixin` builds: the optimizer, its schedule and
    its callbacks.

    Args:
        optimizer: ``"ranger"`` (RAdam + Lookahead), ``"radam"``, or the baselines ``"adam"`` (L2
            weight decay) and ``"adamw"`` (decoupled weight decay), from ``torch.optim``.
        lr: the peak learning rate, ``> 0``.
        betas: decay rates of the moments, each in ``[0, 1)``.
        eps: the denominator's epsilon, ``>= 0``.
        weight_decay: ``>= 0``.
        decoupled_weight_decay: RAdam/Ranger only: AdamW-style decay instead of L2.
        rectify_threshold: RAdam/Ranger only: rectify while ``rho_t`` exceeds it, ``>= 4``.
        k: Ranger only: optimizer steps between Lookahead syncs, a positive int.
        alpha: Ranger only: Lookahead's slow-weight step, in ``(0, 1]``.
        no_decay_norm_and_bias: when ``weight_decay > 0``, put biases, other 1-D parameters and
            normalization weights in a param group named ``"no_decay"`` without weight decay.
        schedule: ``"constant"``, ``"linear_warmup"``, ``"flat_cosine"`` or ``"cosine"``, stepped
            per optimizer step (see :class:`~lightning_ranger.optim.schedules.LRSchedule`).
        warmup_steps: a linear warmup from 0 over this many optimizer steps, first in every
            schedule.
        flat_fraction: the share of the post-warmup steps that ``"flat_cosine"`` keeps flat.
        slow_weight_eval: Ranger only: validate, test and predict on the slow weights
            (:class:`~lightning_ranger.callbacks.slow_weight_swap.SlowWeightSwap`).
        monitor: log RAdam's rectification statistics
            (:class:`~lightning_ranger.callbacks.rectification_monitor.RectificationMonitor`).
        gradient_centralization: centralize the gradients of conv and linear weights before
            every optimizer step (:class:`~lightning_ranger.callbacks.GradientCentralization`),
            as the 2020 Ranger optimizer did by default. Off here: it changes the optimizer's
            trajectory, and the RAdam and Lookahead papers do not use it.

    Raises:
        TypeError: naming the field and its accepted values, for a field of the wrong type.
        ValueError: naming the field and its accepted values, for a field outside them.

    Example::

        >>> RangerConfig(optimizer="radam", lr=3e-3, schedule="cosine").lr
        0.003

    """

    optimizer: OptimizerName = "ranger"
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    decoupled_weight_decay: bool = False
    rectify_threshold: float = DEFAULT_RECTIFY_THRESHOLD
    k: int = 6
    alpha: float = 0.5
    no_decay_norm_and_bias: bool = True
    schedule: ScheduleName = "constant"
    warmup_steps: int = 0
    flat_fraction: float = 0.72
    slow_weight_eval: bool = True
    monitor: bool = True
    gradient_centralization: bool = False

    def __post_init__(self) -> None:
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        if isinstance(self.betas, list):  # from YAML or a checkpoint's plain data
            object.__setattr__(self, "betas", tuple(self.betas))
        # RAdam accepts lr=0; a peak learning rate of 0 would train nothing.
        check_real("lr", self.lr, 0.0, low_open=True)
        # RAdam and Lookahead own the ranges of their options; the baselines share RAdam's.
        validate_options(
            lr=self.lr,
            betas=self.betas,
            eps=self.eps,
            weight_decay=self.weight_decay,
            decoupled_weight_decay=self.decoupled_weight_decay,
            rectify_threshold=self.rectify_threshold,
        )
        if self.optimizer == "ranger":
            Lookahead(k=self.k, alpha=self.alpha)
        for switch in _SWITCHES:
            check_bool(switch, getattr(self, switch))
        check_schedule_options(self.schedule, self.warmup_steps, self.flat_fraction)

    @classmethod
    def from_value(cls, value: RangerConfig | Mapping[str, Any]) -> RangerConfig:
        """A config from a ``RangerConfig`` or a mapping of its fields (YAML, a checkpoint).

        Raises:
            TypeError: if ``value`` is neither, or a field has the wrong type.
            ValueError: for an unknown field, or a field outside its values.

        """
        if isinstance(value, RangerConfig):
            return value
        if not isinstance(value, Mapping):
            raise TypeError(
                f"the `ranger` hyperparameter must be a RangerConfig or a dict of its fields, "
                f"got {type(value).__name__}"
            )
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(value) - fields)
        if unknown:
            raise ValueError(f"unknown `ranger` fields {unknown}; the fields are {sorted(fields)}")
        return cls(**value)

    def as_dict(self) -> dict[str, Any]:
        """The fields as plain data (a list for ``betas``): safe YAML, and loadable with
        ``weights_only=True``; :meth:`from_value` reads it back.

        Example::

            >>> config = RangerConfig(optimizer="radam", betas=(0.8, 0.99))
            >>> config.as_dict()["betas"]
            [0.8, 0.99]
            >>> RangerConfig.from_value(config.as_dict()) == config
            True

        """
        data = dataclasses.asdict(self)
        data["betas"] = list(self.betas)
        return data
