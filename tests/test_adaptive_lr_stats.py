"""The statistics of Adam's adaptive lr (``lightning_ranger.optim.adaptive_lr``), without Lightning:
each function against an independent hand computation, the probe, and a param group's statistics
from shares of its state against the statistics of the whole state."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lightning_ranger.optim import _adaptive_lr_weights as _weights
from lightning_ranger.optim import adaptive_lr as stats
from lightning_ranger.optim.rectification import rectification


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
    """The bootstrap by Adam's recursion, one replicate and one draw at a time, float64: each
    replicate draws ``t_limit`` gradients, its ``k``-th draw for the step ``k`` steps back."""
    generator = torch.Generator().manual_seed(seed)
    t_limit = stats.limit_steps(beta2)
    draws = torch.randint(len(pool), (replicates, t_limit), generator=generator).numpy()
    g = pool.double().numpy()
    out = []
    for length, bias in ((min(step, t_limit), 1.0 - beta2**step), (t_limit, 1.0)):
        lrs = []
        for b in range(replicates):
            v = np.zeros(g.shape[1])
            for i in draws[b, :length][::-1]:  # oldest first
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


def test_bucket_indices_equal_bucketize_at_and_beside_every_limit():
    limits = torch.tensor(stats.BUCKET_LIMITS, dtype=torch.float64)
    geometric = limits[:-1]
    values = torch.cat(
        [
            geometric,
            torch.nextafter(geometric, torch.zeros_like(geometric)),
            torch.nextafter(geometric, torch.full_like(geometric, math.inf)),
            torch.exp(torch.randn(10_000, generator=torch.Generator().manual_seed(5)) * 20),
            torch.tensor([0.0, 1e-300, 1e20, 1e25, 1e300, math.inf]),
        ]
    ).double()
    expected = torch.bucketize(values, limits).clamp(max=len(limits) - 1)
    assert torch.equal(_weights.bucket_indices(values, limits), expected)


def test_weight_sums_of_a_large_group_count_eps_dominated_on_the_sample():
    """200000 elements, 30% of them 0: the share below eps from the sample of 65536 (scaled to
    the count) within 4 standard errors; the count and extrema exact."""
    v = torch.rand(200_000, generator=torch.Generator().manual_seed(3)) + 1e-3
    v[torch.randperm(200_000, generator=torch.Generator().manual_seed(4))[:60_000]] = 0.0
    state = {"exp_avg_sq": v, "step": torch.tensor(5.0)}
    sums, extrema = stats.weight_sums([state], 0.99, 1e-8, 1, torch.device("cpu"))
    assert sums[stats.COUNT] == 200_000
    share = float(sums[stats.EPS_DOMINATED]) / 200_000
    assert share == pytest.approx(0.3, abs=4 * math.sqrt(0.3 * 0.7 / 65_536))
    assert float(sums[stats.BUCKETS :].sum()) == pytest.approx(200_000, rel=1e-9)
    assert float(extrema[1]) == pytest.approx(math.sqrt(1 - 0.99**5) / 1e-8, rel=1e-9)


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


# --- The probe and a param group's statistics --------------------------------------------------

SHAPES = [(4, 3), (5,)]
#: Two ranks' FSDP1-like slices of the flattened parameters: (offset, length) per parameter.
SLICES = [[(0, 8), (0, 2)], [(8, 4), (2, 3)]]


def whole_and_sliced(steps: int = 5, seed: int = 0):
    """A probe of 10 of the 17 coordinates of parameters of ``SHAPES``, whole and as two ranks'
    1-D slices (as FSDP1 holds them), that recorded the same random gradients for ``steps``
    steps; and optimizer states (a random ``exp_avg_sq``), whole and sliced."""
    generator = torch.Generator().manual_seed(seed)
    whole = [torch.nn.Parameter(torch.zeros(shape)) for shape in SHAPES]
    sliced = [[torch.nn.Parameter(torch.zeros(n)) for _, n in rank] for rank in SLICES]
    whole_probe = stats.Probe(whole, 10, capacity=8, world_size=1)
    numels = [math.prod(shape) for shape in SHAPES]
    probes = [
        stats.Probe(params, 10, 8, 2, [(n, o) for n, (o, _) in zip(numels, rank, strict=True)])
        for params, rank in zip(sliced, SLICES, strict=True)
    ]
    for step in range(1, steps + 1):
        for param in whole:
            param.grad = torch.randn(param.shape, generator=generator)
        for params, rank in zip(sliced, SLICES, strict=True):
            for param, full, (offset, n) in zip(params, whole, rank, strict=True):
                param.grad = full.grad.reshape(-1)[offset : offset + n].clone()
        for probe in (whole_probe, *probes):
            probe.record(float(step))
    v = [torch.rand(shape, generator=generator) * 1e-4 for shape in SHAPES]
    t = torch.tensor(float(steps))
    whole_states = [{"step": t, "exp_avg_sq": x} for x in v]
    sliced_states = [
        [
            {"step": t, "exp_avg_sq": x.reshape(-1)[o : o + n]}
            for x, (o, n) in zip(v, rank, strict=True)
        ]
        for rank in SLICES
    ]
    return whole_probe, probes, whole_states, sliced_states


def test_probe_history_remembers_a_dead_coordinate_after_its_row_is_overwritten():
    """Liveness is checked lazily: a zero gradient of a row that the ring buffer overwrites before
    anyone reads `alive` still kills its coordinate, and a NaN one read later does too."""
    history = stats.ProbeHistory(size=3, capacity=2, device=torch.device("cpu"))
    rows = [[1.0, 0.0, 1.0], [1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, math.nan]]
    for row in rows[:3]:  # the third overwrites the first, with its zero, unread
        history.record(torch.tensor(row))
    assert history.pool.tolist() == [rows[2], rows[1]]
    assert history.alive.tolist() == [True, False, True]
    history.next_row().copy_(torch.tensor(rows[3]))  # filled in place, then counted
    history.record()
    assert history.recorded == 4 and history.alive.tolist() == [True, False, False]


def test_probe_reads_its_coordinates_and_records_each_step_once():
    params = [torch.nn.Parameter(torch.zeros(shape)) for shape in SHAPES]
    probe = stats.Probe(params, 6, capacity=3, world_size=1)
    chosen = stats.probe_indices([12, 5], 6)
    assert probe.size == 6 and probe.positions.tolist() == list(range(6))
    params[0].grad = torch.arange(12.0).reshape(4, 3)  # no gradient for the second parameter
    expected = [float(i) for i in chosen[0]] + [math.nan] * len(chosen[1])
    np.testing.assert_array_equal(probe.gradients().numpy(), expected)
    for step in (1.0, 1.0, 2.0):  # the same optimizer step twice is kept once
        probe.record(step)
    assert probe.history.recorded == 2 and probe.last_step == 2.0
    # Coordinates with a zero (index 0) or missing gradient are no longer alive.
    alive = [float(i) != 0.0 for i in chosen[0]] + [False] * len(chosen[1])
    assert probe.history.alive.tolist() == alive


def test_sliced_probes_hold_the_whole_probe_between_them():
    whole_probe, probes, _, _ = whole_and_sliced()
    positions = torch.cat([p.positions for p in probes])
    assert sorted(positions.tolist()) == list(range(whole_probe.size)) == list(range(10))
    assert all(p.size == whole_probe.size for p in probes)
    pool = torch.zeros_like(whole_probe.history.pool)
    for probe in probes:
        pool[:, probe.positions] = probe.history.pool
    torch.testing.assert_close(pool, whole_probe.history.pool, rtol=0, atol=0)


def test_group_statistics_from_shares_against_the_whole_and_by_hand():
    """Two ranks' shares, summed and maximised, give the statistics of the whole group; those
    equal the closed forms, the moments of ``l_t`` by hand (float64) and the bootstrap of the
    whole probe."""
    whole_probe, probes, whole_states, sliced_states = whole_and_sliced()
    beta2, eps, threshold, cpu = 0.9, 1e-8, 8.0, torch.device("cpu")
    quantiles = {"median": 0.5, "p90": 0.9}
    share = stats.group_share(whole_states, whole_probe, beta2, eps, 1, cpu)
    whole = stats.group_statistics(share.sums, share.maxima.tolist(), beta2, threshold, quantiles)
    shares = [
        stats.group_share(states, probe, beta2, eps, 1, cpu)
        for states, probe in zip(sliced_states, probes, strict=True)
    ]
    sums = sum(s.sums for s in shares)
    maxima = torch.stack([s.maxima for s in shares]).amax(dim=0)
    split = stats.group_statistics(sums, maxima.tolist(), beta2, threshold, quantiles)
    assert whole is not None and split is not None
    assert list(split.values) == list(whole.values)
    for name, value in whole.values.items():
        assert split.values[name] == pytest.approx(value, rel=1e-6), name

    t = 5
    v = torch.cat([s["exp_avg_sq"].reshape(-1) for s in whole_states]).double()
    lr = math.sqrt(1 - beta2**t) / (v.sqrt() + eps)
    rho_t, r_t = rectification(t, beta2)
    assert 4 < rho_t < threshold  # r_t is defined but not applied: 0 and SGD steps
    assert whole.values["rho_t"] == rho_t and whole.values["r_t"] == 0.0
    assert whole.values["rho_t_threshold"] == threshold
    assert whole.values["r_t_linear_warmup"] == pytest.approx(t * (1 - beta2) / 2)
    assert whole.values["nonfinite_fraction"] == 0.0
    assert whole.values["adaptive_lr_mean"] == pytest.approx(float(lr.mean()), rel=1e-12)
    assert whole.values["adaptive_lr_var"] == pytest.approx(float(lr.var(unbiased=False)), rel=1e-9)
    assert whole.values["eps_dominated_fraction"] == 0.0
    for name, q in quantiles.items():
        assert whole.values[name] == pytest.approx(float(lr.quantile(q)), rel=0.1)
    pool = whole_probe.history.pool
    draws = stats.draw_statistics(pool, t, beta2, eps, stats.REPLICATES)
    ratio, relative = stats.summarize_draws(
        draws.var, draws.mean, draws.var_limit, whole_probe.history.alive
    )
    assert whole.values["adaptive_lr_var_ratio"] == pytest.approx(ratio, rel=1e-12)
    assert whole.values["adaptive_lr_rel_var"] == pytest.approx(relative, rel=1e-12)
    assert whole.values["rectified_var_ratio"] == 0.0
    assert whole.values["adaptive_lr_var_ratio_gaussian"] == pytest.approx(1 / r_t**2)
    histogram = whole.histogram
    assert histogram is not None and histogram.count == 17
    assert histogram.low == pytest.approx(float(lr.min())) and histogram.high == pytest.approx(
        float(lr.max())
    )
    assert histogram.total == pytest.approx(float(lr.sum()))
    assert histogram.total_sq == pytest.approx(float(lr.square().sum()))
    assert sum(histogram.counts) == 17


def test_group_statistics_without_state_anywhere_is_none():
    whole_probe, _, _, _ = whole_and_sliced()
    share = stats.group_share([], whole_probe, 0.999, 1e-8, 1, torch.device("cpu"))
    assert share.maxima.tolist() == [-math.inf, -math.inf, -math.inf]
    assert not share.sums.any()
    assert stats.group_statistics(share.sums, share.maxima.tolist(), 0.999, 5.0, {}) is None
