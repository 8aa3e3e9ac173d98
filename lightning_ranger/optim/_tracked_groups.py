"""Which param groups the rectification statistics watch, what they read of the optimizer state,
and their probes as this rank holds them. Plain PyTorch."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.optim import Optimizer

from lightning_ranger.optim._flat_shards import FlatShardLayout
from lightning_ranger.optim._rectification_naming import group_suffixes, tag
from lightning_ranger.optim._state_keys import state_keys
from lightning_ranger.optim.adaptive_lr import Probe
from lightning_ranger.optim.lookahead_optimizer import Lookahead
from lightning_ranger.optim.rectification import DEFAULT_RECTIFY_THRESHOLD

__all__ = [
    "TrackedGroup",
    "build_probes",
    "held_states",
    "tracked_groups",
    "untrackable",
    "without_adam_state",
]

State = dict[str, Any]


@dataclass(frozen=True)
class TrackedGroup:
    """One tracked param group: ``optimizer.param_groups[index]``, of the optimizer at
    ``optimizer_index`` (from 1) among those tracked, named with ``suffix``."""

    optimizer: Optimizer
    optimizer_index: int
    index: int
    suffix: str

    @property
    def options(self) -> dict[str, Any]:
        return self.optimizer.param_groups[self.index]

    @property
    def beta2(self) -> float:
        return float(self.options["betas"][1])

    @property
    def eps(self) -> float:
        return float(self.options["eps"])

    @property
    def threshold(self) -> float:
        """The group's ``rectify_threshold``; torch's Adam, RAdam, ... have none and get RAdam's
        default."""
        return float(self.options.get("rectify_threshold", DEFAULT_RECTIFY_THRESHOLD))

    def tag(self, metric: str) -> str:
        return tag(metric, self.suffix)

    def states(self) -> list[State]:
        """The optimizer states of the group's parameters that this rank holds (none before the
        first step; under FSDP1 none of a parameter without elements on this rank)."""
        return [s for s in map(self.optimizer.state.get, self.options["params"]) if s]

    def latest_step(self) -> float | None:
        """The largest optimizer ``step`` in this rank's states of the group, if any."""
        steps = [float(s["step"]) for s in self.states() if "step" in s]
        return max(steps) if steps else None


def untrackable(optimizer: Optimizer) -> str | None:
    """Why ``optimizer`` has nothing to track, ``None`` if it has: the statistics need param
    groups with ``betas`` and ``eps`` and a state with ``step`` and ``exp_avg_sq``, as Adam, AdamW,
    RAdam and NAdam have (Adamax, for one, has ``betas`` and ``eps`` but another state). A
    :class:`~lightning_ranger.optim.Lookahead` is judged by its inner optimizer."""
    if isinstance(optimizer, Lookahead):
        optimizer = optimizer.optimizer
    needs = (
        "it needs param groups with `betas` and `eps` and a state with `step` and `exp_avg_sq`, "
        "as Adam, AdamW, RAdam and NAdam have"
    )
    if not all("betas" in g and "eps" in g for g in optimizer.param_groups):
        return needs
    keys = state_keys(optimizer)
    if keys is not None and not {"step", "exp_avg_sq"} <= keys:
        return f"{needs}, not {sorted(keys)}"
    return None


def tracked_groups(
    optimizers: Sequence[Optimizer], prefixes: Sequence[str] | None = None
) -> list[TrackedGroup]:
    """Every param group of the ``optimizers``, named as ``LearningRateMonitor`` names them,
    after each optimizer's prefix (default: ``/opt{j}``, ``j`` from 1, when there are several).

    Raises:
        ValueError: if two param groups of an optimizer would be named the same.

    """
    if prefixes is None:
        several = len(optimizers) > 1
        prefixes = [f"/opt{j}" if several else "" for j in range(1, len(optimizers) + 1)]
    groups = []
    for j, (optimizer, prefix) in enumerate(zip(optimizers, prefixes, strict=True), start=1):
        suffixes = group_suffixes(optimizer, prefix)
        groups += [TrackedGroup(optimizer, j, i, s) for i, s in enumerate(suffixes)]
    return groups


def held_states(groups: Iterable[TrackedGroup]) -> dict[TrackedGroup, list[State]]:
    """The groups for which this rank holds optimizer state, with it."""
    found = {group: group.states() for group in groups}
    return {group: states for group, states in found.items() if states}


def without_adam_state(found: Mapping[TrackedGroup, list[State]]) -> dict[int, Optimizer]:
    """By index, the optimizers of ``found`` whose state lacks ``step`` or ``exp_avg_sq`` (Adamax,
    for example, which has ``betas`` and ``eps`` but another state)."""
    return {
        group.optimizer_index: group.optimizer
        for group, states in found.items()
        if any("step" not in s or "exp_avg_sq" not in s for s in states)
    }


def build_probes(
    groups: Iterable[TrackedGroup],
    size: int,
    capacity: int,
    world_size: int,
    flat_device: torch.device | None,
) -> dict[TrackedGroup, Probe]:
    """The probe of every group, as this rank holds it; ``flat_device`` is where to gather the
    sizes of FSDP1's flat shards, ``None`` for whole or DTensor parameters."""
    probes = {}
    for group in groups:
        params = list(group.options["params"])
        flat_slices = None
        if flat_device is not None:
            # A collective: every rank builds the probes of every group, in the same order.
            layout = FlatShardLayout(params, flat_device)
            flat_slices = [
                (sum(sizes[i] for sizes in layout.sizes), layout.offsets[i])
                for i in range(len(params))
            ]
        probes[group] = Probe(params, size, capacity, world_size, flat_slices)
    return probes
