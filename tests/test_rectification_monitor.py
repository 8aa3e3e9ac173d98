"""RectificationMonitor on one process: names, closed forms, statistics by hand, bad input."""

from __future__ import annotations

import csv
import itertools
import logging
import math
import re
from unittest.mock import Mock

import numpy as np
import pytest
import torch
from helpers.monitor import TWO_GROUPS, Reference, Regressor, events, scalars, trainer
from lightning.pytorch import Callback
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.strategies import FSDPStrategy
from tensorboard.plugins.custom_scalar import layout_pb2
from torch.distributed.fsdp import ShardingStrategy

from lightning_ranger import RAdam, rectification
from lightning_ranger.callbacks.rectification_monitor import (
    RectificationMonitor,
    _build_probe,
    _Group,
)
from lightning_ranger.optim import adaptive_lr as stats

METRICS = ["rho_t", "r_t", "rho_t_threshold", "r_t_linear_warmup"]
METRICS += ["adaptive_lr_mean", "adaptive_lr_var", "eps_dominated_fraction", "nonfinite_fraction"]
METRICS += ["adaptive_lr_p05", "adaptive_lr_p50", "adaptive_lr_p95"]
#: The variance over draws: from the second recorded step on (``_gaussian``: while rho_t > 4).
DRAWS = ["adaptive_lr_var_ratio", "adaptive_lr_rel_var", "rectified_var_ratio"]
GAUSSIAN = "adaptive_lr_var_ratio_gaussian"
STEPS = list(range(1, 13))


def closed_form(t: float, beta2: float, threshold: float) -> dict[str, float]:
    """rho_t, r_t (0 up to the threshold), the threshold and the linear warmup, by the paper."""
    r_inf = 2.0 / (1.0 - beta2) - 1.0
    rho_t = r_inf - 2.0 * t * beta2**t / (1.0 - beta2**t)
    r_t = 0.0
    if rho_t > threshold:
        r_t = math.sqrt((rho_t - 4) * (rho_t - 2) * r_inf / ((r_inf - 4) * (r_inf - 2) * rho_t))
    warmup = min(1.0, t / (2.0 / (1.0 - beta2)))
    return {"rho_t": rho_t, "r_t": r_t, "rho_t_threshold": threshold, "r_t_linear_warmup": warmup}


def check_group(accumulator, reference, key, suffix, beta2, threshold, steps, sampled=False):
    """Every series of one group equals the closed forms and the statistics by hand (the mean and
    variance within 2% and 10% when they come from a sample of a group of over 65536 elements)."""
    series = {m: scalars(accumulator, f"rectification/{m}{suffix}") for m in METRICS}
    for metric, values in series.items():
        assert sorted(values) == steps, metric
    for step in steps:
        expected = reference.values[step][key]
        for metric, value in closed_form(expected["t"], beta2, threshold).items():
            assert series[metric][step] == pytest.approx(value, rel=1e-6, abs=1e-12), metric
        mean_rel, var_rel = (0.02, 0.1) if sampled else (1e-4, 1e-3)
        assert series["adaptive_lr_mean"][step] == pytest.approx(expected["mean"], rel=mean_rel)
        assert series["adaptive_lr_var"][step] == pytest.approx(expected["var"], rel=var_rel)
        assert series["eps_dominated_fraction"][step] == pytest.approx(expected["eps_dominated"])
        assert series["nonfinite_fraction"][step] == 0.0
        # Each quantile q lies, within a histogram bucket (10%), between the order statistics
        # around q * n (conventions differ by one element on a small group).
        values = expected["sorted"]
        for q in (0.05, 0.5, 0.95):
            rank = math.ceil(q * len(values))
            low, high = values[max(rank - 2, 0)], values[min(rank, len(values) - 1)]
            got = series[f"adaptive_lr_p{round(100 * q):02d}"][step]
            assert low / 1.1 <= got <= high * 1.1, (q, low, got, high)


