"""Evaluate on Lookahead's slow weights, and train on the fast ones."""

from __future__ import annotations

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from lightning_ranger.callbacks.lookahead import Lookahead, lookahead_callbacks

__all__ = ["SlowWeightSwap"]


class SlowWeightSwap(Callback):
    r"""Run validation, test and predict on the slow weights of the trainer's
    :class:`~lightning_ranger.callbacks.lookahead.Lookahead` callback.

    Lookahead's slow weights are the ones it returns, and usually the better ones to evaluate; the
    fast weights are where the inner optimizer is. This callback puts the slow weights in the module
    when an evaluation loop starts (``on_validation_start``, ``on_test_start``,
    ``on_predict_start``) and the fast weights back when it ends, so training resumes on the fast
    weights untouched, bit for bit. An exception inside the loop (a ``KeyboardInterrupt`` too)
    still puts the fast weights back, through ``on_exception``.

    Everything logged during validation is therefore measured on the slow weights, and so are the
    monitors of ``ModelCheckpoint`` and ``EarlyStopping``. The sanity check runs on the slow
    weights as well (equal to the fast ones unless resuming). If the module already holds the slow
    weights (after a ``fit`` with ``Lookahead(final_weights="slow")``, or after evaluating a loaded
    checkpoint, whose ``state_dict`` holds them), nothing is swapped.

    Raises:
        ValueError: at setup, if the trainer has no ``Lookahead`` callback.

    Example::

        from lightning.pytorch import Trainer
        from lightning.pytorch.demos.boring_classes import BoringModel
        from lightning_ranger.callbacks.lookahead import Lookahead
        from lightning_ranger.callbacks.slow_weight_swap import SlowWeightSwap

        trainer = Trainer(max_steps=12, callbacks=[Lookahead(), SlowWeightSwap()], logger=False)
        trainer.fit(BoringModel())

    """

    def __init__(self) -> None:
        self._lookahead: Lookahead | None = None
        self._swapped = False

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        lookaheads = lookahead_callbacks(trainer)
        if not lookaheads:
            raise ValueError(
                "`SlowWeightSwap` evaluates Lookahead's slow weights, but the trainer has no "
                "`Lookahead` callback: add `Lookahead()` to `Trainer(callbacks=[...])`"
            )
        self._lookahead = lookaheads[0]

    def _swap_in(self) -> None:
        assert self._lookahead is not None
        self._swapped = self._lookahead.show_slow_weights()

    def _swap_out(self) -> None:
        assert self._lookahead is not None
        if self._swapped:
            self._lookahead.show_fast_weights()
            self._swapped = False

    @override
    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._swap_in()

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._swap_out()

    @override
    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._swap_in()

    @override
    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._swap_out()

    @override
    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._swap_in()

    @override
    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._swap_out()

    @override
    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        if self._lookahead is not None:
            self._swap_out()
