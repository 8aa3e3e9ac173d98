r"""Watch RAdam's variance rectification while training: ``rho_t``, ``r_t`` and the adaptive lr.

Metric names (``{sfx}`` is described in :class:`RectificationMonitor`; ``l_t`` is Adam's adaptive
learning rate ``sqrt(1 - beta2^t) / (sqrt(v_t) + eps)`` of one coordinate; the statistics are in
:mod:`lightning_ranger.optim.adaptive_lr`):

================================================  =================================================
``rectification/rho_t{sfx}``                      length of the approximated SMA, ``rho_t``
``rectification/r_t{sfx}``                        rectification term ``r_t``; 0 while ``rho_t`` is
                                                  not above the group's ``rectify_threshold``
``rectification/rho_t_threshold{sfx}``            the group's ``rectify_threshold`` (5 if none)
``rectification/r_t_linear_warmup{sfx}``          ``min(1, t / (2 / (1 - beta2)))``, the linear
                                                  warmup the paper compares ``r_t`` to
``rectification/adaptive_lr_var_ratio{sfx}``      median over the live probe coordinates of
                                                  ``Var_draws[l_t] / Var_draws[l_limit]``: the
                                                  variance over the draw of the minibatches,
                                                  against its limit once ``v_t`` has converged
``rectification/adaptive_lr_var_ratio_gaussian``  ``1 / r_t^2``, the paper's prediction of that
``{sfx}``                                         ratio (logged while ``rho_t > 4``)
``rectification/rectified_var_ratio{sfx}``        ``r_t^2`` times the ratio: about 1 where the
                                                  rectification is exact; 0 while RAdam takes SGD
                                                  steps
``rectification/adaptive_lr_rel_var{sfx}``        median of ``Var_draws[l_t] / E_draws[l_t]^2``:
                                                  how noisy the adaptive lr is
``rectification/adaptive_lr_p05{sfx}`` (``p50``,  quantiles of ``l_t`` over all elements (within
``p95``, or as ``quantiles`` says)                10%)
``rectification/eps_dominated_fraction{sfx}``     share of elements with ``sqrt(v_t) < eps``, exact
``rectification/nonfinite_fraction{sfx}``         share of elements with a non-finite ``v_t``
                                                  (left out of every other statistic)
``rectification/adaptive_lr_mean{sfx}``           mean of ``l_t`` over all elements (weights with
                                                  ``v_t`` about 0 dominate it)
``rectification/adaptive_lr_var{sfx}``            population variance of ``l_t`` over all elements
``rectification/adaptive_lr{sfx}``                TensorBoard histogram of ``l_t`` over all
                                                  elements
================================================  =================================================
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.types import STEP_OUTPUT
from torch import Tensor
from torch.distributed.tensor import DTensor
from torch.distributed.tensor._utils import compute_local_shape_and_global_offset
from torch.optim import Optimizer
from typing_extensions import override

from lightning_ranger._namespaces import lightning_isinstance
from lightning_ranger._utils import is_real
from lightning_ranger.callbacks._flat_shards import FlatShardLayout
from lightning_ranger.callbacks._strategies import flat_shard_device
from lightning_ranger.optim import adaptive_lr as stats
from lightning_ranger.optim.rectification import MIN_RECTIFY_THRESHOLD, rectification

__all__ = ["RectificationMonitor"]

_PREFIX = "rectification"
_TENSORBOARD = "loggers.TensorBoardLogger"

#: ``rectify_threshold`` of groups that have none (torch's Adam, RAdam, ...), as in torch's RAdam.
_DEFAULT_THRESHOLD = 5.0

#: Bootstrap replicates of ``v_t`` per logging event.
_REPLICATES = 128


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


def _check_count(name: str, value: object, meaning: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"`{name}` must be an int >= 2 ({meaning}), got {value!r}")
    if value < 2:
        raise ValueError(f"`{name}` must be an int >= 2 ({meaning}), got {value}")


def _quantile_names(quantiles: object) -> dict[str, float]:
    """``{"p05": 0.05, ...}``: names ``p{100 q}`` (two digits, more for a finer ``q``)."""
    if isinstance(quantiles, (str, bytes)) or not isinstance(quantiles, Sequence):
        raise TypeError(f"`quantiles` must be a sequence of floats in (0, 1), got {quantiles!r}")
    names: dict[str, float] = {}
    for q in quantiles:
        if not is_real(q):
            raise TypeError(f"`quantiles` must be a sequence of floats in (0, 1), got {q!r} in it")
        if not 0.0 < q < 1.0:
            raise ValueError(f"`quantiles` must be floats in (0, 1), got {q}")
        percent = f"{100 * q:.6g}".replace(".", "_")
        name = f"p{percent:0>2}"
        if name in names:
            raise ValueError(f"`quantiles` must be distinct, got {q} twice")
        names[name] = float(q)
    return names


def _nothing_to_monitor(optimizer: Optimizer, index: int) -> None:
    rank_zero_info(
        f"`RectificationMonitor`: nothing to monitor for optimizer {index}"
        f" ({type(optimizer).__name__}): it needs param groups with `betas` and `eps` and a state"
        " with `step` and `exp_avg_sq`, as Adam, AdamW, RAdam and NAdam have."
    )


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


@dataclass
class _Probe:
    """The probe coordinates of one group that this rank holds and their gradient history.

    ``reads[i] = (param, local flat indices)``; ``positions``: where the held coordinates are in
    the group's probe of ``size``; ``weight``: how much this rank's values count in the sum over
    ranks (1 for a plain tensor or an FSDP1 slice, ``shards / world_size`` for a DTensor).
    """

    size: int
    reads: list[tuple[Tensor, Tensor]]
    positions: Tensor
    weight: float
    history: stats.ProbeHistory
    last_step: float = field(default=0.0)

    def gradients(self) -> Tensor:
        """This rank's probe coordinates of the current ``.grad`` (NaN where there is none)."""
        parts = []
        for param, index in self.reads:
            grad = param.grad
            if grad is None:
                parts.append(torch.full((index.numel(),), math.nan, device=index.device))
                continue
            local = grad.to_local() if isinstance(grad, DTensor) else grad
            parts.append(local.reshape(-1)[index].float())
        return torch.cat(parts) if parts else torch.zeros(0, device=self.positions.device)