def check_histograms(accumulator, reference, key, suffix, steps) -> None:
    """Histograms hold every element: exact counts per TensorBoard bucket, min, max and sums."""
    histograms = accumulator.Histograms(f"rectification/adaptive_lr{suffix}")
    assert [h.step for h in histograms] == steps
    for event in histograms:
        h, expected = event.histogram_value, reference.values[event.step][key]
        assert h.num == expected["count"]
        for field in ("min", "max", "sum", "sum_sq"):
            got = getattr(h, "sum_squares" if field == "sum_sq" else field)
            assert got == pytest.approx(expected[field], rel=1e-5), field
        limits = reference.limits
        filled = np.flatnonzero(expected["counts"])
        first, last = max(filled[0] - 1, 0), filled[-1] + 1
        np.testing.assert_allclose(h.bucket_limit, limits[first:last], rtol=1e-9)
        np.testing.assert_array_equal(h.bucket, expected["counts"][first:last])


def fit(tmp_path, model, monitor, max_steps=12, callbacks_first=(), **kwargs):
    reference = Reference()
    run = trainer(tmp_path, max_steps, [*callbacks_first, monitor, reference], **kwargs)
    run.fit(model)
    return run, events(tmp_path), reference


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"logging_interval": 0}, ValueError, r"`logging_interval` must be a positive int .*got 0"),
        ({"logging_interval": -3}, ValueError, r"`logging_interval` must be a positive int"),
        ({"logging_interval": 2.5}, TypeError, r"`logging_interval` must be .* got 2.5"),
        ({"logging_interval": "5"}, TypeError, r"`logging_interval` must be .* got '5'"),
        ({"logging_interval": True}, TypeError, r"`logging_interval` must be .* got True"),
        ({"log_histograms": 1}, TypeError, r"`log_histograms` must be a bool, got 1"),
        ({"log_histograms": None}, TypeError, r"`log_histograms` must be a bool, got None"),
        ({"probe_size": 1}, ValueError, r"`probe_size` must be an int >= 2 \(coordinates .*got 1"),
        ({"probe_size": 8.0}, TypeError, r"`probe_size` must be an int >= 2 .*got 8.0"),
        ({"probe_history": 0}, ValueError, r"`probe_history` must be an int >= 2 .*got 0"),
        ({"probe_history": "9"}, TypeError, r"`probe_history` must be an int >= 2 .*got '9'"),
        ({"quantiles": 0.5}, TypeError, r"`quantiles` must be a sequence of floats in \(0, 1\)"),
        ({"quantiles": "p50"}, TypeError, r"`quantiles` must be a sequence of floats"),
        ({"quantiles": [0.5, None]}, TypeError, r"got None in it"),
        ({"quantiles": [0.5, 1.0]}, ValueError, r"`quantiles` must be floats in \(0, 1\), got 1.0"),
        ({"quantiles": [0.0]}, ValueError, r"`quantiles` must be floats in \(0, 1\), got 0.0"),
        ({"quantiles": [0.25, 0.25]}, ValueError, r"`quantiles` must be distinct, got 0.25 twice"),
    ],
)
def test_bad_arguments_raise_at_construction(kwargs, error, match):
    with pytest.raises(error, match=match):
        RectificationMonitor(**kwargs)


def test_two_param_groups_every_step(tmp_path):
    """RAdam with two groups (beta2 0.999 / 0.95, thresholds 5 / 8): every series at every step."""
    _, accumulator, reference = fit(
        tmp_path, Regressor(groups=TWO_GROUPS), RectificationMonitor(logging_interval=1)
    )
    steps = list(range(1, 13))
    expected_tags = {
        f"rectification/{m}/pg{i}" for m in [*METRICS, *DRAWS, GAUSSIAN] for i in (1, 2)
    }
    assert set(accumulator.Tags()["scalars"]) == expected_tags
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


