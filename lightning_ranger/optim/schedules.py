"""Learning-rate schedules per optimizer step: linear warmup, flat-then-cosine and cosine.

Each schedule is a :class:`LRSchedule`, a picklable multiplier of the base learning rate that
torch's :class:`~torch.optim.lr_scheduler.LambdaLR` applies, so the scheduler's ``state_dict`` holds
plain numbers and resumes exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, get_args

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from lightning_ranger._validation import check_choice, check_int, check_real

__all__ = ["SCHEDULES", "LRSchedule", "ScheduleName", "build_scheduler", "check_schedule_options"]

ScheduleName = Literal["constant", "linear_warmup", "flat_cosine", "cosine"]
SCHEDULES: tuple[ScheduleName, ...] = get_args(ScheduleName)


def check_schedule_options(name: object, warmup_steps: object, flat_fraction: object) -> None:
    """Validate the options of a schedule that do not depend on the run's length.

    Raises:
        TypeError: if an option has the wrong type, naming it and what it accepts.
        ValueError: if an option is outside its accepted values, naming it and them.

    Example::

        >>> check_schedule_options("flat_cosine", 100, 0.72)
        >>> check_schedule_options("linear_warmup", 0, 0.72)
        Traceback (most recent call last):
            ...
        ValueError: `schedule='linear_warmup'` needs `warmup_steps` > 0, got 0

    """
    check_choice("schedule", name, SCHEDULES)
    check_int("warmup_steps", warmup_steps, minimum=0)
    if name == "linear_warmup" and warmup_steps == 0:
        raise ValueError("`schedule='linear_warmup'` needs `warmup_steps` > 0, got 0")
    check_real("flat_fraction", flat_fraction, 0.0, 1.0)


@dataclass(frozen=True)
class LRSchedule:
    r"""The factor of the base learning rate for the optimizer step ``s`` (0-based: the number of
    steps taken before it), over a horizon of ``total_steps`` optimizer steps.

    With ``W = warmup_steps``, every schedule starts with a linear warmup from 0,
    ``factor(s) = s / W`` for ``s < W``; after it:

    - ``constant`` and ``linear_warmup``: ``1``;
    - ``cosine``: ``(1 + cos(pi * (s - W) / (T - W))) / 2`` over the remaining ``T - W`` steps;
    - ``flat_cosine``: ``1`` until ``F = W + flat_fraction * (T - W)``, then
      ``(1 + cos(pi * (s - F) / (T - F))) / 2`` (Ranger's usual flat-then-anneal schedule).

    Steps past the horizon keep the last factor (0 for the cosine schedules).

    Args:
        name: one of ``"constant"``, ``"linear_warmup"``, ``"flat_cosine"``, ``"cosine"``.
        warmup_steps: length of the linear warmup, ``>= 0`` (``> 0`` for ``"linear_warmup"``).
        total_steps: the horizon ``T`` (optimizer steps of the whole run); needed by the cosine
            schedules, ``None`` (unknown) or ``math.inf`` is allowed for the others.
        flat_fraction: fraction of the post-warmup steps that ``"flat_cosine"`` keeps flat, in
            ``[0, 1]``.

    Raises:
        TypeError: if ``name``, ``warmup_steps`` or ``flat_fraction`` has the wrong type.
        ValueError: for an unknown name, a negative or too long warmup, a cosine schedule without
            a finite horizon, or a ``flat_fraction`` outside ``[0, 1]``.

    Example::

        >>> schedule = LRSchedule("cosine", warmup_steps=10, total_steps=110)
        >>> schedule(0), schedule(5), schedule(10), schedule(60), schedule(110)
        (0.0, 0.5, 1.0, 0.5, 0.0)

    """

    name: ScheduleName
    warmup_steps: int = 0
    total_steps: float | None = None
    flat_fraction: float = 0.72

    def __post_init__(self) -> None:
        check_schedule_options(self.name, self.warmup_steps, self.flat_fraction)
        finite = self.total_steps is not None and math.isfinite(self.total_steps)
        if self.name in ("cosine", "flat_cosine") and not finite:
            raise ValueError(
                f"`schedule={self.name!r}` needs a finite number of training steps: set the "
                "Trainer's `max_steps` or `max_epochs`"
            )
        if finite and self.warmup_steps > self.total_steps:  # type: ignore[operator]
            raise ValueError(
                f"`warmup_steps` ({self.warmup_steps}) must not exceed the total number of "
                f"optimizer steps ({self.total_steps})"
            )

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return step / self.warmup_steps
        if self.name in ("constant", "linear_warmup"):
            return 1.0
        assert self.total_steps is not None  # checked in __post_init__
        start: float = self.warmup_steps
        if self.name == "flat_cosine":
            start += self.flat_fraction * (self.total_steps - self.warmup_steps)
            if step < start:
                return 1.0
        length = self.total_steps - start
        progress = min(1.0, (step - start) / length) if length > 0 else 1.0
        return 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: Optimizer, schedule: LRSchedule) -> LambdaLR:
    """A :class:`~torch.optim.lr_scheduler.LambdaLR` that applies ``schedule`` to every param
    group of ``optimizer``; step it once per optimizer step.

    Example::

        >>> import torch
        >>> optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
        >>> scheduler = build_scheduler(optimizer, LRSchedule("linear_warmup", warmup_steps=4))
        >>> [round(g["lr"], 3) for g in optimizer.param_groups]
        [0.0]

    """
    return LambdaLR(optimizer, schedule)