def _build_probe(
    params: Sequence[Tensor], size: int, history: int, flat: FlatShardLayout | None, world: int
) -> _Probe:
    """The probe of ``size`` coordinates of the global parameters ``params``, as this rank holds
    them: whole (one process, DDP), DTensor shards (FSDP2) or the slices of ``flat`` (FSDP1)."""
    weight = 1.0
    blocks: list[tuple[tuple[int, ...], ...]] = []  # (global shape, local shape, offset) each
    for i, param in enumerate(params):
        if flat is not None:
            numel = sum(sizes[i] for sizes in flat.sizes)
            blocks.append(((numel,), (param.numel(),), (flat.offsets[i],)))
        elif isinstance(param, DTensor):
            mesh, placements = param.device_mesh, param.placements
            shape, offset = compute_local_shape_and_global_offset(param.shape, mesh, placements)
            shards = math.prod(mesh.size(d) for d, p in enumerate(placements) if p.is_shard())
            weight = shards / world
            blocks.append((tuple(param.shape), shape, offset))
        else:
            blocks.append((tuple(param.shape), tuple(param.shape), (0,) * param.dim()))
    indices = stats.probe_indices([math.prod(b[0]) for b in blocks], size)
    reads, positions, start = [], [], 0
    for param, block, chosen in zip(params, blocks, indices, strict=True):
        held, local = stats.locate(chosen, *block)
        if held.numel():
            device = param.device
            reads.append((param, local.to(device)))
            positions.append(held + start)
        start += chosen.numel()
    device = params[0].device if params else torch.device("cpu")
    held_positions = torch.cat(positions) if positions else torch.zeros(0, dtype=torch.int64)
    return _Probe(
        size=start,
        reads=reads,
        positions=held_positions.to(device),
        weight=weight,
        history=stats.ProbeHistory(held_positions.numel(), history, device),
    )


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


