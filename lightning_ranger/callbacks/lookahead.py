"""Lookahead (Zhang et al., 2019, Algorithm 1) as a Lightning callback: the hooks that decide
when the slow weights sync, whether the fast weights are finite, and which weights the module
shows; the sync itself is :func:`~lightning_ranger.optim.lookahead.lookahead_sync_`."""

from __future__ import annotations

from typing import Any, Literal

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.types import STEP_OUTPUT
from torch import Tensor
from typing_extensions import override

from lightning_ranger._namespaces import lightning_isinstance
from lightning_ranger._validation import check_choice, check_int, check_real
from lightning_ranger.callbacks._lookahead_checkpoint import (
    FAST_WEIGHTS_KEY,
    SLOW_WEIGHTS_KEY,
    check_checkpoint_names,
    load_sharded,
    save_weights,
    weights_to_load,
)
from lightning_ranger.callbacks._lookahead_faults import (
    RESTORES_METRIC,
    nonfinite_parameter,
    restart_fast_weights,
)
from lightning_ranger.callbacks._slow_weights import SlowWeights
from lightning_ranger.callbacks._strategies import check_strategy, flat_shard_device
from lightning_ranger.optim.lookahead_optimizer import Lookahead as LookaheadOptimizer

__all__ = [
    "FAST_WEIGHTS_KEY",
    "RESTORES_METRIC",
    "SLOW_WEIGHTS_KEY",
    "Lookahead",
    "lookahead_callbacks",
]


