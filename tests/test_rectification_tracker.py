"""RectificationTracker: the monitor's statistics in a plain loop, against fresh minibatch draws
and the callback, its state across a resume (the callback's too), the layout, bad input."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
import torch
from helpers.draws import STEPS, FrozenMLP, fresh_draws
from helpers.monitor import Regressor, events, scalars, trainer
from torch import nn
from torch.utils.tensorboard import SummaryWriter

from lightning_ranger import RAdam, Ranger
from lightning_ranger.callbacks import RectificationMonitor
from lightning_ranger.optim import Lookahead, RectificationTracker

LOGGED = (10, 20, 50, 100)


def _plain_frozen_run(batch_size: int) -> tuple[dict[int, dict[str, float]], nn.Module]:
    """The monitor's frozen-weights run (RAdam at lr 0, fresh minibatches) as a plain loop with
    the tracker: its values at the logged steps."""
    model = FrozenMLP(batch_size)
    optimizer = model.configure_optimizers()
    tracker = RectificationTracker(optimizer, probe_size=4096)
    values = {}
    for step, (x, y) in enumerate(model.train_dataloader(), start=1):
        nn.functional.cross_entropy(model.net(x), y).backward()
        optimizer.step()
        tracker.update()
        optimizer.zero_grad()
        if step in LOGGED:
            values[step] = tracker.compute()
    return values, model.net


def test_tracker_in_a_plain_loop_matches_fresh_draws_and_the_callback(tmp_path: Path) -> None:
    values, net = _plain_frozen_run(batch_size=32)
    fresh = fresh_draws(net, batch_size=32, pool=600)
    ratio = {t: values[t]["rectification/adaptive_lr_var_ratio"] for t in LOGGED}
    relative = {t: values[t]["rectification/adaptive_lr_rel_var"] for t in LOGGED}
    assert ratio[10] > ratio[20] > ratio[50] > ratio[100]
    for t in (20, 50, 100):
        assert 0.5 < ratio[t] / fresh[t][0] < 2.0, (t, ratio[t], fresh[t][0])
    for t in (50, 100):
        assert 0.5 < relative[t] / fresh[t][1] < 2.0, (t, relative[t], fresh[t][1])
    # The callback logs the same numbers from the same run under a Trainer.
    monitor = RectificationMonitor(logging_interval=10, log_histograms=False, probe_size=4096)
    trainer(tmp_path, STEPS, [monitor], log_every_n_steps=10).fit(FrozenMLP(32))
    logs = events(tmp_path)
    for name in ("adaptive_lr_var_ratio", "adaptive_lr_rel_var", "rho_t", "adaptive_lr_p50"):
        logged = scalars(logs, f"rectification/{name}")
        for t in LOGGED:
            assert logged[t] == pytest.approx(values[t][f"rectification/{name}"], rel=1e-6)


def _regression_steps(optimizer: torch.optim.Optimizer, model: nn.Module, steps: range) -> None:
    generator = torch.Generator().manual_seed(7)
    batches = [
        (torch.randn(8, 6, generator=generator), torch.randn(8, 3, generator=generator))
        for _ in range(40)
    ]
    for step in steps:
        x, y = batches[step]
        nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
        yield
        optimizer.zero_grad()


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))


def _tracked_run(
    groups: list[dict[str, object]], **options: object
) -> tuple[RectificationTracker, dict[str, float]]:
    """A tracker of RAdam over ``groups`` of ``_net()``'s parameters (given by index), after 6
    steps of the regression, and what it computes."""
    model = _net()
    params = list(model.parameters())
    optimizer = RAdam(
        [{**g, "params": [params[i] for i in g["params"]]} for g in groups],  # type: ignore[attr-defined]
        lr=1e-2,
    )
    tracker = RectificationTracker(optimizer, **options)  # type: ignore[arg-type]
    for _ in _regression_steps(optimizer, model, range(6)):
        tracker.update()
    return tracker, tracker.compute()


def test_update_records_each_optimizer_step_once_when_the_first_parameter_lags() -> None:
    """The first parameter sits out a step (no gradient, so its state's step lags): every
    optimizer step is still recorded once, and calls without a step record nothing."""
    first, second = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(3))
    optimizer = RAdam([first, second], lr=1e-2)
    tracker = RectificationTracker(optimizer, probe_size=6)
    (probe,) = tracker.probes.values()
    for step, uses_first in enumerate([True, False, False, True, True], start=1):
        optimizer.zero_grad()
        ((first.sum() if uses_first else 0.0) + second.square().sum()).backward()
        optimizer.step()
        tracker.update()
        tracker.update()  # no new step
        assert probe.history.recorded == step
    assert [float(optimizer.state[p]["step"]) for p in (first, second)] == [3.0, 5.0]


def test_groups_that_differ_only_in_lr_are_tracked_as_one() -> None:
    """Per-tensor groups (as a layer-wise lr decay makes them) with the same beta2, eps and
    threshold: one probe of `probe_size` coordinates, and, at equal lrs, the one-group values bit
    for bit, under the one-group names."""
    _, expected = _tracked_run([{"params": [0, 1, 2, 3]}], probe_size=16)
    per_tensor, got = _tracked_run([{"params": [i]} for i in range(4)], probe_size=16)
    assert got == expected
    assert [p.size for p in per_tensor.probes.values()] == [16]
    decayed, values = _tracked_run(
        [{"params": [i], "lr": 1e-2 * 0.5**i} for i in range(4)], probe_size=16
    )
    assert set(values) == set(expected) and values != expected
    assert [g.indices for g in decayed.groups] == [(0, 1, 2, 3)]


def test_groups_that_differ_in_beta2_keep_their_own_statistics() -> None:
    """Pooled by beta2 (parameters 0 and 2 at 0.999, 1 and 3 at 0.99), the pools' values are
    those of two groups holding the same parameters; the probe budget is shared."""
    alternating = [{"params": [i], "betas": (0.9, 0.999 if i % 2 == 0 else 0.99)} for i in range(4)]
    _, pooled = _tracked_run(alternating, probe_size=1000)
    two = [{"params": [0, 2], "betas": (0.9, 0.999)}, {"params": [1, 3], "betas": (0.9, 0.99)}]
    _, expected = _tracked_run(two, probe_size=1000)
    renamed = {"/pg1+pg3": "/pg1", "/pg2+pg4": "/pg2"}
    assert {re.sub(r"/pg\d\+pg\d$", lambda m: renamed[m[0]], k): v for k, v in pooled.items()} == (
        expected
    )
    # 83 parameters (72 and 11 in the two pools) share a budget of 40; alone, 4 groups share it.
    shares = [p.size for p in _tracked_run(alternating, probe_size=40)[0].probes.values()]
    assert shares == [29, 11]
    alone = _tracked_run(alternating, probe_size=40, pool_groups=False)[0]
    assert [p.size for p in alone.probes.values()] == [15, 8, 14, 3]
    assert [g.suffix for g in alone.groups] == ["/pg1", "/pg2", "/pg3", "/pg4"]


def test_state_dict_continues_the_draw_series_after_a_resume() -> None:
    model = _net()
    optimizer = RAdam(model.parameters(), lr=1e-2)
    tracker = RectificationTracker(optimizer, probe_size=32, probe_history=16)
    for _ in _regression_steps(optimizer, model, range(20)):
        tracker.update()
    buffer = io.BytesIO()
    torch.save(
        {
            "model": model.state_dict(),
            "optim": optimizer.state_dict(),
            "tracker": tracker.state_dict(),
        },
        buffer,
    )
    for _ in _regression_steps(optimizer, model, range(20, 30)):
        tracker.update()
    uninterrupted = tracker.compute()
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed_model = _net()
    resumed_model.load_state_dict(saved["model"])
    resumed_optimizer = RAdam(resumed_model.parameters(), lr=1e-2)
    resumed_optimizer.load_state_dict(saved["optim"])
    resumed = RectificationTracker(resumed_optimizer, probe_size=32, probe_history=16)
    resumed.load_state_dict(saved["tracker"])
    for _ in _regression_steps(resumed_optimizer, resumed_model, range(20, 21)):
        resumed.update()
    # One step after the resume the variance over draws is there (it needs two recorded steps).
    assert "rectification/adaptive_lr_var_ratio" in resumed.compute()
    for _ in _regression_steps(resumed_optimizer, resumed_model, range(21, 30)):
        resumed.update()
    assert resumed.compute() == uninterrupted
    with pytest.raises(ValueError, match=r"saved with \(probe_size, probe_history, groups\)"):
        RectificationTracker(optimizer, probe_size=16, probe_history=16).load_state_dict(
            saved["tracker"]
        )


def test_the_monitor_saves_the_tracker_so_the_draw_series_go_on_after_a_resume(
    tmp_path: Path,
) -> None:
    """12 batches an epoch; resumed from the epoch-1 checkpoint, the run logs what the
    uninterrupted one logs, the variance over draws included from the first step on."""

    def fit(name: str, epochs: int, ckpt_path: Path | None = None) -> dict[int, float]:
        monitor = RectificationMonitor(logging_interval=1, probe_size=64)
        run = trainer(tmp_path / name, -1, [monitor], max_epochs=epochs)
        run.fit(Regressor(), ckpt_path=ckpt_path)
        run.save_checkpoint(tmp_path / f"{name}.ckpt")  # at the end of the last epoch
        return scalars(events(tmp_path / name), "rectification/adaptive_lr_var_ratio")

    uninterrupted = fit("uninterrupted", 3)
    fit("first", 1)
    resumed = fit("resumed", 3, ckpt_path=tmp_path / "first.ckpt")
    assert sorted(resumed) == list(range(13, 37))
    assert resumed == {step: uninterrupted[step] for step in resumed}


def test_a_checkpoint_of_other_groups_resumes_with_a_fresh_probe_history(tmp_path: Path) -> None:
    """A checkpoint whose probe history does not fit (saved with the groups monitored alone)
    resumes training with a warning; the pooled variance over draws starts afresh."""
    groups = [{}, {}]  # the same hyperparameters
    first = trainer(tmp_path / "first", -1, [RectificationMonitor(pool_groups=False)], max_epochs=1)
    first.fit(Regressor(groups=groups))
    first.save_checkpoint(tmp_path / "first.ckpt")
    monitor = RectificationMonitor(logging_interval=1)
    resumed = trainer(tmp_path / "resumed", -1, [monitor], max_epochs=2)
    with pytest.warns(UserWarning, match="probe history in the checkpoint does not fit"):
        resumed.fit(Regressor(groups=groups), ckpt_path=tmp_path / "first.ckpt")
    ratio = scalars(events(tmp_path / "resumed"), "rectification/adaptive_lr_var_ratio")
    assert sorted(ratio) == list(range(14, 25))  # from the second step after the resume on


@pytest.mark.parametrize("pool_groups", [True, False])
def test_several_optimizers_a_lookahead_wrapper_and_the_layout(
    tmp_path: Path, pool_groups: bool
) -> None:
    """Two optimizers are named `/opt{j}`; the second's two named groups, with the same
    hyperparameters, are pooled (named as the optimizer) or, not pooled, named by their names."""
    model = _net()
    first = Ranger(model[0].parameters(), lr=1e-2)
    second = torch.optim.Adam(
        [{"params": model[2].weight, "name": "w"}, {"params": model[2].bias, "name": "b"}]
    )
    tracker = RectificationTracker([first, second], probe_size=8, pool_groups=pool_groups)
    for _ in _regression_steps(_Both(first, second), model, range(4)):
        tracker.update()
    metrics = tracker.compute()
    suffixes = ["/opt1", "/opt2"] if pool_groups else ["/opt1", "/opt2/w", "/opt2/b"]
    found = {t.removeprefix("rectification/rho_t") for t in metrics if "/rho_t/" in t}
    assert found == set(suffixes)
    # Every chart's patterns match tags that compute() gives.
    for chart in tracker.layout()["rectification"].values():
        for pattern in chart[1]:
            # Not yet at step 4: 1/r_t^2 needs rho_t > 4, and the rectified ratio is 0 (no log).
            if "gaussian" in pattern or "rectified" in pattern:
                continue
            assert any(re.match(pattern, tag) for tag in metrics), pattern
    writer = SummaryWriter(tmp_path)
    tracker.write_layout(writer)
    tracker.write_histograms(writer, step=4)
    writer.close()
    assert set(tracker.histograms) == {f"rectification/adaptive_lr{s}" for s in suffixes}


class _Both(torch.optim.Optimizer):
    """Steps two optimizers as one (for the shared training helper)."""

    def __init__(self, *optimizers: torch.optim.Optimizer) -> None:
        self.optimizers = optimizers

    def step(self, closure: None = None) -> None:  # type: ignore[override]
        for optimizer in self.optimizers:
            optimizer.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none)


def test_bad_input_gets_one_clear_line() -> None:
    params = list(_net().parameters())
    with pytest.raises(ValueError, match=r"SGD has nothing to track: it needs param groups"):
        RectificationTracker(torch.optim.SGD(params, lr=0.1))
    with pytest.raises(
        ValueError, match=r"Adamax has nothing to track: .*not \['exp_avg', 'exp_inf'"
    ):
        RectificationTracker(torch.optim.Adamax(params))
    with pytest.raises(ValueError, match=r"Lookahead has nothing to track"):
        RectificationTracker(Lookahead(torch.optim.SGD(params, lr=0.1)))
    with pytest.raises(TypeError, match=r"`optimizer` must be a torch.optim.Optimizer"):
        RectificationTracker([RAdam(params), "adam"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match=r"`probe_size` must be an int >= 2"):
        RectificationTracker(RAdam(params), probe_size=1)
    with pytest.raises(ValueError, match=r"`quantiles\[0\]`"):
        RectificationTracker(RAdam(params), quantiles=(1.5,))
