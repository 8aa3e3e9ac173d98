r"""RAdam's rectification and the variance of Adam's adaptive learning rate, tracked in any loop."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from torch.distributed.tensor import DTensor
from torch.optim import Optimizer

from lightning_ranger._validation import check_bool, check_int
from lightning_ranger.optim import adaptive_lr as stats
from lightning_ranger.optim._rectification_naming import (
    HISTOGRAM,
    custom_scalars_layout,
    quantile_metrics,
    with_log10,
    write_histogram,
)
from lightning_ranger.optim._tracked_groups import (
    TrackedGroup,
    build_probes,
    held_states,
    tracked_groups,
    untrackable,
    without_adam_state,
)
from lightning_ranger.optim.lookahead import local_tensor

__all__ = ["RectificationTracker"]


class RectificationTracker:
    r"""The statistics of :class:`~lightning_ranger.callbacks.RectificationMonitor` for any
    training loop, in the style of a torchmetrics metric: :meth:`update` after every optimizer
    step, :meth:`compute` when you want the values.

    :meth:`compute` returns, for every tracked group, the monitor's series under its names
    (``rectification/rho_t``, ``rectification/r_t``, ``rectification/adaptive_lr_var_ratio``, ...,
    the quantiles as ``rectification/adaptive_lr_p05``, ...; the metric table is in
    :mod:`lightning_ranger.callbacks.rectification_monitor`), with the monitor's suffixes.

    - *Pooled groups*: param groups of an optimizer that share ``beta2``, ``eps`` and
      ``rectify_threshold`` have the same ``rho_t`` and ``r_t`` and the same law of the adaptive
      lr, whatever their lr (layer-wise lr decay, weight-decay splits): with ``pool_groups`` they
      are tracked as one group, with one probe, at the cost of one. Their series carry no suffix
      when they are all of the optimizer's groups, else their names joined by ``+``
      (``/pg1+pg2``). A group that differs from the others is tracked alone and named as
      ``LearningRateMonitor`` names it: ``/pg{i}`` (from 1), or ``/{name}`` for a group with a
      ``name``. With several optimizers, ``/opt{j}`` comes first.

    The histograms of ``l_t`` of the last :meth:`compute` are in :attr:`histograms`;
    :meth:`write_layout` and :meth:`write_histograms` put the custom-scalars layout and the
    histograms into a ``torch.utils.tensorboard.SummaryWriter`` (``fabric.logger.experiment``
    under Fabric's ``TensorBoardLogger``).

    - *Probe*: ``probe_size`` coordinates in all, shared equally by the tracked groups, drawn with
      a fixed seed from each one's global parameters (the same on every rank and strategy);
      :meth:`update` keeps their gradients, as the optimizer used them, for the last
      ``probe_history`` steps, from which :meth:`compute` bootstraps the variance of ``l_t`` over
      the draw of the minibatches.
    - *Distributed*: with ``torch.distributed`` initialized and DTensor parameters (FSDP2) or
      FSDP1 flat shards (``flat_shard_device``), every rank records the probe coordinates it
      holds, and :meth:`compute` and :meth:`state_dict` are collectives (one all-reduce each) that
      every rank must call; every rank gets the single-process values. With replicated parameters
      (DDP) nothing is communicated: every rank that calls :meth:`compute` gets the same values.
    - *Checkpoints*: :meth:`state_dict` holds the probe's gradient history
      (``4 * probe_size * probe_history`` bytes in all, gathered over the ranks when sharded), so
      that the series of the variance over draws continue after a resume;
      :meth:`load_state_dict` takes each rank's own coordinates from it.

    Args:
        optimizer: the optimizer, or several, whose param groups to track: any with param groups
            with ``betas`` and ``eps`` and a state with ``step`` and ``exp_avg_sq`` (
            :class:`~lightning_ranger.RAdam`, ``torch.optim`` Adam, AdamW, RAdam, NAdam), also
            wrapped in :class:`~lightning_ranger.optim.Lookahead`.
        probe_size: coordinates whose gradients are kept, over all tracked groups, ``>= 2``.
            Default 1024.
        probe_history: optimizer steps of gradients kept, ``>= 2``. Default 256.
        quantiles: the quantiles of ``l_t`` over the weights, each in ``(0, 1)``. Default
            ``(0.05, 0.5, 0.95)``.
        flat_shard_device: for FSDP1 parameters sharded over several ranks (flat shards), the
            device to gather their sizes on; construction is then a collective. ``None``: whole
            parameters or DTensors.
        pool_groups: track the param groups of an optimizer that share ``beta2``, ``eps`` and
            ``rectify_threshold`` as one. Default ``True``; ``False`` tracks every group alone
            (its own series, a share of the probe, and a cost that grows with the groups).
        optimizer_prefixes: the name prefix of each optimizer's groups. Default: ``""`` for one
            optimizer, ``"/opt{j}"`` (``j`` from 1) for several.

    Raises:
        TypeError: if ``optimizer`` is not an optimizer or a sequence of them, ``probe_size`` or
            ``probe_history`` not an int, ``quantiles`` not a sequence of reals, ``pool_groups``
            not a bool.
        ValueError: if an optimizer has nothing to track (no ``betas``/``eps``, or no
            ``exp_avg_sq`` in its state), ``probe_size`` or ``probe_history < 2``, a quantile is
            outside ``(0, 1)`` or repeated, or two tracked groups of an optimizer have one name.

    Example::

        >>> from lightning_ranger import RAdam
        >>> model = torch.nn.Linear(4, 1)
        >>> optimizer = RAdam(model.parameters(), lr=1e-2)
        >>> tracker = RectificationTracker(optimizer, probe_size=4)
        >>> for _ in range(6):
        ...     model(torch.randn(8, 4)).square().mean().backward()
        ...     optimizer.step()
        ...     tracker.update()
        ...     optimizer.zero_grad()
        >>> metrics = tracker.compute()
        >>> round(metrics["rectification/rho_t"], 3), metrics["rectification/r_t"] > 0
        (5.994, True)

    """

    def __init__(
        self,
        optimizer: Optimizer | Sequence[Optimizer],
        probe_size: int = 1024,
        probe_history: int = 256,
        quantiles: Sequence[float] = (0.05, 0.5, 0.95),
        *,
        pool_groups: bool = True,
        flat_shard_device: torch.device | None = None,
        optimizer_prefixes: Sequence[str] | None = None,
    ) -> None:
        optimizers = [optimizer] if isinstance(optimizer, Optimizer) else list(optimizer)
        for opt in optimizers:
            if not isinstance(opt, Optimizer):
                raise TypeError(
                    "`optimizer` must be a torch.optim.Optimizer or a sequence of them, got "
                    f"{type(opt).__name__}"
                )
            reason = untrackable(opt)
            if reason is not None:
                raise ValueError(f"`optimizer` {type(opt).__name__} has nothing to track: {reason}")
        self.probe_size = check_int(
            "probe_size", probe_size, minimum=2, meaning="coordinates over all tracked groups"
        )
        self.probe_history = check_int(
            "probe_history", probe_history, minimum=2, meaning="optimizer steps of gradients kept"
        )
        self._quantiles = quantile_metrics(quantiles)
        self.quantiles = tuple(self._quantiles.values())
        self.pool_groups = check_bool("pool_groups", pool_groups)
        #: The tracked groups, in the order of the optimizers and of their first param group.
        self.groups: list[TrackedGroup] = tracked_groups(
            optimizers, optimizer_prefixes, self.pool_groups
        )
        params = [p for g in self.groups for p in g.params]
        distributed = dist.is_available() and dist.is_initialized()
        self._world_size = dist.get_world_size() if distributed else 1
        self._dtensors = any(isinstance(p, DTensor) for p in params)
        #: Whether the ranks hold different parts of the state (the reductions are collectives).
        self.sharded = (self._dtensors or flat_shard_device is not None) and self._world_size > 1
        #: Each group's probe, as this rank holds it (``probe_size`` coordinates in all).
        self.probes = build_probes(
            self.groups, self.probe_size, self.probe_history, self._world_size, flat_shard_device
        )
        self._device = local_tensor(params[0]).device if params else torch.device("cpu")
        #: The histograms of ``l_t`` of the last :meth:`compute`, by metric name.
        self.histograms: dict[str, stats.WeightHistogram] = {}

    def update(self) -> None:
        """Keep the probe's gradients of every group that took an optimizer step since the last
        call: call it after every ``optimizer.step()``, before the next ``zero_grad()``."""
        for group, probe in self.probes.items():
            step = group.latest_step(after=probe.last_step)
            # A rank that holds none of the group's state (FSDP1) counts the steps with the others.
            probe.record(probe.last_step + 1.0 if step is None else step)

    def compute(self) -> dict[str, float]:
        """The statistics of every group that has optimizer state, by metric name; a collective
        when :attr:`sharded`.

        Raises:
            ValueError: if an optimizer's state lacks ``step`` or ``exp_avg_sq``.

        """
        held = held_states(self.groups)
        unsupported = without_adam_state(held)
        if unsupported:
            names = sorted({type(o).__name__ for o in unsupported.values()})
            raise ValueError(f"The state of {names} has no `step` or `exp_avg_sq` to track")
        # Sharded: every rank joins the reduce with the rows of every group (zeros where it holds
        # none of a group's state).
        groups = self.groups if self.sharded else list(held)
        self.histograms = {}
        if not groups:
            return {}
        group_sums, maxima = self._reduced_shares(groups, held)
        metrics: dict[str, float] = {}
        for group, sums, largest in zip(groups, group_sums, maxima.tolist(), strict=True):
            statistics = stats.group_statistics(
                sums, largest, group.beta2, group.threshold, self._quantiles
            )
            if statistics is None:  # no rank holds optimizer state of the group yet
                continue
            values = with_log10(statistics.values, list(self._quantiles))
            metrics.update({group.tag(name): v for name, v in values.items()})
            if statistics.histogram is not None:
                self.histograms[group.tag(HISTOGRAM)] = statistics.histogram
        return metrics

    def _reduced_shares(
        self, groups: list[TrackedGroup], held: dict[TrackedGroup, list[dict[str, Any]]]
    ) -> tuple[list[Tensor], Tensor]:
        """Every group's :attr:`~lightning_ranger.optim.adaptive_lr.GroupShare.sums` summed over
        ranks, and their ``maxima`` (one row per group) reduced by maximum: one all-reduce each,
        when the state is sharded."""
        # DTensor shards and states replicated on every rank count `shards / world_size` on each;
        # whole states read by one rank, and FSDP1's disjoint slices, count once.
        world_size = self._world_size if self._dtensors else 1
        shares = [
            stats.group_share(
                held.get(g, []), self.probes[g], g.beta2, g.eps, world_size, self._device
            )
            for g in groups
        ]
        sums = torch.cat([share.sums for share in shares])
        maxima = torch.stack([share.maxima for share in shares])
        if self.sharded:
            self._all_reduce(sums, dist.ReduceOp.SUM)
            self._all_reduce(maxima, dist.ReduceOp.MAX)
        return list(sums.split([len(share.sums) for share in shares])), maxima

    @staticmethod
    def _all_reduce(tensor: Tensor, op: Any) -> None:
        dist.all_reduce(tensor, op=op)

    def layout(self) -> dict[str, dict[str, list[Any]]]:
        """The TensorBoard custom-scalars layout of the tracked groups: ``rho_t`` with its
        threshold, ``r_t`` with the linear warmup, the variance ratio with ``1 / r_t^2`` and the
        rectified ratio, and the quantiles."""
        return custom_scalars_layout([g.suffix for g in self.groups], list(self._quantiles))

    def write_layout(self, writer: Any) -> None:
        """Add :meth:`layout` to a ``torch.utils.tensorboard.SummaryWriter`` (tab *Custom
        Scalars*)."""
        writer.add_custom_scalars(self.layout())

    def write_histograms(self, writer: Any, step: int) -> None:
        """Write the :attr:`histograms` of the last :meth:`compute` to a ``SummaryWriter``."""
        for name, histogram in self.histograms.items():
            write_histogram(writer, name, histogram, step)

    def state_dict(self) -> dict[str, Any]:
        """The probe's gradient history of every group, over all probe coordinates (gathered
        over the ranks when :attr:`sharded`: a collective), on the CPU."""
        groups = []
        for probe in self.probes.values():
            history, positions = probe.history, probe.positions
            rows = torch.zeros(self.probe_history + 2, probe.size, device=self._device)
            rows[: self.probe_history, positions] = history.values.to(self._device)
            rows[-2, positions] = history.alive.float().to(self._device)
            rows[-1, positions] = 1.0  # this rank holds the coordinate
            if self.sharded:  # a coordinate's holders hold the same values (replicated shards)
                self._all_reduce(rows, dist.ReduceOp.SUM)
            holders = rows[-1].clamp(min=1.0)
            groups.append(
                {
                    "values": (rows[: self.probe_history] / holders).cpu(),
                    "alive": (rows[-2] == rows[-1]).cpu(),
                    "recorded": history.recorded,
                    "last_step": probe.last_step,
                }
            )
        return {
            "probe_size": self.probe_size,
            "probe_history": self.probe_history,
            "groups": groups,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the probe's gradient history of :meth:`state_dict`, each rank its own
        coordinates.

        Raises:
            ValueError: if ``state_dict`` was saved with another ``probe_size`` or
                ``probe_history``, or for other param groups.

        """
        saved = (state_dict["probe_size"], state_dict["probe_history"], len(state_dict["groups"]))
        mine = (self.probe_size, self.probe_history, len(self.probes))
        if saved != mine:
            raise ValueError(
                "The tracker state was saved with (probe_size, probe_history, groups) = "
                f"{saved}; this tracker has {mine}"
            )
        pairs = list(zip(self.probes.values(), state_dict["groups"], strict=True))
        if any(group["values"].shape != (self.probe_history, probe.size) for probe, group in pairs):
            raise ValueError("The tracker state holds probes of other param groups")
        for probe, group in pairs:
            positions = probe.positions.cpu()
            device = probe.history.values.device
            probe.history.restore(
                group["values"][:, positions].to(device),
                group["alive"][positions].to(device),
                int(group["recorded"]),
            )
            probe.last_step = float(group["last_step"])
