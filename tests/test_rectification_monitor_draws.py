"""RectificationMonitor's online estimate of the variance of the adaptive lr over minibatch draws
against a fresh-draw measurement at frozen weights (the digits MLP, RAdam at lr 0)."""

from __future__ import annotations

import math

import pytest
import torch
from helpers.monitor import events, scalars, trainer
from lightning.pytorch import LightningModule
from sklearn.datasets import load_digits
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.utils.data import DataLoader, RandomSampler, TensorDataset

from lightning_ranger import RAdam, rectification
from lightning_ranger.callbacks import RectificationMonitor

BETA2 = 0.98
STEPS = 100


def digits() -> TensorDataset:
    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    return TensorDataset(x, torch.tensor(data.target))


class FrozenMLP(LightningModule):
    """The 64-32-10 MLP on the digits, trained by RAdam at lr 0: every step draws a fresh
    minibatch (with replacement) at the same weights."""

    def __init__(self, batch_size: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
        self.batch_size = batch_size

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return RAdam(self.parameters(), lr=0.0, betas=(0.9, BETA2))

    def train_dataloader(self):
        data = digits()
        generator = torch.Generator().manual_seed(self.batch_size)
        sampler = RandomSampler(data, True, STEPS * self.batch_size, generator=generator)
        return DataLoader(data, batch_size=self.batch_size, sampler=sampler)


def fresh_draws(
    model: nn.Module, batch_size: int, pool: int, replicates: int = 200, limit: int = 500
) -> dict[int, tuple[float, float]]:
    """``{t: (median Var[l_t] / Var[l_limit], median Var[l_t] / E[l_t]^2)}`` over coordinates
    whose gradient is nonzero in every minibatch of the pool: ``replicates`` independent sequences
    of ``t`` fresh minibatches each (Adam's recursion in float64), the limit at ``t = limit``."""
    x, y = digits().tensors
    params = dict(model.named_parameters())

    def loss(p, xi, yi):
        out = functional_call(model, p, (xi[None],))
        return nn.functional.cross_entropy(out, yi[None])

    per_sample = vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)
    per_sample = torch.cat([g.reshape(len(y), -1) for g in per_sample.values()], dim=1).double()
    generator = torch.Generator().manual_seed(100 + batch_size)
    picks = torch.randint(len(y), (pool, batch_size), generator=generator)
    grads = per_sample[picks].mean(dim=1) if batch_size > 1 else per_sample[picks[:, 0]]
    grads = grads[:, (grads != 0).all(dim=0)]
    draws = torch.randint(pool, (limit, replicates), generator=generator)
    v = grads.new_zeros(replicates, grads.shape[1])
    moments = {}
    for t in range(1, limit + 1):
        g = grads[draws[t - 1]]
        v = BETA2 * v + (1 - BETA2) * g * g
        lr = math.sqrt(1 - BETA2**t) / v.sqrt()
        moments[t] = (lr.var(dim=0), lr.mean(dim=0))
    var_limit = moments[limit][0]
    return {
        t: (float((var / var_limit).median()), float((var / mean**2).median()))
        for t, (var, mean) in moments.items()
        if t in (10, 20, 50, 100)
    }


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
