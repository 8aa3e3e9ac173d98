"""SlowWeightSwap: evaluation on the slow weights, training untouched, exception safety."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers.asserts import assert_equal, params
from helpers.data import make_data
from helpers.models import Net
from helpers.trainers import make_trainer
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import nn

from lightning_ranger.callbacks.lookahead import Lookahead
from lightning_ranger.callbacks.slow_weight_swap import SlowWeightSwap


def _loss_by_hand(model: Net) -> float:
    """The validation loss, computed without Lightning on the module's current weights."""
    x, y = make_data(8, seed=99).tensors
    with torch.no_grad():
        return nn.functional.mse_loss(model.net.eval()(x), y).item()


class _Recorder(Callback):
    """Records the module's weights when validation starts and ends (placed before the swap, it
    sees the fast weights) and optionally fails inside validation."""

    def __init__(
        self, fail_at_epoch: int | None = None, error: type[BaseException] = RuntimeError
    ) -> None:
        self.fail_at_epoch, self.error = fail_at_epoch, error
        self.at_start: list[dict[str, torch.Tensor]] = []
        self.val_losses: list[float] = []

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.at_start.append(params(pl_module))

    def on_validation_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, *args: Any
    ) -> None:
        if trainer.current_epoch == self.fail_at_epoch:
            raise self.error("failure inside validation")

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.val_losses.append(trainer.callback_metrics["val_loss"].item())


def _fit(tmp_path: Path, callbacks: list[Callback], model: Net | None = None) -> Net:
    model = model or Net("radam", n_batches=7)
    trainer = make_trainer(tmp_path, callbacks, max_epochs=3, limit_val_batches=None)
    trainer.fit(model)
    return model


def test_validation_runs_on_the_slow_weights(tmp_path: Path) -> None:
    recorder = _Recorder()
    model = _fit(tmp_path, [recorder, Lookahead(k=4), SlowWeightSwap()])
    # After the last validation no training step ran, so the slow weights that final_weights="slow"
    # leaves in the module are the ones that the last validation saw.
    assert recorder.val_losses[-1] == pytest.approx(_loss_by_hand(model), abs=1e-6)
    # 21 steps, synced at 20: the fast weights differ, and so would their loss.
    fast_at_last_validation = recorder.at_start[-1]
    assert not torch.equal(
        fast_at_last_validation["net.layers.out.weight"], model.net.layers.out.weight
    )


def test_training_trajectory_is_the_same_with_and_without_the_swap(tmp_path: Path) -> None:
    with_swap = _fit(tmp_path / "a", [Lookahead(k=3, final_weights="fast"), SlowWeightSwap()])
    without = _fit(tmp_path / "b", [Lookahead(k=3, final_weights="fast")])
    assert_equal(params(with_swap), params(without))


def test_test_and_predict_run_on_the_slow_weights_and_leave_the_fast_ones(tmp_path: Path) -> None:
    lookahead = Lookahead(k=3, final_weights="fast")
    model = Net("radam", n_batches=7)
    trainer = make_trainer(tmp_path, [lookahead, SlowWeightSwap()], max_epochs=1)
    trainer.fit(model)
    fast = params(model)
    lookahead.show_slow_weights()
    slow_loss = _loss_by_hand(model)
    slow_out = model.net.eval()(make_data(8, seed=99).tensors[0]).detach()
    lookahead.show_fast_weights()

    results = trainer.test(model, verbose=False)
    assert results[0]["test_loss"] == pytest.approx(slow_loss, abs=1e-6)
    assert_equal(params(model), fast)
    predictions = trainer.predict(model)
    assert predictions is not None
    assert torch.allclose(torch.cat(predictions), slow_out, atol=1e-6)  # type: ignore[arg-type]
    assert_equal(params(model), fast)


def test_evaluating_after_a_slow_final_fit_keeps_the_slow_weights(tmp_path: Path) -> None:
    lookahead = Lookahead(k=3)
    model = Net("radam", n_batches=7)
    trainer = make_trainer(
        tmp_path, [lookahead, SlowWeightSwap()], max_epochs=1, limit_val_batches=None
    )
    trainer.fit(model)
    slow = params(model)
    results = trainer.validate(model, verbose=False)
    assert results[0]["val_loss"] == pytest.approx(_loss_by_hand(model), abs=1e-6)
    assert_equal(params(model), slow)
    assert lookahead.slow_weights_active


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_an_exception_in_validation_puts_the_fast_weights_back(
    tmp_path: Path, error: type[BaseException]
) -> None:
    recorder = _Recorder(fail_at_epoch=1, error=error)
    lookahead = Lookahead(k=3, final_weights="fast")
    # Lightning answers a KeyboardInterrupt with `sys.exit(1)` after ignoring further SIGINTs.
    expected = SystemExit if error is KeyboardInterrupt else RuntimeError
    handler = signal.getsignal(signal.SIGINT)
    model = Net("radam", n_batches=7)
    try:
        with pytest.raises(expected):
            _fit(tmp_path, [recorder, lookahead, SlowWeightSwap()], model)
    finally:
        signal.signal(signal.SIGINT, handler)
    assert not lookahead.slow_weights_active
    fast = params(model)
    assert_equal(fast, recorder.at_start[-1])
    lookahead.show_slow_weights()  # 14 steps, synced at 12: the slow weights differ
    assert not torch.equal(params(model)["net.layers.out.weight"], fast["net.layers.out.weight"])


def test_without_lookahead_it_fails_at_setup(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, [SlowWeightSwap()])
    with pytest.raises(ValueError, match=r"no `Lookahead` callback: add `Lookahead\(\)`"):
        trainer.fit(Net())
