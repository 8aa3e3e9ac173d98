"""GradientCentralization as a callback on a single device: which parameters it touches, Lightning
runs against the same runs written in plain PyTorch (accumulation, precisions, a GradScaler that
skips a step), bad input and refused strategies. The formula itself is tested in
``test_centralization.py``."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from unittest.mock import Mock

import pytest
import torch
from helpers.asserts import assert_close
from helpers.data import batches_of, make_data
from helpers.models import Net, TinyNet
from helpers.references import (
    GC_LR,
    centralized,
    reference_gradient_centralization,
)
from helpers.trainers import make_trainer
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.plugins.precision import MixedPrecision
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy
from torch import Tensor, nn

from lightning_ranger.callbacks import gradient_centralization
from lightning_ranger.callbacks.gradient_centralization import GradientCentralization
from lightning_ranger.optim.centralization import CPU_BLOCK_NUMEL, centralize_gradients

# ---------------------------------------------------------------- which parameters


class Mixed(nn.Module):
    """Conv2d, conv1d, BatchNorm, linear (with biases), a frozen linear and an embedding."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv2d = nn.Conv2d(2, 4, 3)
        self.norm = nn.BatchNorm2d(4)
        self.conv1d = nn.Conv1d(4, 3, 2)
        self.linear = nn.Linear(3, 2)
        self.frozen = nn.Linear(2, 2)
        self.frozen.requires_grad_(False)
        self.embedding = nn.Embedding(5, 3)

    def forward(self, x: Tensor, tokens: Tensor) -> Tensor:
        h = self.norm(self.conv2d(x)).mean(dim=3)  # (N, 4, L)
        h = self.conv1d(h).mean(dim=2) + self.embedding(tokens)
        return self.frozen(self.linear(h))


def _mixed_gradients() -> tuple[Mixed, torch.optim.Optimizer]:
    model = Mixed()
    x, tokens = torch.randn(3, 2, 6, 6), torch.tensor([0, 2, 2])
    model(x, tokens).pow(2).sum().backward()
    for p in model.frozen.parameters():  # a stale gradient on a frozen parameter
        p.grad = torch.randn_like(p)
    model.linear.bias.grad = None  # a parameter without a gradient
    return model, torch.optim.SGD(model.parameters(), lr=0.1)


@pytest.mark.parametrize(
    ("min_ndim", "include_linear", "touched"),
    [
        (2, True, {"conv2d.weight", "conv1d.weight", "linear.weight", "embedding.weight"}),
        (2, False, {"conv2d.weight", "conv1d.weight"}),
        (3, True, {"conv2d.weight", "conv1d.weight"}),
        (4, True, {"conv2d.weight"}),
        (4, False, {"conv2d.weight"}),
        (5, True, set()),
        (1, False, {"conv2d.weight", "conv1d.weight"}),
        (
            1,
            True,
            {"conv2d.weight", "conv1d.weight", "linear.weight", "embedding.weight"}
            | {"conv2d.bias", "conv1d.bias", "norm.weight", "norm.bias"},
        ),
    ],
)
def test_which_gradients_are_centralized(
    min_ndim: int, include_linear: bool, touched: set[str]
) -> None:
    model, optimizer = _mixed_gradients()
    before = {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}
    callback = GradientCentralization(min_ndim=min_ndim, include_linear=include_linear)
    callback.on_before_optimizer_step(Mock(), Mock(), optimizer)
    for name, p in model.named_parameters():
        if before[name] is None:
            assert p.grad is None, name
        elif name in touched:
            torch.testing.assert_close(p.grad, centralized(before[name]), rtol=0, atol=1e-6)
            assert not torch.equal(p.grad, before[name]), name
        else:  # biases, normalization, frozen: bit for bit as before
            assert torch.equal(p.grad, before[name]), name


def test_only_the_stepping_optimizers_parameters_are_centralized() -> None:
    model, _ = _mixed_gradients()
    optimizer = torch.optim.SGD(model.conv2d.parameters(), lr=0.1)
    other = model.linear.weight.grad.clone()
    GradientCentralization().on_before_optimizer_step(Mock(), Mock(), optimizer)
    assert torch.equal(model.linear.weight.grad, other)
    assert model.conv2d.weight.grad.mean(dim=(1, 2, 3)).abs().max() < 1e-6


def test_sparse_gradients_are_left_alone_with_a_warning() -> None:
    embedding = nn.Embedding(5, 3, sparse=True)
    embedding(torch.tensor([1, 3])).sum().backward()
    grad = embedding.weight.grad.clone()
    callback = GradientCentralization()
    optimizer = torch.optim.SGD(embedding.parameters(), lr=0.1)
    with pytest.warns(UserWarning, match="leaves sparse gradients alone"):
        callback.on_before_optimizer_step(Mock(), Mock(), optimizer)
    assert torch.equal(embedding.weight.grad.to_dense(), grad.to_dense())


# ---------------------------------------------------------------- Lightning runs vs by hand


