"""Which param groups the rectification statistics watch, pooled by the hyperparameters that set
the law of the adaptive lr, what they read of the optimizer state, and their probes as this rank
holds them. Plain PyTorch."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from lightning_ranger.optim._flat_shards import FlatShardLayout
from lightning_ranger.optim._rectification_naming import pooled_suffixes, tag
from lightning_ranger.optim._state_keys import state_keys
from lightning_ranger.optim.adaptive_lr import Probe
from lightning_ranger.optim.lookahead_optimizer import Lookahead
from lightning_ranger.optim.rectification import DEFAULT_RECTIFY_THRESHOLD

__all__ = [
    "TrackedGroup",
    "build_probes",
    "held_states",
    "probe_shares",
    "tracked_groups",
    "untrackable",
    "without_adam_state",
]

State = dict[str, Any]


@dataclass(frozen=True)
class TrackedGroup:
    """What the statistics are taken over: the param groups ``optimizer.param_groups[i]``, ``i``
    in ``indices``, of the optimizer at ``optimizer_index`` (from 1) among those tracked, named
    with ``suffix``: one group, or every group of the optimizer that shares ``beta2``, ``eps`` and
    ``rectify_threshold`` with it (the step ``t`` and the law of the adaptive lr do not depend on
    the lr), pooled as if they were one."""

    optimizer: Optimizer
    optimizer_index: int
    indices: tuple[int, ...]
    suffix: str

    @property
    def options(self) -> dict[str, Any]:
        """The options of the first of the groups (the others share those that matter here)."""
        return self.optimizer.param_groups[self.indices[0]]

    @property
    def params(self) -> list[Tensor]:
        return [p for i in self.indices for p in self.optimizer.param_groups[i]["params"]]

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
        return _threshold(self.options)

    def tag(self, metric: str) -> str:
        return tag(metric, self.suffix)

    def states(self) -> list[State]:
        """The optimizer states of the groups' parameters that this rank holds (none before the
        first step; under FSDP1 none of a parameter without elements on this rank)."""
        return list(self._held_states())

    def _held_states(self) -> Iterator[State]:
        return (s for s in map(self.optimizer.state.get, self.params) if s)

    def latest_step(self, after: float = -math.inf) -> float | None:
        """The optimizer ``step`` of this rank's states of the groups, ``None`` without state:
        the first state's when it is past ``after`` (a new step, told without reading the
        others), else the largest."""
        steps = (float(s["step"]) for s in self._held_states() if "step" in s)  # read lazily
        first = next(steps, None)
        if first is None or first > after:
            return first
        return max(first, max(steps, default=first))


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


def _threshold(options: Mapping[str, Any]) -> float:
    return float(options.get("rectify_threshold", DEFAULT_RECTIFY_THRESHOLD))


def tracked_groups(
    optimizers: Sequence[Optimizer], prefixes: Sequence[str] | None = None, pool: bool = True
) -> list[TrackedGroup]:
    """What to track of the ``optimizers``: with ``pool``, one :class:`TrackedGroup` per set of
    param groups of an optimizer that share ``beta2``, ``eps`` and ``rectify_threshold``, else one
    per param group; named after ``LearningRateMonitor``'s names of the groups
    (:func:`~lightning_ranger.optim._rectification_naming.pooled_suffixes`), after each
    optimizer's prefix (default: ``/opt{j}``, ``j`` from 1, when there are several).

    Raises:
        ValueError: if two of an optimizer's tracked groups would be named the same.

    """
    if prefixes is None:
        several = len(optimizers) > 1
        prefixes = [f"/opt{j}" if several else "" for j in range(1, len(optimizers) + 1)]
    tracked = []
    for j, (optimizer, prefix) in enumerate(zip(optimizers, prefixes, strict=True), start=1):
        pools: dict[Any, list[int]] = {}
        for i, options in enumerate(optimizer.param_groups):
            key = (float(options["betas"][1]), float(options["eps"]), _threshold(options))
            pools.setdefault(key if pool else i, []).append(i)
        suffixes = pooled_suffixes(optimizer, prefix, list(pools.values()))
        tracked += [
            TrackedGroup(optimizer, j, tuple(indices), suffix)
            for indices, suffix in zip(pools.values(), suffixes, strict=True)
        ]
    return tracked


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


def probe_shares(budget: int, numels: Sequence[int]) -> list[int]:
    """How many of ``budget`` probe coordinates each of the groups with ``numels`` elements gets:
    equal shares, a group smaller than its share taking all its elements and leaving the rest to
    the others.

    Example::

        >>> probe_shares(1024, [10, 5000, 5000]), probe_shares(4, [3, 3, 3])
        ([10, 507, 507], [1, 1, 2])

    """
    shares = [0] * len(numels)
    left = budget
    order = sorted(range(len(numels)), key=lambda i: numels[i])
    for done, i in enumerate(order):
        shares[i] = min(numels[i], left // (len(numels) - done))
        left -= shares[i]
    return shares


def build_probes(
    groups: Sequence[TrackedGroup],
    budget: int,
    capacity: int,
    world_size: int,
    flat_device: torch.device | None,
) -> dict[TrackedGroup, Probe]:
    """The probe of every group, as this rank holds it, sharing ``budget`` coordinates
    (:func:`probe_shares`); ``flat_device`` is where to gather the sizes of FSDP1's flat shards,
    ``None`` for whole or DTensor parameters (whose ``numel`` is global)."""
    flat_slices: list[list[tuple[int, int]] | None] = []
    numels = []
    for group in groups:
        params = group.params
        if flat_device is None:
            flat_slices.append(None)
            numels.append(sum(p.numel() for p in params))
            continue
        # A collective: every rank gathers the sizes of every group, in the same order.
        layout = FlatShardLayout(params, flat_device)
        slices = [
            (sum(sizes[i] for sizes in layout.sizes), layout.offsets[i]) for i in range(len(params))
        ]
        flat_slices.append(slices)
        numels.append(sum(numel for numel, _ in slices))
    shares = probe_shares(budget, numels)
    return {
        group: Probe(group.params, share, capacity, world_size, slices)
        for group, share, slices in zip(groups, shares, flat_slices, strict=True)
    }