class Lookahead(Callback):
    r"""Lookahead: slow weights that follow the inner optimizer's fast weights every ``k`` steps.

    `Lookahead Optimizer: k steps forward, 1 step back <https://arxiv.org/abs/1907.08610>`_ (Zhang
    et al., 2019) keeps slow weights ``phi`` beside the fast weights ``theta`` that any optimizer
    moves. Every ``k`` optimizer steps:

    .. code-block:: text

        phi   <- phi + alpha (theta - phi)
        theta <- phi

    Ranger is Lookahead around :class:`~lightning_ranger.RAdam`. Use it to make an optimizer less
    sensitive to its learning rate and to reduce the variance of its trajectory. Add
    :class:`~lightning_ranger.callbacks.slow_weight_swap.SlowWeightSwap` to evaluate on the slow
    weights.

    - *When*: the slow weights start as a copy of the parameters with ``requires_grad`` when ``fit``
      starts (or come back from the checkpoint it resumes from); each ``fit`` call starts afresh
      from the module's weights unless it resumes from a checkpoint. The sync runs at the end of the
      training batch in which the ``k``-th optimizer step since the last sync happened, counting
      optimizer steps as ``trainer.global_step`` does: once per ``accumulate_grad_batches`` batches,
      once per ``optimizer.step()`` call in manual optimization, once per optimizer and step with
      several optimizers (a batch with several steps that passes ``k`` syncs once, at its end, and
      the next cycle starts there). A step that a ``GradScaler`` skipped (``precision="16-mixed"``
      with inf/NaN gradients) still increments ``trainer.global_step`` in automatic optimization, so
      it counts as one of the ``k`` steps.
    - *What*: every parameter with ``requires_grad`` when ``fit`` starts, by name; buffers such as
      BatchNorm running statistics are not touched. A parameter that becomes trainable later
      (``BackboneFinetuning``, a manual unfreeze) is tracked from the next sync on, its slow weights
      starting from its value there (a rank-zero warning names it); one that becomes frozen stays
      tracked, and the syncs move it to its slow weights, which then stay put.
    - *Faults*: before each sync, the fast weights are checked for NaN and infinity, on every
      rank (one all-reduce of a flag). With ``on_nonfinite="restore"`` the slow weights stay as
      they are, the fast weights restart from them, the ``state`` of every optimizer of the trainer
      is emptied (Adam-like moments and RAdam's rectification warm up again) and the ``k``-cycle
      goes on from there; a rank-zero warning names the step and the first non-finite parameter,
      and the running count is logged as ``lookahead/restores``. ``"raise"`` raises instead.
    - *Cost*: 5 memory transfers per element per sync (the check reads the fast weights, the sync
      reads and writes both) and one extra copy of the trainable parameters (one shard per rank
      under FSDP2; float32 for 16-bit parameters).
    - *After fit*: the module holds the slow weights (``final_weights="slow"``, the paper's output)
      or keeps the fast ones (``"fast"``); a checkpoint saved then resumes the same either way.
    - *Checkpoints*: ``checkpoint["state_dict"]`` holds the slow weights; the fast weights and the
      position in the ``k``-cycle are saved too, so resuming continues bit-for-bit (the layout is
      on the documentation's checkpoints page). A checkpoint written without Lookahead starts the
      slow weights from its weights; ``save_weights_only=True`` checkpoints call no callbacks and
      hold the fast weights.
    - *Strategies*: a single device, DDP, FSDP2 (``ModelParallelStrategy``) and ``FSDPStrategy``
      (FSDP1) with ``use_orig_params=True``, ``state_dict_type="full"`` and ``FULL_SHARD``,
      ``SHARD_GRAD_OP`` or ``NO_SHARD``; other FSDP1 set-ups and ``DeepSpeedStrategy`` are refused
      at setup. Every write into the parameters (a sync, a swap, a restore, a resume) first frees
      the unsharded copies that FSDP keeps after a forward without backward, so the next forward
      computes with the values written.

    Args:
        k: number of optimizer steps between syncs, a positive int. Default: ``6``.
        alpha: slow-weight step size, in ``(0, 1]``; ``1`` makes the slow weights equal the fast
            ones at every sync. Default: ``0.5``.
        final_weights: ``"slow"`` or ``"fast"``, the weights the module holds when ``fit`` ends.
            Default: ``"slow"``.
        on_nonfinite: what a sync does when a fast weight is NaN or infinite: ``"restore"`` the
            fast weights from the slow ones, or ``"raise"``. Default: ``"restore"``.

    Raises:
        TypeError: if ``k`` is not an int, ``alpha`` not a real number, ``final_weights`` or
            ``on_nonfinite`` not a string.
        ValueError: if ``k < 1``, ``alpha`` is outside ``(0, 1]`` or NaN, ``final_weights`` or
            ``on_nonfinite`` is unknown; at setup, if the trainer has two ``Lookahead`` callbacks,
            a strategy that is refused (above) or an optimizer wrapped in
            :class:`lightning_ranger.optim.Lookahead`; when resuming, if the checkpoint holds
            weights of parameters that the module does not have.
        FloatingPointError: at a sync with ``on_nonfinite="raise"``, if a fast weight is NaN or
            infinite (on any rank).

    Example::

        from lightning.pytorch import Trainer
        from lightning.pytorch.demos.boring_classes import BoringModel
        from lightning_ranger.callbacks.lookahead import Lookahead

        trainer = Trainer(max_steps=12, callbacks=[Lookahead(k=6, alpha=0.5)], logger=False)
        trainer.fit(BoringModel())

    """

    def __init__(
        self,
        k: int = 6,
        alpha: float = 0.5,
        final_weights: Literal["slow", "fast"] = "slow",
        on_nonfinite: Literal["restore", "raise"] = "restore",
    ) -> None:
        self.k = check_int("k", k)
        self.alpha = check_real("alpha", alpha, 0.0, 1.0, low_open=True)
        self.final_weights: Literal["slow", "fast"] = check_choice(
            "final_weights", final_weights, ("slow", "fast")
        )
        self.on_nonfinite: Literal["restore", "raise"] = check_choice(
            "on_nonfinite", on_nonfinite, ("restore", "raise")
        )
        #: How many times the fast weights were restored from the slow ones (kept across resumes).
        self.restores = 0
        self._weights: SlowWeights | None = None
        # `trainer.global_step` at the last sync (or at the start); `None` until training starts.
        self._synced_at_step: int | None = None
        # (names, slow, fast) from a single-file checkpoint loaded before the strategy set the
        # model up.
        self._pending: tuple[list[str], dict[str, Tensor], dict[str, Tensor]] | None = None

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if len(lookahead_callbacks(trainer)) > 1:
            raise ValueError(
                "`Trainer(callbacks=...)` has more than one `Lookahead` callback; keep one"
            )
        if stage != TrainerFn.FITTING:
            return
        check_strategy(
            trainer.strategy,
            "Lookahead",
            "its flat-parameter partitions cannot be addressed by parameter name",
            allow_fsdp1=True,
        )
        callbacks: list[Callback] = trainer.callbacks  # type: ignore[attr-defined]  # set at init
        if any(
            lightning_isinstance(cb, "callbacks.ModelCheckpoint")
            and getattr(cb, "save_weights_only", False)
            for cb in callbacks
        ):
            rank_zero_warn(
                "`ModelCheckpoint(save_weights_only=True)` does not call callbacks, so its "
                "checkpoints hold the fast weights during training, not Lookahead's slow weights."
            )

    @property
    def slow_weights_active(self) -> bool:
        """Whether the module currently holds the slow weights (the fast ones are stashed)."""
        return self._weights is not None and self._weights.shows_slow

    def show_slow_weights(self) -> bool:
        """Put the slow weights in the module, keeping the fast ones aside.

        Returns ``True`` if this changed the module, ``False`` if it already held the slow weights
        or no slow weights exist (no ``fit`` ran, or an evaluation loaded a checkpoint, whose
        ``state_dict`` already holds slow weights).
        """
        return self._weights is not None and self._weights.show_slow()

    def show_fast_weights(self) -> None:
        """Put the fast weights back in the module (no-op if it holds them)."""
        if self._weights is not None:
            self._weights.show_fast()

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if any(isinstance(optimizer, LookaheadOptimizer) for optimizer in trainer.optimizers):
            raise ValueError(
                "The trainer has both the `Lookahead` callback and an optimizer wrapped in "
                "`lightning_ranger.optim.Lookahead` (or `Ranger`), which would sync twice; keep "
                "one: the callback with the inner optimizer, or the wrapper without the callback"
            )
        # After the strategy moved (and possibly sharded) the parameters.
        if self._pending is not None:
            names, slow, fast = self._pending
            self._weights = _slow_weights(trainer, pl_module, names)
            self._weights.load(slow, fast)
            self._pending = None
        else:
            self._weights = _slow_weights(trainer, pl_module)
            self._synced_at_step = None  # set by `load_state_dict` or at train start
            self.restores = 0

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._synced_at_step is None:  # `global_step` is restored by now
            self._synced_at_step = trainer.global_step

    @override
    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: STEP_OUTPUT,
        batch: Any,
        batch_idx: int,
    ) -> None:
        assert self._synced_at_step is not None
        if trainer.global_step - self._synced_at_step >= self.k:
            self._sync(trainer)
            self._synced_at_step = trainer.global_step

    def _sync(self, trainer: pl.Trainer) -> None:
        """Take up newly trainable parameters, check the fast weights on every rank, then sync or
        handle the fault."""
        assert self._weights is not None and self._synced_at_step is not None
        step = trainer.global_step
        new = self._weights.track_new()
        if new:
            rank_zero_warn(
                f"Lookahead: {len(new)} parameters became trainable since fit started and are "
                f"tracked from step {step} on, their slow weights starting from their values "
                f"there: {new}"
            )
        name = nonfinite_parameter(self._weights, trainer)
        if name is None:
            self._weights.sync(self.alpha)
            return
        if self.on_nonfinite == "raise":
            raise FloatingPointError(
                f"Lookahead found a NaN or infinite fast weight in parameter {name!r} at step "
                f"{step} (`on_nonfinite='raise'`)"
            )
        self.restores += 1
        restart_fast_weights(self._weights, trainer, name, self._synced_at_step, self.restores)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.final_weights == "slow":
            self.show_slow_weights()

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # Strategies move the module to the CPU at teardown to free accelerator memory.
        if self._weights is not None:
            self._weights.follow_parameters()

    @override
    def state_dict(self) -> dict[str, Any]:
        if self._weights is None:
            return {}
        return {
            "synced_at_step": self._synced_at_step,
            "names": list(self._weights.names),
            "restores": self.restores,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._synced_at_step = state_dict["synced_at_step"]
        self.restores = state_dict.get("restores", 0)  # absent before checkpoints counted them

    @override
    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if self._weights is None:
            return
        save_weights(self._weights, trainer, pl_module, checkpoint)

    @override
    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if trainer.state.fn != TrainerFn.FITTING:
            # The module now holds the checkpoint's `state_dict`: slow weights if from Lookahead.
            self._weights = None
            return
        state = checkpoint.get("callbacks", {}).get(self.state_key)
        if state is None:
            rank_zero_info(
                "The checkpoint was not written with `Lookahead`: the slow weights start from its "
                "weights."
            )
            if self._weights is not None:  # taken before the strategy restored the checkpoint
                self._weights = _slow_weights(trainer, pl_module)
            return
        names: list[str] = state["names"]
        check_checkpoint_names(pl_module, names)
        if self._weights is not None and self._weights.names != tuple(names):
            self._weights = _slow_weights(trainer, pl_module, names)
        loaded = weights_to_load(trainer, pl_module, checkpoint, names)
        if loaded is None:
            # Strategies restore sharded checkpoints after setup, so the slow weights exist.
            assert self._weights is not None
            load_sharded(self._weights, trainer.ckpt_path)
        elif self._weights is None:  # restored before the strategy set up the model
            self._pending = (names, *loaded)
        else:
            self._weights.load(*loaded)


def _slow_weights(
    trainer: pl.Trainer, pl_module: pl.LightningModule, names: list[str] | None = None
) -> SlowWeights:
    """Slow weights of ``pl_module`` as the strategy set it up: FSDP1's flat shards gathered on
    its device, and the FSDP units of the module that the strategy runs (FSDP1's root wraps
    ``pl_module``) resharded before each write."""
    return SlowWeights(
        pl_module, flat_shard_device(trainer.strategy), names, root=trainer.strategy.model
    )


def lookahead_callbacks(trainer: pl.Trainer) -> list[Lookahead]:
    """The :class:`Lookahead` callbacks in ``trainer.callbacks``."""
    callbacks: list[Callback] = trainer.callbacks  # type: ignore[attr-defined]  # set at init
    return [cb for cb in callbacks if isinstance(cb, Lookahead)]
