"""The statistics of Adam's adaptive lr (``lightning_ranger.optim.adaptive_lr``): each function
against an independent hand computation, and the monitor's online estimate of the variance over
minibatch draws against a fresh-draw measurement at frozen weights."""

from __future__ import annotations

import math

import numpy as np
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
from lightning_ranger.optim import adaptive_lr as stats


def test_limit_steps():
    expected = {0.0: 10, 0.9: 100, 0.98: 500, 0.99: 1000, 0.999: 10000}
    for beta2, steps in expected.items():
        assert stats.limit_steps(beta2) == steps
        assert beta2**steps <= math.exp(-10)


def test_probe_indices_are_distinct_uniform_and_fixed():
    numels = [1000, 5000, 7, 4000]
    probe = stats.probe_indices(numels, 500, seed=3)
    again = stats.probe_indices(numels, 500, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(probe, again, strict=True))
    flat = torch.cat([p + start for p, start in zip(probe, [0, 1000, 6000, 6007], strict=True)])
    assert flat.numel() == flat.unique().numel() == 500
    assert all(bool((p >= 0).all() and (p < n).all()) for p, n in zip(probe, numels, strict=True))
    assert all(bool((p[1:] > p[:-1]).all()) for p in probe)
    # Uniform: each parameter gets about its share (500 * numel / 10007, binomial std < 15).
    for p, n in zip(probe, numels, strict=True):
        assert abs(p.numel() - 500 * n / 10007) < 4 * math.sqrt(500 * n / 10007) + 1
    assert [p.tolist() for p in stats.probe_indices([2, 1], 10)] == [[0, 1], [0]]
    assert stats.probe_indices([1000], 10, seed=1)[0].tolist() != probe[0][:10].tolist()


@pytest.mark.parametrize(
    ("shape", "local_shape", "offset"),
    [((6, 4), (3, 4), (3, 0)), ((6, 4), (6, 2), (0, 2)), ((5, 3, 2), (2, 3, 1), (1, 0, 1))],
)
def test_locate_matches_the_block_of_a_full_tensor(shape, local_shape, offset):
    full = torch.arange(math.prod(shape)).reshape(shape)
    block = full[tuple(slice(o, o + n) for o, n in zip(offset, local_shape, strict=True))]
    indices = torch.tensor(sorted(np.random.default_rng(0).choice(full.numel(), 12, replace=False)))
    held, local = stats.locate(indices, shape, local_shape, offset)
    inside = set(block.reshape(-1).tolist())
    assert [int(indices[h]) for h in held] == [int(i) for i in indices if int(i) in inside]
    assert block.reshape(-1)[local].tolist() == indices[held].tolist()


def _hand_bootstrap(pool, step, beta2, eps, replicates, seed):
    """The bootstrap by Adam's recursion, one replicate and one draw at a time, float64."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + step)
    g = pool.double().numpy()
    out = []
    for length, bias in ((min(step, stats.limit_steps(beta2)), 1.0 - beta2**step), (None, 1.0)):
        length = length or stats.limit_steps(beta2)
        draws = torch.randint(len(g), (replicates, length), generator=generator).numpy()
        lrs = []
        for b in range(replicates):
            v = np.zeros(g.shape[1])
            for i in draws[b]:
                v = beta2 * v + (1.0 - beta2) * g[i] ** 2
            v_hat = v / (1.0 - beta2**length)  # the truncated weights sum to 1 - beta2^length
            lrs.append(math.sqrt(bias) / (np.sqrt(v_hat * bias) + eps))
        lrs = np.array(lrs)
        out.append((lrs.var(axis=0, ddof=1), lrs.mean(axis=0)))
    return out


@pytest.mark.parametrize(("step", "beta2"), [(1, 0.9), (7, 0.9), (30, 0.9), (400, 0.98)])
def test_draw_statistics_against_adams_recursion(step, beta2):
    pool = torch.randn(9, 5, generator=torch.Generator().manual_seed(1)) * torch.arange(1, 6)
    got = stats.draw_statistics(pool, step, beta2, eps=1e-3, replicates=16, seed=2)
    (var, mean), (var_limit, _) = _hand_bootstrap(pool, step, beta2, 1e-3, 16, 2)
    np.testing.assert_allclose(got.var.numpy(), var, rtol=1e-5)
    np.testing.assert_allclose(got.mean.numpy(), mean, rtol=1e-6)
    np.testing.assert_allclose(got.var_limit.numpy(), var_limit, rtol=1e-5)


def test_summarize_draws_takes_medians_over_live_coordinates():
    var = torch.tensor([4.0, 9.0, 1.0, 100.0, 2.0], dtype=torch.float64)
    mean = torch.tensor([1.0, 3.0, 1.0, 1.0, 1.0], dtype=torch.float64)
    limit = torch.tensor([2.0, 3.0, 1.0, 1.0, 0.0], dtype=torch.float64)
    alive = torch.tensor([True, True, True, False, True])
    # live with a positive limit: 0, 1, 2 -> ratios 2, 3, 1; relative 4, 1, 1
    assert stats.summarize_draws(var, mean, limit, alive) == (2.0, 1.0)
    dead = torch.zeros(5, dtype=torch.bool)
    assert all(math.isnan(x) for x in stats.summarize_draws(var, mean, limit, dead))


def test_weight_sums_leave_out_nonfinite_and_count_eps_dominated_exactly():
    v = torch.tensor([0.0, 1e-20, 4e-16, 1e-4, math.nan, math.inf, 2.5e-3, 1e-17])
    eps, beta2, step = 1e-8, 0.99, 3
    sums, extrema = stats.weight_sums(
        [{"exp_avg_sq": v, "step": torch.tensor(float(step))}], beta2, eps, 1, torch.device("cpu")
    )
    finite = v[torch.isfinite(v)].double()
    lr = math.sqrt(1 - beta2**step) / (finite.sqrt() + eps)
    assert sums[stats.COUNT] == 6 and sums[stats.NONFINITE] == 2
    assert float(sums[stats.SUM]) == pytest.approx(float(lr.sum()), rel=1e-6)
    assert float(sums[stats.SUM_SQ]) == pytest.approx(float((lr**2).sum()), rel=1e-6)
    assert sums[stats.EPS_DOMINATED] == int((finite.sqrt() < eps).sum()) == 3  # 0, 1e-20, 1e-17
    assert sums[stats.BUCKETS :].sum() == 6
    assert -float(extrema[0]) == pytest.approx(float(lr.min()), rel=1e-6)
    assert float(extrema[1]) == pytest.approx(float(lr.max()), rel=1e-6)
    everything_bad = torch.tensor([math.nan, math.inf])
    sums, _ = stats.weight_sums(
        [{"exp_avg_sq": everything_bad, "step": 1}], beta2, eps, 1, torch.device("cpu")
    )
    assert sums[stats.COUNT] == 0 and sums[stats.NONFINITE] == 2


def test_histogram_quantiles_within_ten_percent():
    rng = np.random.default_rng(0)
    values = np.concatenate([np.exp(rng.normal(3.0, 2.0, 30000)), np.full(10000, 1e8)])
    limits = np.array(stats.BUCKET_LIMITS)
    counts = np.bincount(np.searchsorted(limits, values), minlength=len(limits)).astype(float)
    qs = [0.05, 0.25, 0.5, 0.7, 0.95]
    got = stats.histogram_quantiles(list(counts), values.min(), values.max(), qs)
    for q, value in zip(qs, got, strict=True):
        assert value == pytest.approx(np.quantile(values, q), rel=0.1), q


# --- The online estimate against fresh draws at frozen weights ---------------------------------

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
