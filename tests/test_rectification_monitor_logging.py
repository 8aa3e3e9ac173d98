"""RectificationMonitor's arguments, names and loggers: bad input, the TensorBoard custom-scalars
layout, group names, optimizers it cannot monitor, no logger, CSV and ``pytorch_lightning``
loggers."""

from __future__ import annotations

import csv
import logging
import re

import pytest
from helpers.monitor import (
    DRAWS,
    GAUSSIAN,
    LOGGED_LOG10,
    METRICS,
    TWO_GROUPS,
    Regressor,
    closed_form,
    fit,
    trainer,
)
from lightning.pytorch.loggers import CSVLogger
from tensorboard.plugins.custom_scalar import layout_pb2

from lightning_ranger.callbacks.rectification_monitor import RectificationMonitor


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
        ({"quantiles": [0.5, None]}, TypeError, r"`quantiles\[1\]` must be a float .*got None"),
        ({"quantiles": [0.5, 1.0]}, ValueError, r"`quantiles\[1\]` must be a float .*got 1.0"),
        ({"quantiles": [0.0]}, ValueError, r"`quantiles\[0\]` must be a float .*got 0.0"),
        ({"quantiles": [0.25, 0.25]}, ValueError, r"`quantiles` must be distinct, got 0.25 twice"),
    ],
)
def test_bad_arguments_raise_at_construction(kwargs, error, match):
    with pytest.raises(error, match=match):
        RectificationMonitor(**kwargs)


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
        "log10 adaptive_lr quantiles/pg1",
        "log10 adaptive_lr quantiles/pg2",
        "log10 adaptive_lr_var_ratio/pg1 vs 1/r_t^2 vs rectified",
        "log10 adaptive_lr_var_ratio/pg2 vs 1/r_t^2 vs rectified",
        "r_t/pg1 vs r_t_linear_warmup",
        "r_t/pg2 vs r_t_linear_warmup",
        "rho_t/pg1 vs rho_t_threshold",
        "rho_t/pg2 vs rho_t_threshold",
    ]
    tags = [
        f"rectification/{m}/pg{i}"
        for m in [*METRICS, *DRAWS, GAUSSIAN, *LOGGED_LOG10]
        for i in (1, 2)
    ]
    for i in (1, 2):
        matched = [
            [t for t in tags if re.match(p, t)]
            for p in charts[f"log10 adaptive_lr_var_ratio/pg{i} vs 1/r_t^2 vs rectified"]
        ]
        ratios = (DRAWS[0], GAUSSIAN, DRAWS[2])
        assert matched == [[f"rectification/{m}_log10/pg{i}"] for m in ratios]
        matched = [
            [t for t in tags if re.match(p, t)]
            for p in charts[f"log10 adaptive_lr quantiles/pg{i}"]
        ]
        quantiles = ("05", "50", "95")
        assert matched == [[f"rectification/adaptive_lr_p{q}_log10/pg{i}"] for q in quantiles]
    for title, patterns in charts.items():
        if title.startswith("log10"):
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


@pytest.mark.parametrize("pool_groups", [True, False])
def test_duplicate_group_names_raise(tmp_path, pool_groups):
    """Two groups monitored alone with one name raise; pooled groups need no distinct names."""
    groups = [{"name": "same", "betas": (0.9, 0.99)}, {"name": "same"}]
    run = trainer(tmp_path, 2, [RectificationMonitor(pool_groups=pool_groups)])
    with pytest.raises(ValueError, match=r"several param groups named \['/same'\]"):
        run.fit(Regressor(groups=groups))
    same = Regressor(groups=[{"name": "same"}, {"name": "same"}])
    monitor = RectificationMonitor(logging_interval=1, pool_groups=pool_groups)
    if pool_groups:
        _, accumulator, _ = fit(tmp_path / "pooled", same, monitor, max_steps=2)
        assert "rectification/rho_t" in accumulator.Tags()["scalars"]
    else:
        with pytest.raises(ValueError, match=r"several param groups named \['/same'\]"):
            trainer(tmp_path, 2, [monitor]).fit(same)


@pytest.mark.parametrize("optimizer", ["sgd", "adamax"])
def test_unsupported_optimizer_says_so_once_and_logs_nothing(tmp_path, caplog, optimizer):
    """SGD has no `betas`; Adamax has no `exp_avg_sq` (told by a step of a copy of it): both known
    when training starts."""
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