class Recorder(Callback):
    """After the callbacks before it: each step's gradients (in ``on_before_optimizer_step``) and
    the parameters after each training batch."""

    def __init__(self) -> None:
        self.grads: list[dict[str, Tensor]] = []
        self.params: list[dict[str, Tensor]] = []

    def on_before_optimizer_step(
        self, trainer: Trainer, pl_module: LightningModule, optimizer: Any
    ) -> None:
        self.grads.append({n: p.grad.clone() for n, p in pl_module.named_parameters()})

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        self.params.append({n: p.detach().clone() for n, p in pl_module.named_parameters()})


def _fit(tmp_path: Path, model: Net, *callbacks: Callback, **kwargs: Any) -> Recorder:
    recorder = Recorder()
    make_trainer(tmp_path, [*callbacks, recorder], **kwargs).fit(model)
    return recorder


def _weights(model: Net) -> dict[str, Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize(
    ("min_ndim", "include_linear", "accumulate", "batch_norm"),
    [(2, True, 1, True), (2, True, 3, False), (1, True, 2, True), (2, False, 1, False)],
)
def test_lightning_run_matches_plain_pytorch(
    tmp_path: Path, min_ndim: int, include_linear: bool, accumulate: int, batch_norm: bool
) -> None:
    model = Net("radam", lr=GC_LR, n_batches=7, batch_norm=batch_norm)
    callback = GradientCentralization(min_ndim=min_ndim, include_linear=include_linear)
    recorder = _fit(tmp_path, model, callback, accumulate_grad_batches=accumulate)
    expected, grads = reference_gradient_centralization(
        TinyNet(batch_norm=batch_norm),
        batches_of(make_data(28), 4),
        epochs=2,
        accumulate=accumulate,
        min_ndim=min_ndim,
        include_linear=include_linear,
    )
    assert len(recorder.grads) == len(grads) == 2 * -(-7 // accumulate)  # once per step
    for got, want in zip(recorder.grads, grads, strict=True):
        assert_close(got, want, atol=1e-6)
    assert_close(_weights(model), expected, atol=1e-6)
    if include_linear and min_ndim == 2:  # the centralization changed the trajectory
        plain, _ = reference_gradient_centralization(
            TinyNet(batch_norm=batch_norm),
            batches_of(make_data(28), 4),
            epochs=2,
            accumulate=accumulate,
            min_ndim=99,
        )
        assert any((plain[n] - expected[n]).abs().max() > 1e-3 for n in plain)


def test_accumulating_two_half_batches_equals_one_full_batch(tmp_path: Path) -> None:
    full = Net("radam", lr=GC_LR, batch_size=4, n_batches=5)
    _fit(tmp_path / "full", full, GradientCentralization(), max_epochs=3)
    halves = Net("radam", lr=GC_LR, batch_size=2, n_batches=10)
    recorder = _fit(
        tmp_path / "halves",
        halves,
        GradientCentralization(),
        max_epochs=3,
        accumulate_grad_batches=2,
    )
    assert len(recorder.grads) == 15
    for grads in recorder.grads:  # centralized once the accumulation is complete
        mean = grads["net.layers.inp.weight"].mean(dim=1)
        assert mean.abs().max() < 1e-6
    assert_close(_weights(halves), _weights(full), atol=1e-6)


@pytest.mark.parametrize(
    ("precision", "autocast", "input_dtype", "atol"),
    [
        ("64-true", None, torch.float64, 1e-12),
        ("bf16-mixed", torch.bfloat16, None, 1e-6),
        # The hand loop rounds the mean to bfloat16 before subtracting; the callback subtracts
        # the float32 mean and rounds once: gradients 1 bfloat16 rounding apart, then the runs.
        ("bf16-true", None, torch.bfloat16, 1e-2),
    ],
)
def test_precisions_match_plain_pytorch(
    tmp_path: Path,
    precision: str,
    autocast: torch.dtype | None,
    input_dtype: torch.dtype | None,
    atol: float,
) -> None:
    model = Net("radam", lr=GC_LR, n_batches=7)
    recorder = _fit(tmp_path, model, GradientCentralization(), precision=precision)
    net = TinyNet().to(input_dtype or torch.float32)
    expected, grads = reference_gradient_centralization(
        net, batches_of(make_data(28), 4), epochs=2, autocast=autocast, input_dtype=input_dtype
    )
    got = _weights(model)
    assert all(t.dtype == (input_dtype or torch.float32) for t in got.values())
    for g, want in zip(recorder.grads, grads, strict=True):
        assert_close(g, want, atol=atol)
    assert_close(got, expected, atol=atol)


SKIPPED_STEP = 3


class InjectInf(Callback):
    """An infinite gradient after the backward pass of optimizer step :data:`SKIPPED_STEP`."""

    def on_after_backward(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.global_step == SKIPPED_STEP:
            pl_module.net.layers["inp"].weight.grad[0, 0] = float("inf")


def test_16_mixed_centralizes_unscaled_gradients_and_skipped_steps_stay_skipped(
    tmp_path: Path,
) -> None:
    """``precision="16-mixed"`` on the CPU: Lightning's flag falls back to bf16-mixed there, so the
    plugin is passed explicitly, with a float16 GradScaler on the CPU."""
    init_scale = 2.0**10
    model = Net("radam", lr=GC_LR, n_batches=7)
    plugin = MixedPrecision("16-mixed", "cpu", torch.amp.GradScaler("cpu", init_scale=init_scale))
    recorder = _fit(tmp_path, model, InjectInf(), GradientCentralization(), plugins=[plugin])

    def inject(net: nn.Module, step: int) -> None:
        if step == SKIPPED_STEP:
            net.layers["inp"].weight.grad[0, 0] = float("inf")

    scaler = torch.amp.GradScaler("cpu", init_scale=init_scale)
    expected, grads = reference_gradient_centralization(
        TinyNet(),
        batches_of(make_data(28), 4),
        epochs=2,
        autocast=torch.float16,
        scaler=scaler,
        after_backward=inject,
    )
    assert len(recorder.grads) == len(grads) == 14
    for step, (got, want) in enumerate(zip(recorder.grads, grads, strict=True)):
        # Unscaled (the scale is 2^10) and centralized; the injected row is NaN in both.
        for name in got:
            torch.testing.assert_close(got[name], want[name], rtol=0, atol=1e-6, equal_nan=True)
        assert got["net.layers.inp.weight"].isnan().any() == (step == SKIPPED_STEP)
    # The scaler skipped that step: the parameters did not move and RAdam did not count it.
    assert_close(recorder.params[SKIPPED_STEP], recorder.params[SKIPPED_STEP - 1], atol=0.0)
    assert all(torch.isfinite(t).all() for t in recorder.params[-1].values())
    optimizer = model.trainer.optimizers[0]
    assert all(float(s["step"]) == 13 for s in optimizer.state.values())
    assert model.trainer.precision_plugin.scaler.get_scale() == scaler.get_scale() < init_scale
    assert_close(_weights(model), expected, atol=1e-6)


class FusedAdamNet(Net):
    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=GC_LR, fused=True)


def test_16_mixed_with_an_optimizer_that_unscales_itself(tmp_path: Path) -> None:
    """A fused torch Adam unscales inside its ``step``, so Lightning does not unscale before
    ``on_before_optimizer_step``: the callback centralizes scaled gradients, which gives the run
    that unscales first (the formula is linear) up to rounding."""
    model = FusedAdamNet(n_batches=7)
    plugin = MixedPrecision("16-mixed", "cpu", torch.amp.GradScaler("cpu", init_scale=2.0**10))
    recorder = _fit(tmp_path, model, GradientCentralization(), plugins=[plugin])
    expected, grads = reference_gradient_centralization(
        TinyNet(),
        batches_of(make_data(28), 4),
        epochs=2,
        autocast=torch.float16,
        scaler=torch.amp.GradScaler("cpu", init_scale=2.0**10),
        optimizer_class=torch.optim.Adam,
    )
    # The callback saw (and centralized) the gradients scaled by 2^10.
    assert_close({n: g / 2.0**10 for n, g in recorder.grads[0].items()}, grads[0], atol=1e-6)
    assert_close(_weights(model), expected, atol=1e-5)


# ---------------------------------------------------------------- bad input and strategies


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"min_ndim": 0}, ValueError, r"`min_ndim` must be a positive int \(the rank .*got 0"),
        ({"min_ndim": -2}, ValueError, r"`min_ndim` must be a positive int \(the rank .*got -2"),
        ({"min_ndim": 2.0}, TypeError, r"`min_ndim` must be a positive int .*, got 2.0"),
        ({"min_ndim": True}, TypeError, r"`min_ndim` must be a positive int .*, got True"),
        ({"min_ndim": "2"}, TypeError, r"`min_ndim` must be a positive int .*, got '2'"),
        ({"include_linear": 1}, TypeError, r"`include_linear` must be a bool, got 1"),
        ({"include_linear": None}, TypeError, r"`include_linear` must be a bool, got None"),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        GradientCentralization(**kwargs)


@pytest.mark.parametrize("strategy", [FSDPStrategy, DeepSpeedStrategy])
def test_fsdp1_and_deepspeed_are_refused_at_setup(strategy: type) -> None:
    # Both need CUDA (and DeepSpeed its package), so the trainer is a stand-in.
    callback = GradientCentralization()
    trainer = Mock(strategy=Mock(spec=strategy))
    with pytest.raises(
        ValueError,
        match=r"`GradientCentralization` does not support `Trainer\(strategy=.*flat parameters.*"
        r"`strategy=\"ddp\"`.*ModelParallelStrategy",
    ):
        callback.setup(trainer, Net(), stage="fit")
    callback.setup(trainer, Net(), stage="validate")  # nothing to centralize: no refusal


def test_the_callback_module_still_exports_the_formula() -> None:
    assert gradient_centralization.centralize_gradients is centralize_gradients
    assert gradient_centralization.CPU_BLOCK_NUMEL == CPU_BLOCK_NUMEL