def _layout(groups: Sequence[_Group], quantiles: Sequence[str]) -> dict[str, dict[str, list[Any]]]:
    """TensorBoard custom-scalars layout: rho_t beside its threshold, r_t beside linear warmup, the
    variance ratio beside ``1 / r_t^2`` and the rectified ratio, and the quantiles of ``l_t``."""

    def pattern(tag: str) -> str:  # TensorBoard matches from the start; allow a logger prefix
        return f"(?:.+-)?{re.escape(tag)}$"

    charts: dict[str, list[Any]] = {}
    for g in groups:
        for metric, companion in (("rho_t", "rho_t_threshold"), ("r_t", "r_t_linear_warmup")):
            charts[f"{metric}{g.suffix} vs {companion}"] = [
                "Multiline",
                [pattern(g.tag(metric)), pattern(g.tag(companion))],
            ]
        ratios = ("adaptive_lr_var_ratio", "adaptive_lr_var_ratio_gaussian", "rectified_var_ratio")
        charts[f"adaptive_lr_var_ratio{g.suffix} vs 1/r_t^2 vs rectified"] = [
            "Multiline",
            [pattern(g.tag(m)) for m in ratios],
        ]
        charts[f"adaptive_lr quantiles{g.suffix}"] = [
            "Multiline",
            [pattern(g.tag(f"adaptive_lr_{q}")) for q in quantiles],
        ]
    return {_PREFIX: charts}


