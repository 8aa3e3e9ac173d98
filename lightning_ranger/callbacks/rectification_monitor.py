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
``rectification/eps_dominated_fraction{sfx}``     share of elements with ``sqrt(v_t) < eps``
                                                  (from a sample above 65536 elements)
``rectification/nonfinite_fraction{sfx}``         share of elements with a non-finite ``v_t``
                                                  (left out of every other statistic)
``rectification/adaptive_lr_mean{sfx}``           mean of ``l_t`` over all elements (weights with
                                                  ``v_t`` about 0 dominate it)
``rectification/adaptive_lr_var{sfx}``            population variance of ``l_t`` over all elements
``rectification/adaptive_lr{sfx}``                TensorBoard histogram of ``l_t`` over all
                                                  elements
``rectification/<ratio or quantile>_log10{sfx}``  base-10 logarithm of each variance ratio and
                                                  quantile, where positive (what the custom-scalars
                                                  layout charts)
================================================  =================================================
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.types import STEP_OUTPUT
from torch.optim import Optimizer
from typing_extensions import override

from lightning_ranger._namespaces import lightning_isinstance
from lightning_ranger._validation import check_bool, check_int
from lightning_ranger.callbacks._strategies import flat_shard_device
from lightning_ranger.optim._rectification_naming import HISTOGRAM, PREFIX, quantile_metrics
from lightning_ranger.optim._tracked_groups import untrackable
from lightning_ranger.optim.rectification_tracker import RectificationTracker

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
    module's table. Param groups of an optimizer that share ``beta2``, ``eps`` and
    ``rectify_threshold`` have the same ``rho_t``, ``r_t`` and law of ``l_t`` whatever their lr:
    by default (``pool_groups``) they are monitored as one group, so that 62 groups of a
    layer-wise lr decay cost what one does. The variance over draws comes from a *probe*:
    ``probe_size`` coordinates in all, shared equally by the monitored groups, drawn at random
    (fixed seed) from each one's global parameters, so that every rank and every strategy probes
    the same ones. After every optimizer step the probe's gradients
    are kept, as the optimizer used them (after unscaling and clipping, summed over accumulated
    batches), for the last ``probe_history`` steps; at a logging event ``v_t`` is bootstrapped
    from them (:func:`lightning_ranger.optim.adaptive_lr.draw_statistics`) and the medians are
    taken over the probe coordinates whose gradient has been nonzero and finite at every step so
    far. The spread over the weights is computed from ``exp_avg_sq``: the extrema over every
    element, the quantiles, the share of ``eps``-dominated elements, mean, variance and histogram
    over every element of a group of up to 65536, from a uniform sample of a larger one.
    TensorBoard loggers (of ``lightning.pytorch`` or ``pytorch_lightning``) also get the histogram
    and a custom-scalars layout (tab *Custom Scalars*): ``rho_t`` with its threshold, ``r_t`` with
    the linear warmup, and the base-10 logarithms of the variance ratio with ``1 / r_t^2`` and the
    rectified ratio, and of the quantiles (readable on TensorBoard's default linear axes).

    Names are ``rectification/<metric>{sfx}``; the suffix ``{sfx}`` follows
    :class:`~lightning.pytorch.callbacks.LearningRateMonitor`: ``/pg{i}`` (``i`` from 1) for a
    group monitored alone when an optimizer has several param groups, ``/{name}`` for one that has
    a ``name``; pooled groups are named by their names joined by ``+`` (``/pg1+pg3``), or not at
    all when they are all of the optimizer's groups; all after ``/opt{j}`` (``j`` from 1, the
    position in ``trainer.optimizers``) when there are several optimizers. So one optimizer whose
    groups differ only in lr and weight decay logs unsuffixed names, as with one group.

    It works with every optimizer whose param groups have ``betas`` and ``eps`` and whose state
    has ``step`` and ``exp_avg_sq``: :class:`lightning_ranger.RAdam` and ``torch.optim`` Adam,
    AdamW, RAdam and NAdam; for others it says once that there is nothing to monitor. It works
    from ``on_train_batch_end`` (a new optimizer step shows as a new ``trainer.global_step``; the
    gradients are still in ``.grad`` until the next step's ``zero_grad``), never inside the
    optimizer step, and logs from rank 0. Under DDP rank 0 alone records and computes. Under
    ``ModelParallelStrategy`` (FSDP2, DTensor shards) and ``FSDPStrategy`` (FSDP1 flat shards)
    every rank records the probe coordinates it holds and computes its share; one all-reduce per
    logging event assembles them, so every series equals a single process's. Non-finite entries
    of ``exp_avg_sq`` or of the probe's gradients never raise: they are left out and counted. The
    statistics are those of :class:`~lightning_ranger.optim.RectificationTracker`, which this
    callback drives; the probe's gradient history is saved in checkpoints (gathered over the ranks
    when sharded), so after a resume the series of the variance over draws go on where they were.
    In manual optimization, call ``zero_grad`` before ``backward`` (not after ``step``), or the
    probe finds no gradients.

    Args:
        logging_interval: log every this many optimizer steps, ``> 0``. Default ``None``: the
            Trainer's ``log_every_n_steps``.
        log_histograms: also log the histogram of ``l_t`` to TensorBoard loggers (other loggers
            take no histograms, which is said once). Default ``True``.
        probe_size: coordinates whose gradients are kept, over all monitored groups, ``>= 2``.
            Default 1024.
        probe_history: optimizer steps of gradients kept, ``>= 2``. Default 256: the probe keeps
            ``4 * probe_size * probe_history`` bytes in all (1 MiB by default).
        quantiles: the quantiles of ``l_t`` over the weights to log, each in ``(0, 1)``, named
            ``p{100 q}``. Default ``(0.05, 0.5, 0.95)``.
        pool_groups: monitor the param groups of an optimizer that share ``beta2``, ``eps`` and
            ``rectify_threshold`` as one. Default ``True``; ``False`` monitors every group alone
            (its own series and a share of the probe, at a cost that grows with the groups).

    Raises:
        TypeError: if ``logging_interval`` is not an int or None, ``log_histograms`` not a bool,
            ``probe_size`` or ``probe_history`` not an int, ``quantiles`` not a sequence of reals,
            ``pool_groups`` not a bool.
        ValueError: if ``logging_interval <= 0``, ``probe_size`` or ``probe_history < 2``, a
            quantile is outside ``(0, 1)`` or repeated; at the start of training, if two groups
            monitored alone in an optimizer have the same ``name``.

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
        pool_groups: bool = True,
    ) -> None:
        self.logging_interval = check_int(
            "logging_interval",
            logging_interval,
            meaning="optimizer steps between logging events",
            optional=True,
        )
        self.log_histograms = check_bool("log_histograms", log_histograms)
        self.probe_size = check_int(
            "probe_size", probe_size, minimum=2, meaning="coordinates over all tracked groups"
        )
        self.probe_history = check_int(
            "probe_history", probe_history, minimum=2, meaning="optimizer steps of gradients kept"
        )
        self.quantiles = tuple(quantile_metrics(quantiles).values())
        self.pool_groups = check_bool("pool_groups", pool_groups)
        self._interval = 0
        self._last_step = 0
        self._tracker: RectificationTracker | None = None
        # The tracker state of the checkpoint being resumed, until training starts.
        self._loaded: dict[str, Any] | None = None
        self._histograms = False

    @property
    def tracker(self) -> RectificationTracker | None:
        """The tracker of the param groups monitored in the current ``fit`` (``None`` before
        training starts, without a logger, or with nothing to monitor)."""
        return self._tracker

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
        self._tracker = None
        loaded, self._loaded = self._loaded, None
        if not trainer.loggers or self._interval <= 0:
            return
        optimizers = _trackable(trainer.optimizers)
        if not optimizers:
            return
        several = len(trainer.optimizers) > 1
        self._tracker = RectificationTracker(
            list(optimizers.values()),
            self.probe_size,
            self.probe_history,
            self.quantiles,
            pool_groups=self.pool_groups,
            flat_shard_device=flat_shard_device(trainer.strategy),
            optimizer_prefixes=[f"/opt{j}" if several else "" for j in optimizers],
        )
        if loaded:
            try:
                self._tracker.load_state_dict(loaded)
            except ValueError as error:  # other probe settings or param groups: not worth a crash
                rank_zero_warn(
                    f"`RectificationMonitor`: the probe history in the checkpoint does not fit"
                    f" ({error}); the variance over draws starts afresh."
                )

        tensorboards = [logger for logger in trainer.loggers if _is_tensorboard(logger)]
        self._histograms = self.log_histograms and bool(tensorboards)
        if self.log_histograms:
            for logger in trainer.loggers:
                if not _is_tensorboard(logger):
                    rank_zero_info(
                        f"`RectificationMonitor`: {type(logger).__name__} takes no histograms;"
                        f" the `{PREFIX}/{HISTOGRAM}` histograms go to the TensorBoard loggers."
                    )
        if trainer.is_global_zero:
            for logger in tensorboards:
                self._tracker.write_layout(logger.experiment)  # type: ignore[attr-defined]

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
        tracker = self._tracker
        if tracker is None or step == last:
            return
        # Replicated state: rank 0 alone records and computes. Sharded: every rank does both, and
        # the computation is a collective.
        if not (tracker.sharded or trainer.is_global_zero):
            return
        tracker.update()
        if step // self._interval > last // self._interval:
            self._log(trainer, tracker, step)

    def _log(self, trainer: Trainer, tracker: RectificationTracker, step: int) -> None:
        metrics = tracker.compute()
        if not trainer.is_global_zero or not metrics:
            return
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
            if self._histograms and _is_tensorboard(logger):
                tracker.write_histograms(logger.experiment, step)  # type: ignore[attr-defined]

    @override
    def state_dict(self) -> dict[str, Any]:
        # Under sharded state a collective: Lightning asks every rank for callback states.
        return {} if self._tracker is None else {"tracker": self._tracker.state_dict()}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._loaded = state_dict.get("tracker")  # absent in checkpoints of older versions


def _trackable(optimizers: Sequence[Optimizer]) -> dict[int, Optimizer]:
    """The optimizers (by position, from 1) that have something to track; says once, from rank
    0, what each other one lacks."""
    found = {}
    for j, optimizer in enumerate(optimizers, start=1):
        reason = untrackable(optimizer)
        if reason is None:
            found[j] = optimizer
        else:
            rank_zero_info(
                f"`RectificationMonitor`: nothing to monitor for optimizer {j}"
                f" ({type(optimizer).__name__}): {reason}."
            )
    return found


def _is_tensorboard(logger: object) -> bool:
    """Whether ``logger`` is a ``TensorBoardLogger`` of ``lightning.pytorch`` or
    ``pytorch_lightning``."""
    return lightning_isinstance(logger, "loggers.TensorBoardLogger")
