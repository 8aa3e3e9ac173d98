"""RectificationMonitor on one process: every logged series against the closed forms and the
statistics computed by hand from the optimizer state, and the probe's gradients against the ones
the optimizer used."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from helpers.monitor import (
    DRAWS,
    GAUSSIAN,
    LOGGED_LOG10,
    METRICS,
    TWO_GROUPS,
    Regressor,
    check_group,
    check_histograms,
    fit,
    scalars,
    trainer,
)
from lightning.pytorch import Callback

from lightning_ranger import rectification
from lightning_ranger.callbacks.rectification_monitor import RectificationMonitor
from lightning_ranger.optim import adaptive_lr as stats

STEPS = list(range(1, 13))


def test_two_param_groups_every_step(tmp_path):
    """RAdam with two groups (beta2 0.999 / 0.95, thresholds 5 / 8): every series at every step."""
    _, accumulator, reference = fit(
        tmp_path, Regressor(groups=TWO_GROUPS), RectificationMonitor(logging_interval=1)
    )
    steps = list(range(1, 13))
    expected_tags = {
        f"rectification/{m}/pg{i}"
        for m in [*METRICS, *DRAWS, GAUSSIAN, *LOGGED_LOG10]
        for i in (1, 2)
    }
    assert set(accumulator.Tags()["scalars"]) == expected_tags
    for i in (1, 2):  # each logarithm beside its series, where that is positive
        for log10 in LOGGED_LOG10:
            series = scalars(accumulator, f"rectification/{log10.removesuffix('_log10')}/pg{i}")
            logged = scalars(accumulator, f"rectification/{log10}/pg{i}")
            assert sorted(logged) == [s for s, v in sorted(series.items()) if v > 0], log10
            for step, value in logged.items():
                assert value == pytest.approx(math.log10(series[step]), abs=1e-6)
    for i, group in enumerate(TWO_GROUPS):
        for metric in DRAWS:
            assert sorted(scalars(accumulator, f"rectification/{metric}/pg{i + 1}")) == steps[1:]
        gaussian = scalars(accumulator, f"rectification/{GAUSSIAN}/pg{i + 1}")
        beta2 = group["betas"][1]
        assert sorted(gaussian) == [t for t in steps[1:] if rectification(t, beta2)[0] > 4]
    for i, group in enumerate(TWO_GROUPS):
        beta2, threshold = group["betas"][1], group.get("rectify_threshold", 5.0)
        check_group(accumulator, reference, (0, i), f"/pg{i + 1}", beta2, threshold, steps)
        check_histograms(accumulator, reference, (0, i), f"/pg{i + 1}", steps)
    # Both sides of each threshold are in the logs: r_t jumps from 0 to > 0 at 6 and at 9.
    for suffix, first_rectified in (("/pg1", 6), ("/pg2", 9)):
        r_t = scalars(accumulator, f"rectification/r_t{suffix}")
        assert all(r_t[s] == 0.0 for s in steps if s < first_rectified)
        assert all(r_t[s] > 0.0 for s in steps if s >= first_rectified)


@pytest.mark.parametrize("precision", ["bf16-mixed", "bf16-true", "16-true", "64-true"])
def test_other_precisions(tmp_path, precision):
    """The statistics of the state in its dtype (bfloat16/float16 with 16-bit parameters), against
    the float64 statistics of the same state."""
    _, accumulator, reference = fit(
        tmp_path,
        Regressor(groups=TWO_GROUPS),
        RectificationMonitor(logging_interval=1),
        precision=precision,
    )
    for i, group in enumerate(TWO_GROUPS):
        beta2, threshold = group["betas"][1], group.get("rectify_threshold", 5.0)
        check_group(accumulator, reference, (0, i), f"/pg{i + 1}", beta2, threshold, STEPS)


def test_torch_adam_every_five_steps(tmp_path):
    """torch.optim.Adam, one group (no suffix, threshold 5): 4 points in 20 steps."""
    _, accumulator, reference = fit(
        tmp_path,
        Regressor(optimizer="adam"),
        RectificationMonitor(logging_interval=5),
        max_steps=20,
    )
    steps = [5, 10, 15, 20]
    check_group(accumulator, reference, (0, 0), "", 0.999, 5.0, steps)
    check_histograms(accumulator, reference, (0, 0), "", steps)
    assert scalars(accumulator, "rectification/r_t")[5] == 0.0
    assert scalars(accumulator, "rectification/r_t")[10] > 0.0


def test_histogram_of_a_large_group_counts_a_random_sample(tmp_path):
    """70003 elements > 65536: buckets, sum, sum of squares and the eps-dominated share of a
    random half, scaled; num, min, max exact."""
    _, accumulator, reference = fit(
        tmp_path, Regressor(hidden=7000), RectificationMonitor(logging_interval=4), max_steps=8
    )
    check_group(accumulator, reference, (0, 0), "", 0.999, 5.0, [4, 8], sampled=True)
    for event in accumulator.Histograms("rectification/adaptive_lr"):
        h, expected = event.histogram_value, reference.values[event.step][(0, 0)]
        assert h.num == expected["count"] == 70003
        for field in ("min", "max"):
            assert getattr(h, field) == pytest.approx(expected[field], rel=1e-5), field
        assert h.sum == pytest.approx(expected["sum"], rel=0.02)
        assert h.sum_squares == pytest.approx(expected["sum_sq"], rel=0.1)
        assert sum(h.bucket) == pytest.approx(70003, rel=1e-9)
        # The sample's distribution over the buckets is the full one's, up to sampling noise.
        first = int(np.argmin(np.abs(reference.limits / h.bucket_limit[0] - 1.0)))
        np.testing.assert_allclose(h.bucket_limit, reference.limits[first:][: len(h.bucket)])
        sampled = np.zeros(len(reference.limits))
        sampled[first : first + len(h.bucket)] = h.bucket
        distance = np.abs(sampled - expected["counts"]).sum() / 2 / 70003
        assert distance < 0.02


def test_default_interval_is_log_every_n_steps_and_no_histograms(tmp_path):
    _, accumulator, reference = fit(
        tmp_path,
        Regressor(),
        RectificationMonitor(log_histograms=False),
        max_steps=10,
        log_every_n_steps=4,
    )
    check_group(accumulator, reference, (0, 0), "", 0.999, 5.0, [4, 8])
    assert accumulator.Tags()["histograms"] == []


def test_group_names_and_two_optimizers(tmp_path):
    """A group's `name` replaces `pg{i}`; several optimizers add `/opt{j}` before it."""
    groups = [{"name": "encoder", "betas": (0.9, 0.99)}, {"betas": (0.9, 0.999)}]
    _, accumulator, reference = fit(
        tmp_path / "named", Regressor(groups=groups), RectificationMonitor(logging_interval=3)
    )
    check_group(accumulator, reference, (0, 0), "/encoder", 0.99, 5.0, [3, 6, 9, 12])
    check_group(accumulator, reference, (0, 1), "/pg2", 0.999, 5.0, [3, 6, 9, 12])

    # Manual optimization: each batch steps both optimizers, so global_step counts 2 per batch
    # while each optimizer's `t` counts 1; the x-axis is global_step, rho_t follows `t`.
    _, accumulator, reference = fit(
        tmp_path / "two",
        Regressor(two_optimizers=True),
        RectificationMonitor(logging_interval=4),
        max_steps=16,
    )
    assert set(accumulator.Tags()["scalars"]) == {
        f"rectification/{m}/opt{j}"
        for m in [*METRICS, *DRAWS, GAUSSIAN, *LOGGED_LOG10]
        for j in (1, 2)
    }
    for j in (1, 2):
        check_group(accumulator, reference, (j - 1, 0), f"/opt{j}", 0.999, 5.0, [4, 8, 12, 16])
        assert reference.values[16][(j - 1, 0)]["t"] == 8.0


