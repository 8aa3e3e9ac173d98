"""Lookahead as a callback on a single device: values against a plain-PyTorch Algorithm 1 loop
(step counting, manual optimization, frozen parameters, precisions, a compiled module), bad input
and refused setups. Checkpoints are in ``test_lookahead_checkpoints.py``, the sync's arithmetic
in ``test_lookahead_sync.py``."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any
from unittest.mock import Mock

import pytest
import torch
from helpers.asserts import assert_close, assert_equal, fast_and_slow, params
from helpers.data import batches_of, make_data
from helpers.models import Net, TinyNet, TwoOptimizerNet, make_optimizer, two_optimizers
from helpers.references import prefixed, reference_lookahead, tiny_lookahead_reference
from helpers.trainers import make_trainer
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.precision import MixedPrecision
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy
from torch import nn

from lightning_ranger.callbacks._slow_weights import SlowWeights
from lightning_ranger.callbacks.lookahead import FAST_WEIGHTS_KEY, Lookahead
from lightning_ranger.optim.lookahead import CPU_BATCH_NUMEL, slow_dtype


@pytest.mark.parametrize(
    ("optimizer", "k", "alpha", "accumulate"),
    [
        ("sgd", 3, 0.5, 1),  # 20 steps: not a multiple of k
        ("adam", 6, 0.8, 1),
        ("radam", 6, 0.5, 1),
        ("radam", 4, 1.0, 2),  # 10 steps
        ("sgd", 1, 0.3, 3),  # a short accumulation window at each epoch's end: 8 steps
        ("adam", 3, 0.25, 3),
    ],
)
def test_matches_algorithm_1(
    tmp_path: Path, optimizer: str, k: int, alpha: float, accumulate: int
) -> None:
    n_batches, batch_size, lr = 10, 4, 0.05
    model = Net(optimizer, lr=lr, batch_size=batch_size, n_batches=n_batches, batch_norm=True)
    lookahead = Lookahead(k=k, alpha=alpha, final_weights="fast")
    make_trainer(tmp_path, [lookahead], accumulate_grad_batches=accumulate).fit(model)
    fast, slow = fast_and_slow(lookahead, model)

    net = TinyNet(batch_norm=True)
    ref_fast, ref_slow = reference_lookahead(
        net,
        [make_optimizer(optimizer, net.parameters(), lr)],
        batches_of(make_data(batch_size * n_batches), batch_size),
        epochs=2,
        k=k,
        alpha=alpha,
        accumulate=accumulate,
    )
    assert_close(fast, prefixed(ref_fast), atol=1e-6)
    assert_close(slow, prefixed(ref_slow), atol=1e-6)
    # BatchNorm statistics are the module's own, never synced.
    ref_buffers = {f"net.{n}": b for n, b in net.named_buffers()}
    assert_close(dict(model.named_buffers()), ref_buffers, atol=1e-6)


def test_final_weights_slow_leaves_the_slow_weights_in_the_module(tmp_path: Path) -> None:
    model = Net("sgd", n_batches=7)
    make_trainer(tmp_path, [Lookahead(k=3)]).fit(model)
    _, ref_slow = tiny_lookahead_reference(TinyNet(), "sgd", samples=28, epochs=2, k=3)
    assert_close(params(model), ref_slow, atol=1e-6)


def test_counts_optimizer_steps_in_manual_optimization(tmp_path: Path) -> None:
    # Two optimizers stepping once per batch: global_step, and Lookahead's count, grow by 2.
    model = TwoOptimizerNet(optimizer="adam", n_batches=7)
    lookahead = Lookahead(k=3, alpha=0.5, final_weights="fast")
    trainer = make_trainer(tmp_path, [lookahead])
    trainer.fit(model)
    assert trainer.global_step == 28
    fast, slow = fast_and_slow(lookahead, model)

    net = TinyNet()
    ref_fast, ref_slow = reference_lookahead(
        net,
        two_optimizers(net, "adam", 0.05),
        batches_of(make_data(28), 4),
        epochs=2,
        k=3,
        alpha=0.5,
    )
    assert_close(fast, prefixed(ref_fast), atol=1e-6)
    assert_close(slow, prefixed(ref_slow), atol=1e-6)


def test_frozen_parameters_are_not_tracked(tmp_path: Path) -> None:
    model = Net("sgd", frozen=("layers.inp.weight",))
    frozen_before = model.net.layers.inp.weight.detach().clone()
    lookahead = Lookahead(k=2)
    trainer = make_trainer(tmp_path, [lookahead])
    trainer.fit(model)
    assert torch.equal(model.net.layers.inp.weight, frozen_before)
    trainer.save_checkpoint(tmp_path / "frozen.ckpt")
    checkpoint = torch.load(tmp_path / "frozen.ckpt", weights_only=False)
    assert "net.layers.inp.weight" not in checkpoint[FAST_WEIGHTS_KEY]
    assert checkpoint["callbacks"]["Lookahead"]["names"] == [
        "net.layers.inp.bias",
        "net.layers.out.weight",
        "net.layers.out.bias",
    ]


def test_sync_of_large_non_contiguous_and_16_bit_parameters() -> None:
    # On the CPU the sync runs over slices of CPU_BATCH_NUMEL elements: a parameter larger than
    # that is split, a large channels-last one is taken whole, a bfloat16 one has a float32 slow
    # copy, and the batches follow a parameter whose storage changed.
    module = nn.ModuleDict(
        {
            "big": nn.Linear(CPU_BATCH_NUMEL // 100 + 7, 100),
            "conv": nn.Conv2d(64, CPU_BATCH_NUMEL // 576 + 1, 3).to(
                memory_format=torch.channels_last
            ),
            "bf16": nn.Linear(5, 3).to(torch.bfloat16),
        }
    )
    conv = module["conv"].weight
    assert conv.numel() > CPU_BATCH_NUMEL and not conv.is_contiguous()
    weights = SlowWeights(module)
    slow = {n: p.detach().to(slow_dtype(p.dtype), copy=True) for n, p in module.named_parameters()}
    for k in range(3):
        with torch.no_grad():
            for name, p in module.named_parameters():
                if k == 2:  # new storage, as when a module moves: the sync must follow it
                    p.data = p.data.clone(memory_format=torch.preserve_format)
                p.add_(torch.randn_like(p))
                slow[name] += 0.3 * (p.to(slow[name].dtype) - slow[name])
        weights.sync(0.3)
        synced, _ = weights.tensors(full=True)
        for name, p in module.named_parameters():
            assert torch.allclose(synced[name], slow[name], atol=1e-6), (k, name)
            assert synced[name].dtype == slow[name].dtype
            assert torch.equal(p, synced[name].to(p.dtype)), (k, name)


# ---------------------------------------------------------------- precisions


@pytest.mark.parametrize(
    ("precision", "param_dtype", "context", "input_dtype"),
    [
        ("32-true", torch.float32, None, None),
        ("bf16-mixed", torch.float32, torch.bfloat16, None),
        ("bf16-true", torch.bfloat16, None, torch.bfloat16),
        ("16-true", torch.float16, None, torch.float16),
    ],
)
def test_precisions_match_algorithm_1(
    tmp_path: Path,
    precision: str,
    param_dtype: torch.dtype,
    context: torch.dtype | None,
    input_dtype: torch.dtype | None,
) -> None:
    model = Net("sgd", lr=0.02, n_batches=7)
    lookahead = Lookahead(k=3, alpha=0.5, final_weights="fast")
    make_trainer(tmp_path, [lookahead], precision=precision).fit(model)
    fast, slow = fast_and_slow(lookahead, model)
    assert all(t.dtype == param_dtype for t in fast.values())

    net = TinyNet().to(param_dtype)

    def forward_context() -> Any:
        return torch.autocast("cpu", dtype=context, enabled=context is not None)

    ref_fast, ref_slow = reference_lookahead(
        net,
        [make_optimizer("sgd", net.parameters(), 0.02)],
        batches_of(make_data(28), 4),
        epochs=2,
        k=3,
        alpha=0.5,
        forward_context=forward_context,
        input_dtype=input_dtype,
    )
    assert_close(fast, prefixed(ref_fast), atol=1e-6)
    # The module holds the slow weights rounded to its dtype.
    assert_close(slow, {n: t.to(param_dtype) for n, t in prefixed(ref_slow).items()}, atol=1e-6)


class _Steps(Callback):
    """After the callbacks before it: the fast and slow weights at each global step; an infinite
    gradient is injected at global step ``inject``, so that the GradScaler skips that step."""

    def __init__(self, lookahead: Lookahead, inject: int) -> None:
        self.lookahead, self.inject = lookahead, inject
        self.fast: dict[int, dict[str, torch.Tensor]] = {}
        self.slow: dict[int, dict[str, torch.Tensor]] = {}

    def on_after_backward(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.global_step == self.inject:
            pl_module.net.layers["inp"].weight.grad[0, 0] = float("inf")

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *_: Any) -> None:
        assert self.lookahead._weights is not None
        slow, _ = self.lookahead._weights.tensors(full=False)
        self.fast[trainer.global_step] = params(pl_module)
        self.slow[trainer.global_step] = {n: t.clone() for n, t in slow.items()}


def test_a_step_that_the_16_mixed_scaler_skips_counts_toward_k(tmp_path: Path) -> None:
    """``k`` counts ``trainer.global_step`` (as Lightning's own callbacks do), which a step that
    the GradScaler skips advances too: the syncs stay at multiples of ``k``, and that cycle has
    one update fewer. (16-mixed on the CPU: the plugin with a CPU GradScaler.)"""
    model = Net("radam", n_batches=7)
    lookahead = Lookahead(k=3, alpha=0.5, final_weights="fast")
    steps = _Steps(lookahead, inject=1)
    plugin = MixedPrecision("16-mixed", "cpu", torch.amp.GradScaler("cpu", init_scale=2.0**10))
    make_trainer(tmp_path, [lookahead, steps], plugins=[plugin], max_steps=7).fit(model)
    assert_equal(steps.fast[2], steps.fast[1])  # the skipped step: no update
    assert all(float(s["step"]) == 6 for s in model.trainer.optimizers[0].state.values())
    moved = [
        t
        for t in range(2, 8)
        if any(not torch.equal(steps.slow[t][n], steps.slow[t - 1][n]) for n in steps.slow[t])
    ]
    assert moved == [3, 6]
    for t in moved:  # the fast weights restarted from the slow ones
        assert_equal(steps.fast[t], steps.slow[t])


def test_bf16_true_slow_weights_are_float32_and_follow_a_float32_run(tmp_path: Path) -> None:
    def run(precision: str) -> dict[str, torch.Tensor]:
        lookahead = Lookahead(k=4, alpha=0.5)
        trainer = make_trainer(tmp_path / precision, [lookahead], precision=precision, max_epochs=4)
        trainer.fit(Net("sgd", lr=0.01, n_batches=8))
        trainer.save_checkpoint(tmp_path / f"{precision}.ckpt")
        state_dict = torch.load(tmp_path / f"{precision}.ckpt", weights_only=False)["state_dict"]
        return {n: t for n, t in state_dict.items() if "layers" in n}

    slow_bf16, slow_fp32 = run("bf16-true"), run("32-true")
    assert all(t.dtype == torch.float32 for t in slow_bf16.values())
    # Not representable in bfloat16: the float32 slow weights keep what bf16 would round away.
    assert any(not torch.equal(t, t.bfloat16().float()) for t in slow_bf16.values())
    assert_close(slow_bf16, slow_fp32, atol=2e-2)


# ---------------------------------------------------------------- bad input and refused setups


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"k": 0}, ValueError, r"`k` must be a positive int, got 0"),
        ({"k": -3}, ValueError, r"`k` must be a positive int, got -3"),
        ({"k": 2.0}, TypeError, r"`k` must be a positive int, got 2.0"),
        ({"k": True}, TypeError, r"`k` must be a positive int, got True"),
        ({"alpha": 0.0}, ValueError, r"`alpha` must be a float in \(0, 1\], got 0.0"),
        ({"alpha": 1.5}, ValueError, r"`alpha` must be a float in \(0, 1\], got 1.5"),
        ({"alpha": -0.1}, ValueError, r"`alpha` must be a float in \(0, 1\], got -0.1"),
        ({"alpha": math.nan}, ValueError, r"`alpha` must be a float in \(0, 1\], got nan"),
        ({"alpha": "0.5"}, TypeError, r"`alpha` must be a float in \(0, 1\], got '0.5'"),
        (
            {"final_weights": "best"},
            ValueError,
            r"`final_weights` must be one of 'slow', 'fast', got 'best'",
        ),
        ({"final_weights": None}, TypeError, r"`final_weights` must be one of .*, got None"),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        Lookahead(**kwargs)


def test_two_lookahead_callbacks_are_refused(tmp_path: Path) -> None:
    # Lightning itself refuses two callbacks with one `state_key` when the Trainer is built ...
    with pytest.raises(RuntimeError, match=r"more than one stateful callback of type `Lookahead`"):
        make_trainer(tmp_path, [Lookahead(), Lookahead(k=3)])
    # ... and Lookahead at setup, when one was added to `trainer.callbacks` afterwards.
    trainer = make_trainer(tmp_path, [Lookahead()])
    trainer.callbacks.append(Lookahead(k=3))
    with pytest.raises(
        ValueError, match=r"`Trainer\(callbacks=...\)` has more than one `Lookahead`"
    ):
        trainer.fit(Net())


def test_deepspeed_is_refused_at_setup() -> None:
    # DeepSpeed needs CUDA and its package, so the trainer is a stand-in.
    lookahead = Lookahead()
    trainer = Mock(strategy=Mock(spec=DeepSpeedStrategy), callbacks=[lookahead])
    with pytest.raises(
        ValueError, match=r"does not support `Trainer\(strategy=.*ModelParallelStrategy.*FSDP1"
    ):
        lookahead.setup(trainer, Net(), stage="fit")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"use_orig_params": False}, r"`use_orig_params=False`"),
        ({"state_dict_type": "sharded"}, r"`state_dict_type='sharded'`"),
        (
            {"sharding_strategy": "HYBRID_SHARD", "auto_wrap_policy": {torch.nn.Linear}},
            r"`sharding_strategy=HYBRID_SHARD`",
        ),
        (
            {"sharding_strategy": "_HYBRID_SHARD_ZERO2", "auto_wrap_policy": {torch.nn.Linear}},
            r"`sharding_strategy=_HYBRID_SHARD_ZERO2`",
        ),
    ],
)
def test_fsdp1_needs_flat_shards_by_name_and_full_checkpoints(
    kwargs: dict[str, Any], match: str
) -> None:
    lookahead = Lookahead()
    trainer = Mock(strategy=FSDPStrategy(**kwargs), callbacks=[lookahead])
    with pytest.raises(ValueError, match=rf"does not support `FSDPStrategy` with {match}"):
        lookahead.setup(trainer, Net(), stage="fit")
    # Lightning's defaults (FULL_SHARD, use_orig_params=True, full state dicts) are taken.
    trainer = Mock(strategy=FSDPStrategy(), callbacks=[lookahead], checkpoint_callbacks=[])
    lookahead.setup(trainer, Net(), stage="fit")


def test_save_weights_only_checkpoints_warn(tmp_path: Path) -> None:
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_weights_only=True)
    trainer = make_trainer(
        tmp_path, [Lookahead(), checkpoint], enable_checkpointing=True, max_epochs=1
    )
    with pytest.warns(UserWarning, match=r"save_weights_only=True.*fast weights"):
        trainer.fit(Net())


def test_save_weights_only_warns_under_pytorch_lightning_too() -> None:
    pl_callbacks = pytest.importorskip("pytorch_lightning.callbacks")
    lookahead = Lookahead()
    checkpoint = pl_callbacks.ModelCheckpoint(save_weights_only=True)
    trainer = Mock(strategy=Mock(), callbacks=[lookahead, checkpoint])
    with pytest.warns(UserWarning, match=r"save_weights_only=True.*fast weights"):
        lookahead.setup(trainer, Net(), stage="fit")


# ---------------------------------------------------------------- compiled modules


def test_a_compiled_module_follows_the_eager_run_without_recompiling(tmp_path: Path) -> None:
    # The sync writes the parameters in place, which compiled graphs read without guarding on
    # their values: one graph serves every step.
    eager = Net("radam", n_batches=7)
    make_trainer(tmp_path / "eager", [Lookahead(k=3, final_weights="fast")]).fit(eager)

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    model = Net("radam", n_batches=7)
    lookahead = Lookahead(k=3, final_weights="fast")
    make_trainer(tmp_path / "compiled", [lookahead]).fit(torch.compile(model, backend="aot_eager"))
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1
    assert_close(params(model), params(eager), atol=1e-6)
    assert lookahead.show_slow_weights()
