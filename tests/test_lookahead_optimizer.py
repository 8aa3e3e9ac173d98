"""The Lookahead optimizer wrapper and Ranger in plain PyTorch loops: against a hand loop and the
callback, as an optimizer among torch's tools (schedulers, GradScaler), evaluation on the slow
weights, checkpoints, faults and bad input."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers.asserts import assert_close, assert_equal, params
from helpers.data import batches_of, make_data
from helpers.models import Net, TinyNet, make_optimizer
from helpers.references import prefixed, tiny_lookahead_reference
from helpers.trainers import make_trainer
from torch import Tensor, nn

from lightning_ranger import RAdam, Ranger
from lightning_ranger.callbacks.lookahead import Lookahead as LookaheadCallback
from lightning_ranger.optim import Lookahead
from lightning_ranger.optim.lookahead_optimizer import SLOW_KEY, STEP_KEY

K = 3


def _loss(net: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
    x, y = batch
    return nn.functional.mse_loss(net(x.to(next(net.parameters()).dtype)), y.to(x.dtype))


def _train(
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    epochs: int,
    before_step: Callable[[int], None] | None = None,
) -> None:
    """The regression data of ``Net`` in batches of 4, one step per batch."""
    steps = 0
    for _ in range(epochs):
        for batch in batches_of(make_data(20), 4):
            _loss(net, batch).backward()
            if before_step is not None:
                before_step(steps)
            optimizer.step()
            optimizer.zero_grad()
            steps += 1


def _fast_and_slow(net: nn.Module, optimizer: Lookahead) -> tuple[dict, dict]:
    fast = prefixed(params(net))
    with optimizer.slow_weights():
        slow = prefixed(params(net))
    assert_equal(prefixed(params(net)), fast)
    return fast, slow


@pytest.mark.parametrize("optimizer", ["radam", "adam", "sgd"])
def test_follows_a_hand_loop(optimizer: str) -> None:
    net = TinyNet()
    wrapper = Lookahead(make_optimizer(optimizer, net.parameters(), 0.05), k=K, alpha=0.5)
    _train(net, wrapper, epochs=3)
    expected = tiny_lookahead_reference(TinyNet(), optimizer, epochs=3, k=K)
    for actual, reference in zip(_fast_and_slow(net, wrapper), expected, strict=True):
        assert_close(actual, reference, atol=1e-6)
    assert wrapper.steps == 15


def test_equals_the_callback_bit_for_bit(tmp_path: Path) -> None:
    """The wrapper and the Trainer callback run the same sync on the same trajectory."""
    model = Net("radam")
    callback = LookaheadCallback(k=K, alpha=0.5, final_weights="fast")
    make_trainer(tmp_path, [callback], max_epochs=3).fit(model)
    net = TinyNet()
    wrapper = Lookahead(RAdam(net.parameters(), lr=0.05), k=K, alpha=0.5)
    _train(net, wrapper, epochs=3)
    fast, slow = _fast_and_slow(net, wrapper)
    assert_equal(fast, params(model))
    callback.show_slow_weights()
    assert_equal(slow, params(model))


def test_ranger_is_lookahead_around_radam_bit_for_bit() -> None:
    nets = [TinyNet(), TinyNet()]
    ranger = Ranger(nets[0].parameters(), lr=0.05, weight_decay=0.01, k=4, alpha=0.6, fused=False)
    composed = Lookahead(
        RAdam(nets[1].parameters(), lr=0.05, weight_decay=0.01, fused=False), k=4, alpha=0.6
    )
    for net, optimizer in zip(nets, (ranger, composed), strict=True):
        _train(net, optimizer, epochs=2)
    assert_equal(params(nets[0]), params(nets[1]))
    assert isinstance(ranger, Lookahead) and isinstance(ranger.optimizer, RAdam)
    assert repr(ranger).startswith("Ranger(k=4, alpha=0.6, optimizer=RAdam")


def test_is_the_inner_optimizer_to_schedulers_and_hooks() -> None:
    net = TinyNet()
    inner = RAdam(net.parameters(), lr=0.1)
    wrapper = Lookahead(inner, k=2)
    assert wrapper.param_groups is inner.param_groups
    assert wrapper.state is inner.state and wrapper.defaults is inner.defaults
    assert wrapper.param_groups[0][STEP_KEY] == 0
    scheduler = torch.optim.lr_scheduler.LambdaLR(wrapper, lambda step: 0.5**step)
    calls: list[Any] = []
    wrapper.register_step_post_hook(lambda optimizer, args, kwargs: calls.append(optimizer))
    _train(net, wrapper, epochs=1)
    scheduler.step()
    assert inner.param_groups[0]["lr"] == pytest.approx(0.05)
    assert calls == [inner] * 5
    wrapper.zero_grad()
    assert all(p.grad is None for p in net.parameters())


def test_a_new_param_group_gets_slow_weights_from_its_values_then() -> None:
    net, extra = TinyNet(), nn.Linear(2, 2)
    wrapper = Lookahead(torch.optim.SGD(net.parameters(), lr=0.1), k=2, alpha=0.5)
    _train(net, wrapper, epochs=1)  # 5 steps: synced at 2 and 4
    start = extra.weight.detach().clone()
    wrapper.add_param_group({"params": extra.parameters()})
    assert wrapper.param_groups[-1][STEP_KEY] == wrapper.steps == 5
    with torch.no_grad():
        extra.weight.add_(1.0)
    extra.weight.grad = torch.zeros_like(extra.weight)
    wrapper.step()  # the 6th step syncs: halfway from the value when the group was added
    assert torch.allclose(extra.weight, start + 0.5)


@pytest.mark.parametrize("fused", [False, True])
def test_a_step_that_the_grad_scaler_skips_does_not_count(fused: bool) -> None:
    net = TinyNet()
    inner = torch.optim.Adam(net.parameters(), lr=0.05, fused=fused)
    wrapper = Lookahead(inner, k=2, alpha=0.5)
    assert wrapper._step_supports_amp_scaling == fused
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**4)
    batches = batches_of(make_data(20), 4)
    taken = []
    for i, batch in enumerate(batches):
        scaler.scale(_loss(net, batch)).backward()
        if i == 1:  # an inf gradient: the scaler skips this step
            next(net.parameters()).grad.view(-1)[0] = float("inf")
        before = params(net)
        scaler.step(wrapper)
        scaler.update()
        wrapper.zero_grad()
        unchanged = all(torch.equal(before[n], p) for n, p in params(net).items())
        taken.append((wrapper.steps, unchanged))
    assert taken == [(1, False), (1, True), (2, False), (3, False), (4, False)]
    assert wrapper.restores == 0
    # The 4th counted step synced: the fast weights are the slow ones.
    fast, slow = _fast_and_slow(net, wrapper)
    assert_equal(fast, slow)


def test_slow_weights_for_evaluation_and_the_fast_ones_back_also_on_error() -> None:
    net = TinyNet()
    wrapper = Lookahead(RAdam(net.parameters(), lr=0.05), k=K, alpha=0.5)
    with wrapper.slow_weights():  # before the first step: nothing to swap
        assert_equal(params(net), params(TinyNet()))
    _train(net, wrapper, epochs=1)  # 5 steps, 2 after the sync at 3
    fast, slow = _fast_and_slow(net, wrapper)
    assert any(not torch.equal(fast[n], slow[n]) for n in fast)
    with pytest.raises(RuntimeError, match="inside"), wrapper.slow_weights():
        assert_equal(prefixed(params(net)), slow)
        raise RuntimeError("inside the block")
    assert_equal(prefixed(params(net)), fast)
    wrapper.keep_slow_weights()
    assert_equal(prefixed(params(net)), slow)


def _step_fn(net: nn.Module, optimizer: torch.optim.Optimizer) -> Callable[[int], None]:
    batches = batches_of(make_data(20, seed=5), 4)

    def step(i: int) -> None:
        _loss(net, batches[i % len(batches)]).backward()
        optimizer.step()
        optimizer.zero_grad()

    return step


def _train_saving_after(
    net: nn.Module, optimizer: torch.optim.Optimizer, saved_at: int, steps: int = 15
) -> dict[str, Any]:
    """Train ``steps`` steps; the model's and the optimizer's state dicts after ``saved_at`` of
    them, through ``torch.save`` and ``torch.load(weights_only=True)``."""
    step = _step_fn(net, optimizer)
    buffer = io.BytesIO()
    for i in range(steps):
        step(i)
        if i + 1 == saved_at:
            torch.save({"model": net.state_dict(), "optimizer": optimizer.state_dict()}, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("optimizer", ["radam", "adam"])
def test_a_saved_state_resumes_bit_for_bit_mid_cycle(optimizer: str, dtype: torch.dtype) -> None:
    net = TinyNet().to(dtype)
    wrapper = Lookahead(make_optimizer(optimizer, net.parameters(), 0.05), k=4, alpha=0.5)
    saved = _train_saving_after(net, wrapper, 6)  # 2 steps into the second cycle
    assert all(s[SLOW_KEY].dtype == torch.float32 for s in saved["optimizer"]["state"].values())
    resumed_net = TinyNet(seed=3).to(dtype)
    resumed_net.load_state_dict(saved["model"])
    resumed = Lookahead(make_optimizer(optimizer, resumed_net.parameters(), 0.05), k=4)
    resumed.load_state_dict(saved["optimizer"])
    assert resumed.steps == 6
    assert all(s.dtype == torch.float32 for s in resumed._copies.slow)  # not cast to bf16
    assert all(SLOW_KEY not in s for s in resumed.optimizer.state.values())
    step = _step_fn(resumed_net, resumed)
    for i in range(6, 15):
        step(i)
    expected = _fast_and_slow(net, wrapper)
    for actual, uninterrupted in zip(_fast_and_slow(resumed_net, resumed), expected, strict=True):
        assert_equal(actual, uninterrupted)


def test_state_before_the_first_step_leaves_the_inner_state_lazy() -> None:
    net = TinyNet()
    wrapper = Lookahead(torch.optim.Adam(net.parameters(), lr=0.05), k=K)
    fresh = Lookahead(torch.optim.Adam(TinyNet().parameters(), lr=0.05), k=K)
    fresh.load_state_dict(wrapper.state_dict())
    assert fresh._copies is None and len(fresh.optimizer.state) == 0
    _step_fn(net, wrapper)(0)
    assert set(wrapper.optimizer.state[next(net.parameters())]) == {"step", "exp_avg", "exp_avg_sq"}
    assert SLOW_KEY in wrapper.state_dict()["state"][0]


def _nan_at(net: TinyNet, step: int) -> Callable[[int], None]:
    def before_step(steps: int) -> None:
        if steps + 1 == step:
            net.layers["out"].bias.grad.view(-1)[0] = float("nan")

    return before_step


def test_a_nan_restores_the_fast_weights_as_the_callback_does() -> None:
    net = TinyNet()
    wrapper = Lookahead(RAdam(net.parameters(), lr=0.05), k=K, alpha=0.5)
    with pytest.warns(UserWarning, match=r"parameter param_groups\[0\]\['params'\]\[3\] at step 6"):
        _train(net, wrapper, epochs=3, before_step=_nan_at(net, 6))
    expected = tiny_lookahead_reference(TinyNet(), epochs=3, k=K, nan_at_step=6)
    for actual, reference in zip(_fast_and_slow(net, wrapper), expected, strict=True):
        assert_close(actual, reference, atol=1e-6)
    assert wrapper.restores == 1


def test_a_nan_raises_naming_the_parameter() -> None:
    net = TinyNet()
    named = Lookahead(RAdam(net.named_parameters(), lr=0.05), k=K, on_nonfinite="raise")
    with pytest.raises(FloatingPointError, match=r"parameter 'layers.out.bias' at step 3"):
        _train(net, named, epochs=1, before_step=_nan_at(net, 3))


def test_bad_input_gets_one_clear_line() -> None:
    inner = RAdam(TinyNet().parameters())
    with pytest.raises(ValueError, match=r"`optimizer` is a `Lookahead` already"):
        Lookahead(Lookahead(inner))
    with pytest.raises(ValueError, match=r"`optimizer` is a `Lookahead` already"):
        Lookahead(Ranger(TinyNet().parameters()))
    with pytest.raises(TypeError, match=r"`optimizer` must be a torch.optim.Optimizer"):
        Lookahead(TinyNet())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"`k` must be a positive int, got 0"):
        Lookahead(inner, k=0)
    with pytest.raises(TypeError, match=r"`k`"):
        Lookahead(inner, k=2.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"`alpha`.*got 1.5"):
        Lookahead(inner, alpha=1.5)
    with pytest.raises(ValueError, match=r"`on_nonfinite`"):
        Lookahead(inner, on_nonfinite="ignore")  # type: ignore[arg-type]


def test_a_state_dict_of_another_optimizer_is_refused() -> None:
    net = TinyNet()
    sgd = Lookahead(torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9), k=K)
    _train(net, sgd, epochs=1)
    adam = Lookahead(torch.optim.Adam(TinyNet().parameters(), lr=0.05), k=K)
    with pytest.raises(ValueError, match=r"keys \['momentum_buffer'\], where Adam keeps"):
        adam.load_state_dict(sgd.state_dict())


def test_a_trainer_refuses_the_wrapper_beside_the_callback(tmp_path: Path) -> None:
    class RangerNet(Net):
        def configure_optimizers(self) -> torch.optim.Optimizer:
            return Ranger(self.parameters(), lr=0.05)

    trainer = make_trainer(tmp_path, [LookaheadCallback()], max_epochs=1)
    with pytest.raises(ValueError, match=r"both the `Lookahead` callback and .*keep one"):
        trainer.fit(RangerNet())
    # Alone, the wrapper trains under a Trainer as any optimizer does.
    model = RangerNet()
    make_trainer(tmp_path, [], max_epochs=1).fit(model)
    assert model.trainer.optimizers[0].steps == 5


def test_a_timm_state_dict_continues_as_timm_would() -> None:
    from timm.optim.lookahead import Lookahead as TimmLookahead

    net = TinyNet()
    timm = TimmLookahead(torch.optim.Adam(net.parameters(), lr=0.05), alpha=0.5, k=4)
    # timm's first sync at step 4 (its slow weights start there), then 2 more steps
    saved = _train_saving_after(net, timm, 6)
    resumed_net = TinyNet(seed=3)
    resumed_net.load_state_dict(saved["model"])
    ours = Lookahead(torch.optim.Adam(resumed_net.parameters(), lr=0.05), k=4, alpha=0.5)
    ours.load_state_dict(saved["optimizer"])
    assert ours.steps == 6
    step = _step_fn(resumed_net, ours)
    for i in range(6, 15):
        step(i)
    # timm syncs with `add_`, this package with `lerp_`: equal up to rounding.
    assert_close(params(resumed_net), params(net), atol=1e-6)
    slow = [timm._base_optimizer.state[p]["lookahead_slow_buff"] for p in net.parameters()]
    pairs = zip(ours._copies.slow, slow, strict=True)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in pairs)
    # And back: this wrapper's state dict loads into timm's.
    back = TimmLookahead(torch.optim.Adam(TinyNet().parameters(), lr=0.05), alpha=0.5, k=4)
    back.load_state_dict(ours.state_dict())
    assert back.param_groups[0]["lookahead_step"] == 15
    loaded = back._base_optimizer.state_dict()["state"]
    assert all(torch.equal(loaded[i][SLOW_KEY], s) for i, s in enumerate(ours._copies.slow))
    with pytest.raises(ValueError, match=r"saved with `lookahead_k=4`; this Lookahead has `k=6`"):
        Lookahead(torch.optim.Adam(TinyNet().parameters())).load_state_dict(saved["optimizer"])