class RectificationMonitor(Callback):
    r"""Log RAdam's rectification and the variance of Adam's adaptive learning rate while training.

    RAdam (Liu et al., ICLR 2020) argues that the adaptive learning rate
    ``l_t = sqrt(1 - beta2^t) / (sqrt(v_t) + eps)`` of Adam has a large variance over the random
    draw of the minibatches in the first steps, and rectifies it with ``r_t`` once the length of
    the approximated simple moving average ``rho_t`` is above a threshold (see
    :func:`lightning_ranger.rectification`). Use this callback to see that variance on your own
    model: how large it is against its limit, next to the paper's prediction ``1 / r_t^2`` and to
    what RAdam lets through (``r_t^2`` times it); how noisy each group's adaptive lr is; and where
    ``l_t`` lies over the weights.

    Every ``logging_interval`` optimizer steps it logs, for every param group of every optimizer,
    with ``trainer.global_step`` (the number of optimizer steps) as x-axis, the series of the
    module's table. The variance over draws comes from a *probe*: ``probe_size`` coordinates of the
    group's parameters, drawn at random (fixed seed) from the global parameters, so that every
    rank and every strategy probes the same ones. After every optimizer step the probe's gradients
    are kept, as the optimizer used them (after unscaling and clipping, summed over accumulated
    batches), for the last ``probe_history`` steps; at a logging event ``v_t`` is bootstrapped
    from them (:func:`lightning_ranger.optim.adaptive_lr.draw_statistics`) and the medians are
    taken over the probe coordinates whose gradient has been nonzero and finite at every step so
    far. The spread over the weights (quantiles, the share of ``eps``-dominated elements, mean,
    variance, histogram) is computed from ``exp_avg_sq`` over every element. TensorBoard loggers
    (of ``lightning.pytorch`` or ``pytorch_lightning``) also get the histogram and a custom-scalars
    layout (tab *Custom Scalars*): ``rho_t`` with its threshold, ``r_t`` with the linear warmup,
    the variance ratio with ``1 / r_t^2`` and the rectified ratio, and the quantiles.

    Names are ``rectification/<metric>{sfx}``; the suffix ``{sfx}`` follows
    :class:`~lightning.pytorch.callbacks.LearningRateMonitor`: ``/pg{i}`` (``i`` from 1) when an
    optimizer has several param groups, ``/{name}`` for a group that has a ``name``, both after
    ``/opt{j}`` (``j`` from 1, the position in ``trainer.optimizers``) when there are several
    optimizers; empty for one optimizer with one unnamed group.

    It works with every optimizer whose param groups have ``betas`` and ``eps`` and whose state
    has ``step`` and ``exp_avg_sq``: :class:`lightning_ranger.RAdam` and ``torch.optim`` Adam,
    AdamW, RAdam and NAdam; for others it says once that there is nothing to monitor. It works
    from ``on_train_batch_end`` (a new optimizer step shows as a new ``trainer.global_step``; the
    gradients are still in ``.grad`` until the next step's ``zero_grad``), never inside the
    optimizer step, and logs from rank 0. Under DDP rank 0 alone records and computes. Under
    ``ModelParallelStrategy`` (FSDP2, DTensor shards) and ``FSDPStrategy`` (FSDP1 flat shards)
    every rank records the probe coordinates it holds and computes its share; one all-reduce per
    logging event assembles them, so every series equals a single process's. Non-finite entries
    of ``exp_avg_sq`` or of the probe's gradients never raise: they are left out and counted.
    In manual optimization, call ``zero_grad`` before ``backward`` (not after ``step``), or the
    probe finds no gradients.

    Args:
        logging_interval: log every this many optimizer steps, ``> 0``. Default ``None``: the
            Trainer's ``log_every_n_steps``.
        log_histograms: also log the histogram of ``l_t`` to TensorBoard loggers (other loggers
            take no histograms, which is said once). Default ``True``.
        probe_size: coordinates per param group whose gradients are kept, ``>= 2``. Default 1024.
        probe_history: optimizer steps of gradients kept, ``>= 2``. Default 256: the probe keeps
            ``4 * probe_size * probe_history`` bytes per group (1 MiB by default).
        quantiles: the quantiles of ``l_t`` over the weights to log, each in ``(0, 1)``, named
            ``p{100 q}``. Default ``(0.05, 0.5, 0.95)``.

    Raises:
        TypeError: if ``logging_interval`` is not an int or None, ``log_histograms`` not a bool,
            ``probe_size`` or ``probe_history`` not an int, ``quantiles`` not a sequence of reals.
        ValueError: if ``logging_interval <= 0``, ``probe_size`` or ``probe_history < 2``, a
            quantile is outside ``(0, 1)`` or repeated; at the start of training, if an optimizer
            has two param groups with the same ``name``.

    Example::

        from lightning.pytorch import Trainer
        from lightning_ranger.callbacks import RectificationMonitor

        trainer = Trainer(callbacks=[RectificationMonitor(logging_interval=10)])

    """

    def __init__(
        self,
        logging_interval: int | None = None,
        log_histograms: bool = True,
        probe_size: int = 1024,
        probe_history: int = 256,
        quantiles: Sequence[float] = (0.05, 0.5, 0.95),
    ) -> None:
        _check_interval(logging_interval)
        if not isinstance(log_histograms, bool):
            raise TypeError(f"`log_histograms` must be a bool, got {log_histograms!r}")
        _check_count("probe_size", probe_size, "coordinates per param group")
        _check_count("probe_history", probe_history, "optimizer steps of gradients kept")
        self._quantiles = _quantile_names(quantiles)
        self.logging_interval = logging_interval
        self.log_histograms = log_histograms
        self.probe_size = probe_size
        self.probe_history = probe_history
        self.quantiles = tuple(self._quantiles.values())
        self._interval = 0
        self._last_step = 0
        self._groups: list[_Group] = []
        self._probes: dict[_Group, _Probe] = {}
        self._histograms = False
        self._sharded = False
        self._dtensors = False

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
        self._probes = {}
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

        params = [p for g in self._groups for p in g.options["params"]]
        self._dtensors = any(isinstance(p, DTensor) for p in params)
        flat_device = flat_shard_device(trainer.strategy)
        self._sharded = (self._dtensors or flat_device is not None) and trainer.world_size > 1
        for group in self._groups:
            params = list(group.options["params"])
            # FSDP1: every rank joins the all-gather of the slices' sizes.
            flat = FlatShardLayout(params, flat_device) if flat_device is not None else None
            self._probes[group] = _build_probe(
                params, self.probe_size, self.probe_history, flat, trainer.world_size
            )

        tensorboards = [lg for lg in trainer.loggers if lightning_isinstance(lg, _TENSORBOARD)]
        self._histograms = self.log_histograms and bool(tensorboards)
        if self.log_histograms:
            for logger in trainer.loggers:
                if not lightning_isinstance(logger, _TENSORBOARD):
                    rank_zero_info(
                        f"`RectificationMonitor`: {type(logger).__name__} takes no histograms;"
                        f" the `{_PREFIX}/adaptive_lr` histograms go to the TensorBoard loggers."
                    )
        if trainer.is_global_zero:
            for logger in tensorboards:
                logger.experiment.add_custom_scalars(  # type: ignore[attr-defined]
                    _layout(self._groups, list(self._quantiles))
                )

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
        if not self._groups or step == last:
            return
        if self._sharded or trainer.is_global_zero:
            self._record()
        if step // self._interval > last // self._interval:
            self._log(trainer, step)

    def _record(self) -> None:
        """Keep the probe's gradients of every group that took an optimizer step."""
        for group, probe in self._probes.items():
            steps = [
                float(state["step"])
                for state in map(group.optimizer.state.get, group.options["params"])
                if state and "step" in state
            ]
            # A rank that holds none of the group's state (FSDP1) counts the steps with the others.
            step = max(steps) if steps else probe.last_step + 1.0
            if step > probe.last_step:
                probe.history.record(probe.gradients())
                probe.last_step = step

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
        self._probes = {g: p for g, p in self._probes.items() if g in self._groups}
        return [(g, states) for g, states in found if g.optimizer_index not in unsupported]

    def _draw_row(self, group: _Group, step: float, device: torch.device) -> Tensor:
        """``[4, probe size]`` (flattened): this rank's share of ``Var_draws[l_t]``,
        ``E_draws[l_t]``, ``Var_draws[l_limit]`` and liveness per probe coordinate, zeros where
        it holds none."""
        probe = self._probes[group]
        row = torch.zeros(4, probe.size, dtype=torch.float64, device=device)
        pool = probe.history.pool
        if len(pool) >= 2 and probe.positions.numel() and step >= 1:
            beta2, eps = float(group.options["betas"][1]), float(group.options["eps"])
            draws = stats.draw_statistics(pool, int(step), beta2, eps, _REPLICATES)
            values = [draws.var, draws.mean, draws.var_limit, probe.history.alive.double()]
            row[:, probe.positions.to(device)] = torch.stack(values).to(device) * probe.weight
        return row.reshape(-1)

    def _log(self, trainer: Trainer, step: int) -> None:
        found = dict(self._states())
        # Replicated state: rank 0 alone computes. Sharded: every rank takes part in the reduce,
        # with the rows of every group (zeros where it holds none of a group's state, or none).
        if not (self._sharded or (trainer.is_global_zero and found)):
            return
        device = trainer.strategy.root_device
        groups = self._groups if self._sharded else list(found)
        rows, extrema = [], []
        for group in groups:
            states = found.get(group, [])
            sums, low_high = stats.weight_sums(
                states,
                float(group.options["betas"][1]),
                float(group.options["eps"]),
                trainer.world_size if self._dtensors else 1,
                device,
            )
            # The optimizer step, for the ranks that hold none of the group's state.
            t = float(states[0]["step"]) if states else -math.inf
            rows += [sums, self._draw_row(group, t, device)]
            extrema.append(torch.cat([low_high, low_high.new_tensor([t])]))
        summed, maxima = torch.cat(rows), torch.stack(extrema)
        if self._sharded:
            summed = trainer.strategy.reduce(summed, reduce_op="sum")
            maxima = trainer.strategy.reduce(maxima, reduce_op="max")
        if not trainer.is_global_zero:
            return

        metrics: dict[str, float] = {}
        parts = summed.split([len(r) for r in rows])
        for k, (group, (neg_low, high, t)) in enumerate(zip(groups, maxima.tolist(), strict=True)):
            sums, draws = parts[2 * k], parts[2 * k + 1]
            if float(sums[stats.COUNT] + sums[stats.NONFINITE]) == 0:  # no state anywhere yet
                continue
            metrics.update(self._scalars(group, t, sums.tolist(), -neg_low, high))
            metrics.update(self._draw_scalars(group, t, draws.reshape(4, -1)))
            if self._histograms and float(sums[stats.COUNT]) > 0:
                self._histogram(trainer, group, step, sums.tolist(), -neg_low, high)
        if metrics:
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=step)

    def _scalars(
        self, group: _Group, t: float, sums: Sequence[float], low: float, high: float
    ) -> dict[str, float]:
        beta2 = float(group.options["betas"][1])
        threshold = float(group.options.get("rectify_threshold", _DEFAULT_THRESHOLD))
        rho_t, r_t = rectification(t, beta2)
        count, nonfinite = sums[stats.COUNT], sums[stats.NONFINITE]
        metrics = {
            group.tag("rho_t"): rho_t,
            group.tag("r_t"): r_t if rho_t > threshold else 0.0,
            group.tag("rho_t_threshold"): threshold,
            group.tag("r_t_linear_warmup"): min(1.0, t * (1.0 - beta2) / 2.0),
            group.tag("nonfinite_fraction"): nonfinite / (count + nonfinite),
        }
        if count > 0:
            mean = sums[stats.SUM] / count
            metrics[group.tag("adaptive_lr_mean")] = mean
            metrics[group.tag("adaptive_lr_var")] = max(sums[stats.SUM_SQ] / count - mean**2, 0.0)
            metrics[group.tag("eps_dominated_fraction")] = sums[stats.EPS_DOMINATED] / count
            values = stats.histogram_quantiles(
                sums[stats.BUCKETS :], low, high, list(self._quantiles.values())
            )
            for name, value in zip(self._quantiles, values, strict=True):
                metrics[group.tag(f"adaptive_lr_{name}")] = value
        return metrics

    @staticmethod
    def _draw_scalars(group: _Group, t: float, draws: Tensor) -> dict[str, float]:
        var, mean, var_limit, alive = draws
        ratio, relative = stats.summarize_draws(var, mean, var_limit, alive > 0.5)
        if math.isnan(ratio):  # fewer than 2 recorded steps, or no live coordinate
            return {}
        beta2 = float(group.options["betas"][1])
        threshold = float(group.options.get("rectify_threshold", _DEFAULT_THRESHOLD))
        rho_t, r_t = rectification(t, beta2)
        metrics = {
            group.tag("adaptive_lr_var_ratio"): ratio,
            group.tag("adaptive_lr_rel_var"): relative,
            group.tag("rectified_var_ratio"): r_t**2 * ratio if rho_t > threshold else 0.0,
        }
        if rho_t > MIN_RECTIFY_THRESHOLD:
            metrics[group.tag("adaptive_lr_var_ratio_gaussian")] = 1.0 / r_t**2
        return metrics

    @staticmethod
    def _histogram(
        trainer: Trainer, group: _Group, step: int, row: Sequence[float], low: float, high: float
    ) -> None:
        count, total, total_sq = row[stats.COUNT], row[stats.SUM], row[stats.SUM_SQ]
        counts = row[stats.BUCKETS :]  # scaled to the count already
        filled = [i for i, c in enumerate(counts) if c > 0]
        # TensorBoard reads right edges only: keep one empty bucket on the left as the lower edge.
        first, last = max(filled[0] - 1, 0), filled[-1] + 1
        for logger in trainer.loggers:
            if lightning_isinstance(logger, _TENSORBOARD):
                logger.experiment.add_histogram_raw(  # type: ignore[attr-defined]
                    group.tag("adaptive_lr"),
                    min=low,
                    max=high,
                    num=round(count),
                    sum=total,
                    sum_squares=total_sq,
                    bucket_limits=stats.BUCKET_LIMITS[first:last],
                    bucket_counts=list(counts[first:last]),
                    global_step=step,
                )
