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

from collections.abc import Sequence
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.types import STEP_OUTPUT
from torch import Tensor
from torch.distributed.tensor import DTensor
from torch.optim import Optimizer
from typing_extensions import override

from lightning_ranger._validation import check_bool, check_int
from lightning_ranger.callbacks._monitor_groups import (
    MonitoredGroup,
    build_probes,
    held_states,
    monitored_groups,
    say_nothing_to_monitor,
    without_adam_state,
)
from lightning_ranger.callbacks._monitor_naming import (
    HISTOGRAM,
    PREFIX,
    custom_scalars_layout,
    is_tensorboard,
    quantile_metrics,
    write_histogram,
)
from lightning_ranger.callbacks._strategies import flat_shard_device
from lightning_ranger.optim import adaptive_lr as stats
from lightning_ranger.optim.adaptive_lr import Probe

__all__ = ["RectificationMonitor"]


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
        self.logging_interval = check_int(
            "logging_interval",
            logging_interval,
            meaning="optimizer steps between logging events",
            optional=True,
        )
        self.log_histograms = check_bool("log_histograms", log_histograms)
        self.probe_size = check_int(
            "probe_size", probe_size, minimum=2, meaning="coordinates per param group"
        )
        self.probe_history = check_int(
            "probe_history", probe_history, minimum=2, meaning="optimizer steps of gradients kept"
        )
        self._quantile_metrics = quantile_metrics(quantiles)
        self.quantiles = tuple(self._quantile_metrics.values())
        self._interval = 0
        self._last_step = 0
        self._groups: list[MonitoredGroup] = []
        self._probes: dict[MonitoredGroup, Probe] = {}
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
        self._groups = monitored_groups(trainer.optimizers)
        if not self._groups:
            return

        params = [p for g in self._groups for p in g.options["params"]]
        self._dtensors = any(isinstance(p, DTensor) for p in params)
        flat_device = flat_shard_device(trainer.strategy)
        self._sharded = (self._dtensors or flat_device is not None) and trainer.world_size > 1
        self._probes = build_probes(
            self._groups, self.probe_size, self.probe_history, trainer.world_size, flat_device
        )

        tensorboards = [logger for logger in trainer.loggers if is_tensorboard(logger)]
        self._histograms = self.log_histograms and bool(tensorboards)
        if self.log_histograms:
            for logger in trainer.loggers:
                if not is_tensorboard(logger):
                    rank_zero_info(
                        f"`RectificationMonitor`: {type(logger).__name__} takes no histograms;"
                        f" the `{PREFIX}/{HISTOGRAM}` histograms go to the TensorBoard loggers."
                    )
        if trainer.is_global_zero:
            suffixes = [g.suffix for g in self._groups]
            layout = custom_scalars_layout(suffixes, list(self._quantile_metrics))
            for logger in tensorboards:
                logger.experiment.add_custom_scalars(layout)  # type: ignore[attr-defined]

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
            step = group.latest_step()
            # A rank that holds none of the group's state (FSDP1) counts the steps with the others.
            probe.record(probe.last_step + 1.0 if step is None else step)

    def _stop_monitoring(self, optimizers: dict[int, Optimizer]) -> None:
        """Say once that the ``optimizers`` (by index) have nothing to monitor, and forget them."""
        for index, optimizer in optimizers.items():
            say_nothing_to_monitor(optimizer, index)
        self._groups = [g for g in self._groups if g.optimizer_index not in optimizers]
        self._probes = {g: p for g, p in self._probes.items() if g in self._groups}

    def _log(self, trainer: Trainer, step: int) -> None:
        held = held_states(self._groups)
        unsupported = without_adam_state(held)
        if unsupported:
            self._stop_monitoring(unsupported)
            held = {g: s for g, s in held.items() if g.optimizer_index not in unsupported}
        # Replicated state: rank 0 alone computes. Sharded: every rank takes part in the reduce,
        # with the rows of every group (zeros where it holds none of a group's state, or none).
        if not (self._sharded or (trainer.is_global_zero and held)):
            return
        groups = self._groups if self._sharded else list(held)
        group_sums, maxima = self._reduced_shares(trainer, groups, held)
        if not trainer.is_global_zero:
            return

        metrics: dict[str, float] = {}
        for group, sums, largest in zip(groups, group_sums, maxima.tolist(), strict=True):
            statistics = stats.group_statistics(
                sums, largest, group.beta2, group.threshold, self._quantile_metrics
            )
            if statistics is None:  # no rank holds optimizer state of the group yet
                continue
            metrics.update({group.tag(name): v for name, v in statistics.values.items()})
            if self._histograms and statistics.histogram is not None:
                for logger in trainer.loggers:
                    if is_tensorboard(logger):
                        write_histogram(logger, group.tag(HISTOGRAM), statistics.histogram, step)
        if metrics:
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=step)

    def _reduced_shares(
        self,
        trainer: Trainer,
        groups: list[MonitoredGroup],
        held: dict[MonitoredGroup, list[dict[str, Any]]],
    ) -> tuple[list[Tensor], Tensor]:
        """Every group's :attr:`~lightning_ranger.optim.adaptive_lr.GroupShare.sums` summed over
        ranks, and their ``maxima`` (one row per group) reduced by maximum: one all-reduce each,
        when the state is sharded."""
        device = trainer.strategy.root_device
        # DTensor shards and states replicated on every rank count `shards / world_size` on each;
        # whole states read by rank 0 alone, and FSDP1's disjoint slices, count once.
        world_size = trainer.world_size if self._dtensors else 1
        shares = [
            stats.group_share(held.get(g, []), self._probes[g], g.beta2, g.eps, world_size, device)
            for g in groups
        ]
        sums = torch.cat([share.sums for share in shares])
        maxima = torch.stack([share.maxima for share in shares])
        if self._sharded:
            sums = trainer.strategy.reduce(sums, reduce_op="sum")
            maxima = trainer.strategy.reduce(maxima, reduce_op="max")
        return list(sums.split([len(share.sums) for share in shares])), maxima