def test_monitor_does_not_change_training(tmp_path):
    """Same weights and optimizer state after 12 steps with and without the monitor."""
    results = []
    for name, callbacks in (("with", [RectificationMonitor(logging_interval=1)]), ("without", [])):
        model = Regressor(groups=TWO_GROUPS)
        run = trainer(tmp_path / name, 12, callbacks)
        run.fit(model)
        results.append((model.state_dict(), run.optimizers[0].state_dict()["state"]))
    (params_a, state_a), (params_b, state_b) = results
    for key in params_a:
        torch.testing.assert_close(params_a[key], params_b[key], rtol=0, atol=0)
    for index in state_a:
        for key in ("step", "exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(state_a[index][key], state_b[index][key], rtol=0, atol=0)


class Recorder(Callback):
    """The optimizer's ``exp_avg_sq`` after every step, and the gradient norm before clipping."""

    def __init__(self) -> None:
        self.v: list[torch.Tensor] = []
        self.norms: list[float] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        grads = [p.grad.reshape(-1) for p in pl_module.parameters()]
        self.norms.append(float(torch.cat(grads).norm()))

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step > len(self.v):
            optimizer = trainer.optimizers[0]
            v = [
                optimizer.state[p]["exp_avg_sq"].reshape(-1)
                for p in optimizer.param_groups[0]["params"]
            ]
            self.v.append(torch.cat(v).clone())


def test_probe_records_the_gradients_the_optimizer_used(tmp_path):
    """With 2 accumulated batches and norm clipping at 0.05, the probe holds the gradients that
    the optimizer's v_t was updated with: ``g_t^2 = (v_t - beta2 v_{t-1}) / (1 - beta2)``, in
    float64. The logged variance series are the statistics of those gradients."""
    recorder = Recorder()
    monitor = RectificationMonitor(logging_interval=6, probe_size=100)
    _, accumulator, _ = fit(
        tmp_path,
        Regressor(),
        monitor,
        max_steps=6,
        precision="64-true",
        accumulate_grad_batches=2,
        gradient_clip_val=0.05,
        callbacks_first=[recorder],
    )
    assert min(recorder.norms) > 0.05  # every step was clipped
    beta2 = 0.999
    v = [torch.zeros_like(recorder.v[0]), *recorder.v]
    squares = torch.stack([(b - beta2 * a) / (1 - beta2) for a, b in itertools.pairwise(v)])
    (probe,) = monitor.tracker.probes.values()
    assert probe.size == 83 and probe.history.recorded == 6
    pool = probe.history.pool.double()
    torch.testing.assert_close(pool.square(), squares, rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(float(pool.norm(dim=1).max()), 0.05, rtol=1e-6)
    draws = stats.draw_statistics(squares.sqrt(), 6, beta2, 1e-8, replicates=128)
    ratio, relative = stats.summarize_draws(
        draws.var, draws.mean, draws.var_limit, (squares != 0).all(dim=0)
    )
    assert scalars(accumulator, "rectification/adaptive_lr_var_ratio")[6] == pytest.approx(
        ratio, rel=1e-5
    )
    assert scalars(accumulator, "rectification/adaptive_lr_rel_var")[6] == pytest.approx(
        relative, rel=1e-5
    )


def test_probe_records_unscaled_gradients_under_16_mixed(tmp_path):
    """16-mixed (CPU GradScaler, scale 65536): the probe holds the unscaled gradients, those that
    ``on_before_optimizer_step`` sees, whole (probe of every coordinate)."""
    recorder = Recorder()
    monitor = RectificationMonitor(logging_interval=4, probe_size=100)
    fit(tmp_path, Regressor(), monitor, 4, callbacks_first=[recorder], precision="16-mixed")
    (probe,) = monitor.tracker.probes.values()
    norms = probe.history.pool.double().norm(dim=1)
    np.testing.assert_allclose(norms.numpy(), recorder.norms, rtol=1e-6)