def test_custom_scalars_layout(tmp_path):
    _, accumulator, _ = fit(
        tmp_path, Regressor(groups=TWO_GROUPS), RectificationMonitor(), max_steps=2
    )
    (config,) = accumulator.Tensors("custom_scalars__config__")
    layout = layout_pb2.Layout.FromString(config.tensor_proto.string_val[0])
    (category,) = layout.category
    assert category.title == "rectification"
    charts = {c.title: list(c.multiline.tag) for c in category.chart}
    assert sorted(charts) == [
        "adaptive_lr quantiles/pg1",
        "adaptive_lr quantiles/pg2",
        "adaptive_lr_var_ratio/pg1 vs 1/r_t^2 vs rectified",
        "adaptive_lr_var_ratio/pg2 vs 1/r_t^2 vs rectified",
        "r_t/pg1 vs r_t_linear_warmup",
        "r_t/pg2 vs r_t_linear_warmup",
        "rho_t/pg1 vs rho_t_threshold",
        "rho_t/pg2 vs rho_t_threshold",
    ]
    tags = [f"rectification/{m}/pg{i}" for m in [*METRICS, *DRAWS, GAUSSIAN] for i in (1, 2)]
    for i in (1, 2):
        matched = [
            [t for t in tags if re.match(p, t)]
            for p in charts[f"adaptive_lr_var_ratio/pg{i} vs 1/r_t^2 vs rectified"]
        ]
        assert matched == [[f"rectification/{m}/pg{i}"] for m in (DRAWS[0], GAUSSIAN, DRAWS[2])]
        matched = [
            [t for t in tags if re.match(p, t)] for p in charts[f"adaptive_lr quantiles/pg{i}"]
        ]
        assert matched == [[f"rectification/adaptive_lr_p{q}/pg{i}"] for q in ("05", "50", "95")]
    for title, patterns in charts.items():
        if title.startswith("adaptive_lr"):
            continue
        metric, suffix, companion = re.fullmatch(r"(\w+)(/pg\d) vs (\w+)", title).groups()
        # TensorBoard selects the tags a pattern `re.match`es: exactly the pair of this chart.
        matched = [[t for t in tags if re.match(p, t)] for p in patterns]
        assert matched == [
            [f"rectification/{metric}{suffix}"],
            [f"rectification/{companion}{suffix}"],
        ]
    # A TensorBoardLogger(prefix="run") logs "run-rectification/...": the patterns allow it.
    assert re.match(charts["rho_t/pg1 vs rho_t_threshold"][0], "run-rectification/rho_t/pg1")


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


def test_histogram_of_a_large_group_counts_a_strided_sample(tmp_path):
    """70003 elements > 65536: buckets, sum and sum of squares of a random half, scaled; num, min,
    max, the eps-dominated share exact."""
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
        f"rectification/{m}/opt{j}" for m in [*METRICS, *DRAWS, GAUSSIAN] for j in (1, 2)
    }
    for j in (1, 2):
        check_group(accumulator, reference, (j - 1, 0), f"/opt{j}", 0.999, 5.0, [4, 8, 12, 16])
        assert reference.values[16][(j - 1, 0)]["t"] == 8.0


def test_duplicate_group_names_raise(tmp_path):
    groups = [{"name": "same"}, {"name": "same"}]
    run = trainer(tmp_path, 2, [RectificationMonitor()])
    with pytest.raises(ValueError, match=r"several param groups logged as \['/same'\]"):
        run.fit(Regressor(groups=groups))


@pytest.mark.parametrize("optimizer", ["sgd", "adamax"])
def test_unsupported_optimizer_says_so_once_and_logs_nothing(tmp_path, caplog, optimizer):
    """SGD has no `betas` (known at start); Adamax has no `exp_avg_sq` (known at the 1st step)."""
    with caplog.at_level(logging.INFO):
        run, accumulator, _ = fit(
            tmp_path, Regressor(optimizer=optimizer), RectificationMonitor(logging_interval=1), 6
        )
    messages = [r.getMessage() for r in caplog.records if "nothing to monitor" in r.getMessage()]
    assert len(messages) == 1
    assert type(run.optimizers[0]).__name__ in messages[0]
    assert run.global_step == 6
    assert not [t for t in accumulator.Tags()["scalars"] if t.startswith("rectification")]


def test_no_logger_warns_and_training_continues(tmp_path):
    run = trainer(tmp_path, 4, [RectificationMonitor(logging_interval=1)], logger=False)
    with pytest.warns(UserWarning, match="`RectificationMonitor` has no logger to write to"):
        run.fit(Regressor())
    assert run.global_step == 4


