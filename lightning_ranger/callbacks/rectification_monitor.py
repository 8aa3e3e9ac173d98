r"""Watch RAdam's variance rectification while training: ``rho_t``, ``r_t`` and the adaptive lr.

Metric names (``{sfx}`` is described in :class:`RectificationMonitor`):

==========================================  =======================================================
``rectification/rho_t{sfx}``                length of the approximated SMA, ``rho_t``
``rectification/r_t{sfx}``                  rectification term ``r_t``; 0 while ``rho_t`` is not
                                            above the group's ``rectify_threshold``
``rectification/rho_t_threshold{sfx}``      the group's ``rectify_threshold`` (5 if it has none)
``rectification/r_t_linear_warmup{sfx}``    ``min(1, t / (2 / (1 - beta2)))``, the linear warmup
                                            the paper compares ``r_t`` to
``rectification/adaptive_lr_mean{sfx}``     mean of ``l_t = sqrt(1 - beta2^t) / (sqrt(v_t) + eps)``
``rectification/adaptive_lr_var{sfx}``      population variance of ``l_t``
``rectification/adaptive_lr{sfx}``          TensorBoard histogram of ``l_t``
==========================================  =======================================================
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.types import STEP_OUTPUT
from torch import Tensor
from torch.distributed.tensor import DTensor
from torch.optim import Optimizer
from typing_extensions import override

from lightning_ranger.callbacks._strategies import flat_shard_device
from lightning_ranger.optim.rectification import rectification

__all__ = ["RectificationMonitor"]

_PREFIX = "rectification"

#: ``rectify_threshold`` of groups that have none (torch's Adam, RAdam, ...), as in torch's RAdam.
_DEFAULT_THRESHOLD = 5.0

#: Histogram bucket limits (right edges): TensorBoard's default positive buckets,
#: ``1e-12 * 1.1^k`` up to ``1e20``, then ``DBL_MAX``. Fixed limits let shards add their counts.
_BUCKET_LIMITS = [1e-12 * 1.1**k for k in range(math.ceil(math.log(1e32) / math.log(1.1)) + 1)]
_BUCKET_LIMITS.append(sys.float_info.max)

#: A group's histogram counts a uniform sample (fixed seed) of about this many elements when it
#: has more, scaled to its size; count, sum, sum of squares, min and max cover every element.
_HISTOGRAM_SAMPLES = 2**16


def _check_interval(logging_interval: object) -> None:
    if logging_interval is None:
        return
    if isinstance(logging_interval, bool) or not isinstance(logging_interval, int):
        raise TypeError(
            f"`logging_interval` must be a positive int or None, got {logging_interval!r}"
        )
    if logging_interval <= 0:
        raise ValueError(
            "`logging_interval` must be a positive int (optimizer steps between logging events)"
            f" or None for the Trainer's `log_every_n_steps`, got {logging_interval}"
        )


def _nothing_to_monitor(optimizer: Optimizer, index: int) -> None:
    rank_zero_info(
        f"`RectificationMonitor`: nothing to monitor for optimizer {index}"
        f" ({type(optimizer).__name__}): it needs param groups with `betas` and `eps` and a state"
        " with `step` and `exp_avg_sq`, as Adam, AdamW, RAdam and NAdam have."
    )


def _adaptive_lr_sums(
    states: Sequence[dict[str, Any]],
    beta2: float,
    eps: float,
    world_size: int,
    device: torch.device,
    histogram: bool,
) -> tuple[Tensor, Tensor]:
    """One rank's share of the statistics of ``l_t = sqrt(1 - beta2^t) / (sqrt(v_t) + eps)``.

    Over the parameters whose optimizer ``states`` are given, returns, in float64 on ``device``,
    ``sums = [count, sum, sum of squares, *bucket counts]`` and ``extrema = [-min, max]`` (the
    bucket counts and extrema only when ``histogram``). Summing ``sums`` and taking the maximum of
    ``extrema`` over the ``world_size`` ranks gives the values over the whole group: a DTensor
    shard counts with weight ``shards / world_size`` and a plain tensor, replicated on every rank,
    with ``1 / world_size``. With ``world_size=1`` every tensor counts once.

    ``l_t / sqrt(1 - beta2^t)`` is computed elementwise in the state's dtype (at least float32)
    and summed per tensor with torch's cascade summation; the products with the per-parameter bias
    correction and the sums over tensors and ranks are float64.
    """
    numel = sum(state["exp_avg_sq"].numel() for state in states)  # global size for DTensors
    stride = max(1, math.ceil(numel / _HISTOGRAM_SAMPLES))
    limits = torch.tensor(_BUCKET_LIMITS, dtype=torch.float64, device=device) if histogram else None
    size = 3 + (len(_BUCKET_LIMITS) if histogram else 0)
    sums = torch.zeros(size, dtype=torch.float64, device=device)
    extrema = torch.full((2,), -math.inf, dtype=torch.float64, device=device)
    for state in states:
        exp_avg_sq = state["exp_avg_sq"]
        if isinstance(exp_avg_sq, DTensor):
            mesh, placements = exp_avg_sq.device_mesh, exp_avg_sq.placements
            shards = math.prod(mesh.size(d) for d, p in enumerate(placements) if p.is_shard())
            v, weight = exp_avg_sq.to_local(), shards / world_size
        else:
            v, weight = exp_avg_sq, 1.0 / world_size
        if v.numel() == 0:  # an empty shard of a small parameter
            continue
        step = torch.as_tensor(state["step"], dtype=torch.float64).to(device)
        bias_correction = torch.sqrt(1.0 - beta2**step)
        # l_t / bias_correction, in a fresh tensor: the optimizer state is never written.
        d = v.to(torch.promote_types(v.dtype, torch.float32)).sqrt().add_(eps).reciprocal_()
        if limits is not None:
            low, high = torch.aminmax(d)
            both = torch.stack([-low, high]).to(device, torch.float64) * bias_correction
            extrema = torch.maximum(extrema, both)
            sample = d.reshape(-1)
            if stride > 1:  # uniform, not strided: a stride would pick columns of a matrix
                generator = torch.Generator(d.device).manual_seed(0)
                picks = (math.ceil(sample.numel() / stride),)
                index = torch.randint(sample.numel(), picks, generator=generator, device=d.device)
                sample = sample[index]
            sample = sample.to(device, torch.float64) * bias_correction
            buckets = torch.bucketize(sample, limits).clamp_(max=len(limits) - 1)
            sums[3:] += torch.bincount(buckets, minlength=len(limits)) * weight
        total = d.sum().to(device, torch.float64) * bias_correction
        total_sq = d.square_().sum().to(device, torch.float64) * bias_correction**2
        sums[:3] += torch.stack([total.new_tensor(float(v.numel())), total, total_sq]) * weight
    return sums, extrema


@dataclass(frozen=True)
class _Group:
    """One monitored param group: ``optimizer.param_groups[index]``, logged with ``suffix``."""

    optimizer: Optimizer
    optimizer_index: int
    index: int
    suffix: str

    @property
    def options(self) -> dict[str, Any]:
        return self.optimizer.param_groups[self.index]

    def tag(self, metric: str) -> str:
        return f"{_PREFIX}/{metric}{self.suffix}"


def _group_suffixes(optimizer: Optimizer, prefix: str) -> list[str]:
    """``LearningRateMonitor``'s naming: ``/{name}`` or ``/pg{i}`` (from 1) with several groups."""
    groups = optimizer.param_groups
    suffixes = []
    for i, group in enumerate(groups, start=1):
        name = group.get("name") or (f"pg{i}" if len(groups) > 1 else "")
        suffixes.append(f"{prefix}/{name}" if name else prefix)
    duplicates = sorted({s for s in suffixes if suffixes.count(s) > 1})
    if duplicates:
        raise ValueError(
            f"`RectificationMonitor`: {type(optimizer).__name__} has several param groups logged"
            f" as {duplicates}; give its param groups distinct `name`s"
        )
    return suffixes


