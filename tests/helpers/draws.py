"""Fresh minibatch draws at frozen weights: the digits MLP trained by RAdam at lr 0, and an
independent measurement of the variance of the adaptive lr over fresh draws, against which the
online estimates (the monitor's and the tracker's) are checked."""

from __future__ import annotations

import math

import torch
from lightning.pytorch import LightningModule
from sklearn.datasets import load_digits
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.utils.data import DataLoader, RandomSampler, TensorDataset

from lightning_ranger import RAdam

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
