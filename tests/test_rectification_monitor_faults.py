"""RectificationMonitor under faults: non-finite optimizer state and gradients never raise, are
left out of the statistics and counted."""

from __future__ import annotations

import math

import numpy as np
import pytest
from helpers.monitor import Regressor, fit, scalars
from lightning.pytorch import Callback

from lightning_ranger.callbacks.rectification_monitor import RectificationMonitor


class Faults(Callback):
    """NaN and inf into ``exp_avg_sq`` after step ``at``, a NaN gradient coordinate at the next."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if trainer.global_step == self.at:  # the step after `at`
            pl_module.net[2].weight.grad[0, 0] = math.nan

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.at:
            state = trainer.optimizers[0].state[trainer.model.net[0].weight]
            state["exp_avg_sq"][0, :3] = math.nan
            state["exp_avg_sq"][1, :2] = math.inf


def test_nonfinite_state_and_gradients_never_raise_and_are_counted(tmp_path):
    """5 of 83 entries of exp_avg_sq non-finite at step 6, 6 at step 7 (the NaN gradient):
    training goes on, the share is logged, and every other series stays finite, computed over the
    finite entries only; the probe drops the coordinate of the NaN gradient."""
    monitor = RectificationMonitor(logging_interval=1, probe_size=100)
    run, accumulator, reference = fit(
        tmp_path / "late", Regressor(), monitor, max_steps=7, callbacks_first=[Faults(at=6)]
    )
    nonfinite = scalars(accumulator, "rectification/nonfinite_fraction")
    assert [round(nonfinite[s] * 83) for s in range(1, 8)] == [0, 0, 0, 0, 0, 5, 6]
    for tag in accumulator.Tags()["scalars"]:
        assert all(math.isfinite(x) for x in scalars(accumulator, tag).values()), tag
    mean = scalars(accumulator, "rectification/adaptive_lr_mean")
    for step in (6, 7):
        values = reference.values[step][(0, 0)]["sorted"]
        finite = values[np.isfinite(values) & (values > 0)]
        assert mean[step] == pytest.approx(finite.mean(), rel=1e-4)
    (probe,) = monitor.tracker.probes.values()
    assert int((~probe.history.alive).sum()) == 1 + int(
        (probe.history.pool[:6] == 0).any(dim=0).sum()
    )

    # Early faults make the whole model diverge: every entry ends non-finite, nothing raises.
    monitor = RectificationMonitor(logging_interval=1)
    run, accumulator, _ = fit(
        tmp_path / "early", Regressor(), monitor, max_steps=8, callbacks_first=[Faults(at=2)]
    )
    assert run.global_step == 8
    assert scalars(accumulator, "rectification/nonfinite_fraction")[8] == 1.0
    assert 8 not in scalars(accumulator, "rectification/adaptive_lr_var_ratio")
    for tag in accumulator.Tags()["scalars"]:
        assert all(math.isfinite(x) for x in scalars(accumulator, tag).values()), tag


class ZeroRow(Callback):
    """A gradient row that is always 0, so its second moments stay exactly 0."""

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        pl_module.net[0].weight.grad[0] = 0.0


def test_eps_zero_with_zero_second_moments_never_raises(tmp_path):
    """With ``eps=0`` (allowed by RAdam) a second moment of 0 makes ``l_t`` infinite: the monitor
    logs that instead of failing the training step; no entry counts as below ``eps``."""
    monitor = RectificationMonitor(logging_interval=1, probe_size=100, pool_groups=False)
    groups = [{"eps": 0.0}, {"eps": 0.0}]
    run, accumulator, _ = fit(
        tmp_path, Regressor(groups=groups), monitor, max_steps=4, callbacks_first=[ZeroRow()]
    )
    assert run.global_step == 4
    for group in ("/pg1", "/pg2"):
        assert set(
            scalars(accumulator, f"rectification/eps_dominated_fraction{group}").values()
        ) == {0.0}
    assert scalars(accumulator, "rectification/adaptive_lr_mean/pg1")[4] == math.inf
    assert math.isfinite(scalars(accumulator, "rectification/adaptive_lr_mean/pg2")[4])