def _layout(groups: Sequence[_Group]) -> dict[str, dict[str, list[Any]]]:
    """TensorBoard custom-scalars layout: rho_t beside its threshold, r_t beside linear warmup."""

    def pattern(tag: str) -> str:  # TensorBoard matches from the start; allow a logger prefix
        return f"(?:.+-)?{re.escape(tag)}$"

    charts: dict[str, list[Any]] = {}
    for g in groups:
        for metric, companion in (("rho_t", "rho_t_threshold"), ("r_t", "r_t_linear_warmup")):
            charts[f"{metric}{g.suffix} vs {companion}"] = [
                "Multiline",
                [pattern(g.tag(metric)), pattern(g.tag(companion))],
            ]
    return {_PREFIX: charts}


class RectificationMonitor(Callback):
    r"""Log RAdam's rectification and the spread of Adam's adaptive learning rate while training.

    RAdam (Liu et al., ICLR 2020) argues that the adaptive learning rate
    ``l_t = sqrt(1 - beta2^t) / (sqrt(v_t) + eps)`` of Adam has a large variance in the first
    steps, and rectifies it with ``r_t`` once the length of the approximated simple moving average
    ``rho_t`` is above a threshold (see :func:`lightning_ranger.rectification`). Use this callback
    to see whether a run is still un-rectified, how fast ``r_t`` approaches 1 next to the linear
    warmup of length ``2 / (1 - beta2)`` it replaces, and how wide the spread of ``l_t`` is.

    Every ``logging_interval`` optimizer steps it logs, for every param group of every optimizer,
    with ``trainer.global_step`` (the number of optimizer steps) as x-axis: ``rho_t``, ``r_t``,
    the group's threshold and the linear warmup, from the group's ``betas`` and the state's
    ``step`` ``t``; the mean and the population variance of ``l_t`` over all elements of the
    group's parameters, from ``exp_avg_sq`` and ``eps``; a histogram of ``l_t`` to TensorBoard
    loggers. TensorBoard loggers also get a custom-scalars layout (tab *Custom Scalars*) that
    draws ``rho_t`` with the threshold and ``r_t`` with the linear warmup in one chart each.

    Names are ``rectification/<metric>{sfx}`` (see the table of the module's docstring); the
    suffix ``{sfx}`` follows :class:`~lightning.pytorch.callbacks.LearningRateMonitor`: ``/pg{i}``
    (``i`` from 1) when an optimizer has several param groups, ``/{name}`` for a group that has a
    ``name``, both after ``/opt{j}`` (``j`` from 1, the position in ``trainer.optimizers``) when
    there are several optimizers; empty for one optimizer with one unnamed group.

    It works with every optimizer whose param groups have ``betas`` and ``eps`` and whose state
    has ``step`` and ``exp_avg_sq``: :class:`lightning_ranger.RAdam` and ``torch.optim`` Adam,
    AdamW, RAdam and NAdam. For other optimizers it says once that there is nothing to monitor.
    It works from ``on_train_batch_end`` (a new optimizer step shows as a new
    ``trainer.global_step``), never inside the optimizer step, and logs from rank 0 through
    ``trainer.loggers``. Under DDP the state is the same on every rank and rank 0 alone computes.
    Under ``ModelParallelStrategy`` (FSDP2) each rank holds a DTensor shard of the state: every
    rank computes count, sum and sum of squares (and histogram counts) of its shard and they are
    all-reduced in float64, so the statistics equal those of a single process. Under
    ``FSDPStrategy`` (FSDP1, sharded over the ranks) each rank holds the state of its slices of the
    flat parameters, some parameters' state in whole, in part or not at all, in plain tensors: they
    are reduced the same way, a row for every param group from every rank.

    A logging event costs a few elementwise passes over the parameters; the histogram's buckets
    count a uniform sample of about 65536 elements of a larger group, scaled to its size (its
    count, sum, min and max cover every element).

    Args:
        logging_interval: log every this many optimizer steps, ``> 0``. Default ``None``: the
            Trainer's ``log_every_n_steps``.
        log_histograms: also log the histogram of ``l_t`` to TensorBoard loggers (other loggers
            take no histograms, which is said once). Default ``True``.

    Raises:
        TypeError: if ``logging_interval`` is not an int or None, or ``log_histograms`` not a bool.
        ValueError: if ``logging_interval <= 0``; at the start of training, if an optimizer has two
            param groups with the same ``name``.

    Example::

        from lightning.pytorch import Trainer
        from lightning_ranger.callbacks import RectificationMonitor

        trainer = Trainer(callbacks=[RectificationMonitor(logging_interval=10)])

    """

    def __init__(self, logging_interval: int | None = None, log_histograms: bool = True) -> None:
        _check_interval(logging_interval)
        if not isinstance(log_histograms, bool):
            raise TypeError(f"`log_histograms` must be a bool, got {log_histograms!r}")
        self.logging_interval = logging_interval
        self.log_histograms = log_histograms
        self._interval = 0
        self._last_step = 0
        self._groups: list[_Group] = []
        self._histograms = False

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage == "fit" and not trainer.loggers:
            rank_zero_warn(
                "`RectificationMonitor` has no logger to write to: the Trainer has no logger"
                " (`logger=False`). Training goes on without the rectification curves; pass"
                " `logger=True` or a Lightning logger to the Trainer to record them."
            )

    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._last_step = trainer.global_step
        # `log_every_n_steps` is set on the Trainer by its logger connector, unseen by mypy.
        self._interval = self.logging_interval or trainer.log_every_n_steps  # type: ignore[attr-defined]
        self._groups = []
        if not trainer.loggers or self._interval <= 0:
            return
        several = len(trainer.optimizers) > 1
        for j, optimizer in enumerate(trainer.optimizers, start=1):
            if not all("betas" in g and "eps" in g for g in optimizer.param_groups):
                _nothing_to_monitor(optimizer, j)
                continue
            suffixes = _group_suffixes(optimizer, f"/opt{j}" if several else "")
            self._groups += [_Group(optimizer, j, i, s) for i, s in enumerate(suffixes)]
        if not self._groups:
            return

        tensorboards = [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
        self._histograms = self.log_histograms and bool(tensorboards)
        if self.log_histograms:
            for logger in trainer.loggers:
                if not isinstance(logger, TensorBoardLogger):
                    rank_zero_info(
                        f"`RectificationMonitor`: {type(logger).__name__} takes no histograms;"
                        f" `{_PREFIX}/adaptive_lr` histograms go to TensorBoardLogger only."
                    )
        if trainer.is_global_zero:
            for logger in tensorboards:
                logger.experiment.add_custom_scalars(_layout(self._groups))

    @override
    def on_train_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: STEP_OUTPUT,
        batch: Any,
        batch_idx: int,
    ) -> None:
        step, last = trainer.global_step, self._last_step
        self._last_step = step
        if self._groups and step // self._interval > last // self._interval:
            self._log(trainer, step)

    def _states(self) -> list[tuple[_Group, list[dict[str, Any]]]]:
        """The groups that have optimizer state, with it; drops optimizers without Adam's state."""
        found = []
        for group in self._groups:
            states = [s for s in map(group.optimizer.state.get, group.options["params"]) if s]
            if states:
                found.append((group, states))
        unsupported = {
            g.optimizer_index: g.optimizer
            for g, states in found
            if any("step" not in s or "exp_avg_sq" not in s for s in states)
        }
        for index, optimizer in unsupported.items():
            _nothing_to_monitor(optimizer, index)
        self._groups = [g for g in self._groups if g.optimizer_index not in unsupported]
        return [(g, states) for g, states in found if g.optimizer_index not in unsupported]

    def _log(self, trainer: Trainer, step: int) -> None:
        found = dict(self._states())
        dtensors = any(isinstance(s["exp_avg_sq"], DTensor) for v in found.values() for s in v)
        # FSDP1's flat shards: each rank holds some parameters' state, or part of it, or none.
        flat = flat_shard_device(trainer.strategy) is not None
        distributed = (dtensors or flat) and trainer.world_size > 1
        # Replicated state: rank 0 alone computes. Sharded: every rank takes part in the reduce,
        # with a row for every group (zeros where it holds none of a group's state, or none at all).
        if not (distributed or (trainer.is_global_zero and found)):
            return
        device = trainer.strategy.root_device
        groups = self._groups if distributed else list(found)
        partials = []
        for group in groups:
            states = found.get(group, [])
            sums, extrema = _adaptive_lr_sums(
                states,
                float(group.options["betas"][1]),
                float(group.options["eps"]),
                trainer.world_size if dtensors else 1,
                device,
                self._histograms,
            )
            # The optimizer step, for the ranks that hold none of the group's state.
            t = float(states[0]["step"]) if states else -math.inf
            partials.append((sums, torch.cat([extrema, extrema.new_tensor([t])])))
        sums = torch.stack([s for s, _ in partials])
        extrema = torch.stack([e for _, e in partials])
        if distributed:
            sums = trainer.strategy.reduce(sums, reduce_op="sum")
            extrema = trainer.strategy.reduce(extrema, reduce_op="max")
        if not trainer.is_global_zero:
            return

        metrics: dict[str, float] = {}
        for group, row, (neg_low, high, t) in zip(
            groups, sums.tolist(), extrema.tolist(), strict=True
        ):
            if row[0] == 0:  # no state anywhere yet
                continue
            metrics.update(self._scalars(group, t, row[:3]))
            if self._histograms:
                self._histogram(trainer, group, step, row, -neg_low, high)
        if metrics:
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=step)

    @staticmethod
    def _scalars(group: _Group, step: Any, sums: Sequence[float]) -> dict[str, float]:
        t = float(step.item() if isinstance(step, Tensor) else step)
        beta2 = float(group.options["betas"][1])
        threshold = float(group.options.get("rectify_threshold", _DEFAULT_THRESHOLD))
        rho_t, r_t = rectification(t, beta2)
        count, total, total_sq = sums
        mean = total / count
        return {
            group.tag("rho_t"): rho_t,
            group.tag("r_t"): r_t if rho_t > threshold else 0.0,
            group.tag("rho_t_threshold"): threshold,
            group.tag("r_t_linear_warmup"): min(1.0, t * (1.0 - beta2) / 2.0),
            group.tag("adaptive_lr_mean"): mean,
            group.tag("adaptive_lr_var"): max(total_sq / count - mean * mean, 0.0),
        }

    @staticmethod
    def _histogram(
        trainer: Trainer, group: _Group, step: int, row: Sequence[float], low: float, high: float
    ) -> None:
        count, total, total_sq, *counts = row
        sampled = sum(counts)
        filled = [i for i, c in enumerate(counts) if c > 0]
        # TensorBoard reads right edges only: keep one empty bucket on the left as the lower edge.
        first, last = max(filled[0] - 1, 0), filled[-1] + 1
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_histogram_raw(
                    group.tag("adaptive_lr"),
                    min=low,
                    max=high,
                    num=round(count),
                    sum=total,
                    sum_squares=total_sq,
                    bucket_limits=_BUCKET_LIMITS[first:last],
                    bucket_counts=[c * count / sampled for c in counts[first:last]],
                    global_step=step,
                )