def test_csv_logger_takes_scalars_and_no_histograms(tmp_path, caplog):
    logger = CSVLogger(tmp_path, name="", version=0)
    with caplog.at_level(logging.INFO):
        run = trainer(tmp_path, 6, [RectificationMonitor(logging_interval=2)], logger=logger)
        run.fit(Regressor())
    assert any("CSVLogger takes no histograms" in r.getMessage() for r in caplog.records)
    with open(tmp_path / "version_0" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["rectification/rho_t"]]
    assert [int(r["step"]) for r in rows] == [2, 4, 6]
    for row in rows:
        expected = closed_form(int(row["step"]), 0.999, 5.0)
        assert float(row["rectification/rho_t"]) == pytest.approx(expected["rho_t"], rel=1e-9)
        assert float(row["rectification/r_t"]) == pytest.approx(expected["r_t"], rel=1e-9)


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


def test_a_rank_without_optimizer_state_still_joins_the_fsdp1_reduce():
    """Under FSDP1 a rank may hold none of the optimizer state (its slices are all padding, or
    another rank holds all of an optimizer's parameters): it still sends its rows of zeros, or the
    other ranks would wait for it in the all-reduce forever."""
    params = [torch.nn.Parameter(torch.zeros(0)), torch.nn.Parameter(torch.zeros(0))]
    optimizer = RAdam([{"params": params[:1]}, {"params": params[1:]}])
    strategy = Mock(spec=FSDPStrategy, world_size=2, root_device=torch.device("cpu"))
    strategy.sharding_strategy = ShardingStrategy.FULL_SHARD
    strategy.reduce.side_effect = lambda tensor, reduce_op: tensor
    trainer = Mock(world_size=2, is_global_zero=False, strategy=strategy, loggers=[])
    monitor = RectificationMonitor(logging_interval=1, log_histograms=False)
    monitor._groups = [_Group(optimizer, 1, i, f"/pg{i + 1}") for i in range(2)]
    monitor._probes = {g: _build_probe(g.options["params"], 8, 4, None, 2) for g in monitor._groups}
    monitor._sharded = True
    monitor._log(trainer, step=1)
    reduced = [call.kwargs["reduce_op"] for call in strategy.reduce.call_args_list]
    assert reduced == ["sum", "max"]
    sums = strategy.reduce.call_args_list[0].args[0]
    # Per group: the sums over the weights and histogram buckets, and an empty probe row.
    assert sums.shape == (2 * (stats.BUCKETS + len(stats.BUCKET_LIMITS)),) and not sums.any()


def test_pytorch_lightning_tensorboard_logger_gets_histograms_and_layout(tmp_path, caplog):
    """Under ``pytorch_lightning`` (Trainer, module and TensorBoardLogger of that namespace) the
    histograms and the custom-scalars layout are written, and no logger is said to take none."""
    import pytorch_lightning
    from helpers.pl import PLNet

    logger = pytorch_lightning.loggers.TensorBoardLogger(
        tmp_path, name="", version=0, default_hp_metric=False
    )
    run = pytorch_lightning.Trainer(
        default_root_dir=tmp_path,
        max_steps=4,
        logger=logger,
        callbacks=[RectificationMonitor(logging_interval=2)],
        accelerator="cpu",
        devices=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    with caplog.at_level(logging.INFO):
        run.fit(PLNet())
    assert not [r for r in caplog.records if "takes no histograms" in r.getMessage()]
    accumulator = events(tmp_path)
    assert [h.step for h in accumulator.Histograms("rectification/adaptive_lr")] == [2, 4]
    (config,) = accumulator.Tensors("custom_scalars__config__")
    layout = layout_pb2.Layout.FromString(config.tensor_proto.string_val[0])
    assert "adaptive_lr quantiles" in [c.title for c in layout.category[0].chart]


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
    (probe,) = monitor._probes.values()
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
    (probe,) = monitor._probes.values()
    norms = probe.history.pool.double().norm(dim=1)
    np.testing.assert_allclose(norms.numpy(), recorder.norms, rtol=1e-6)


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
    (probe,) = monitor._probes.values()
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
