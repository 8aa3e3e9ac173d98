"""RectificationMonitor's online estimate of the variance of the adaptive lr over minibatch draws
against a fresh-draw measurement at frozen weights (the digits MLP, RAdam at lr 0)."""

from __future__ import annotations

import pytest
from helpers.draws import BETA2, STEPS, FrozenMLP, fresh_draws
from helpers.monitor import events, scalars, trainer
from torch import nn

from lightning_ranger import rectification
from lightning_ranger.callbacks import RectificationMonitor


def online(tmp_path, batch_size: int) -> tuple[dict[int, float], dict[int, float], nn.Module]:
    model = FrozenMLP(batch_size)
    monitor = RectificationMonitor(logging_interval=10, log_histograms=False, probe_size=4096)
    trainer(tmp_path, STEPS, [monitor], log_every_n_steps=10).fit(model)
    logs = events(tmp_path)
    ratio = scalars(logs, "rectification/adaptive_lr_var_ratio")
    relative = scalars(logs, "rectification/adaptive_lr_rel_var")
    rectified = scalars(logs, "rectification/rectified_var_ratio")
    gaussian = scalars(logs, "rectification/adaptive_lr_var_ratio_gaussian")
    for t in (10, 20, 50, 100):
        _, r_t = rectification(t, BETA2)
        assert gaussian[t] == pytest.approx(1 / r_t**2, rel=1e-6)
        assert rectified[t] == pytest.approx(r_t**2 * ratio[t], rel=1e-6)
    return ratio, relative, model


def test_online_variance_over_draws_matches_fresh_draws(tmp_path):
    """Frozen weights: the monitor's bootstrap from the ``t`` gradients seen so far against
    independent sequences of fresh minibatches. The ratio within a factor 2 at t = 20, 50, 100
    (batch 32) and 50, 100 (batch 1), falling from 10 to 100; the relative variance within a
    factor 2 at t = 50 and 100, and several times larger at batch 1 than at batch 32."""
    results = {}
    for batch_size, pool in ((32, 600), (1, 2000)):
        ratio, relative, model = online(tmp_path / str(batch_size), batch_size)
        results[batch_size] = (ratio, relative, fresh_draws(model.net, batch_size, pool))
    for batch_size, ratio_steps in ((32, (20, 50, 100)), (1, (50, 100))):
        ratio, relative, fresh = results[batch_size]
        assert ratio[10] > ratio[20] > ratio[50] > ratio[100]
        for t in ratio_steps:
            assert 0.5 < ratio[t] / fresh[t][0] < 2.0, (batch_size, t, ratio[t], fresh[t][0])
        for t in (50, 100):
            assert 0.5 < relative[t] / fresh[t][1] < 2.0, (batch_size, t, relative[t], fresh[t][1])
    assert results[1][1][50] > 3.0 * results[32][1][50]
