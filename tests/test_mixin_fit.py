"""RangerMixin in a LightningModule: its hooks (the config from hparams, the refused base order, a
replaced Lookahead) and fits (Ranger against RAdam and callbacks by hand, schedules per optimizer
step, exact resume, hyperparameters that round-trip through hparams.yaml and checkpoints)."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.core.saving import load_hparams_from_yaml
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_ranger import RAdam, RangerConfig, RangerMixin
from lightning_ranger.callbacks import Lookahead, RectificationMonitor, SlowWeightSwap
from lightning_ranger.optim.schedules import LRSchedule


class Body(L.LightningModule):
    """A small regression module; subclasses choose how it is optimized."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Tanh(), nn.Linear(8, 2))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self.body(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self.body(x), y))


class MixinNet(RangerMixin, Body):
    def __init__(self, ranger: RangerConfig | dict | None = None) -> None:
        super().__init__()
        self.save_hyperparameters()


class HandNet(Body):
    def configure_optimizers(self):
        return RAdam(self.parameters(), lr=3e-2)


class Recorder(Callback):
    """The learning rate of every optimizer step."""

    def __init__(self) -> None:
        self.lrs: list[float] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.lrs.append(optimizer.param_groups[0]["lr"])


def _loader(n=64, batch_size=8):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 4, generator=g)
    return DataLoader(TensorDataset(x, x[:, :2] * x[:, 2:]), batch_size=batch_size)


def _trainer(tmp_path, callbacks=(), **kwargs):
    options = {
        "max_epochs": 2,
        "accelerator": "cpu",
        "devices": 1,
        "logger": CSVLogger(tmp_path),
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        "deterministic": True,
    }
    options.update(kwargs)
    return L.Trainer(default_root_dir=tmp_path, callbacks=list(callbacks), **options)


def _weights(module):
    return {n: p.detach().clone() for n, p in module.named_parameters()}


def test_ranger_equals_radam_and_callbacks_by_hand(tmp_path):
    mixin = MixinNet(RangerConfig(optimizer="ranger", lr=3e-2, k=5, alpha=0.4))
    _trainer(tmp_path / "mixin").fit(mixin, _loader(), _loader(16))
    by_hand = HandNet()
    callbacks = [Lookahead(k=5, alpha=0.4), SlowWeightSwap(), RectificationMonitor()]
    _trainer(tmp_path / "hand", callbacks).fit(by_hand, _loader(), _loader(16))
    expected = _weights(by_hand)
    for name, value in _weights(mixin).items():
        assert torch.equal(value, expected[name]), name
    types = [type(cb) for cb in mixin.trainer.callbacks]
    assert {Lookahead, SlowWeightSwap, RectificationMonitor} <= set(types)


@pytest.mark.parametrize(
    ("trainer_kwargs", "loader_kwargs", "total"),
    [
        ({"max_steps": 40, "max_epochs": -1}, {}, 40),
        ({"max_epochs": 3}, {}, 24),
        ({"max_epochs": 3, "accumulate_grad_batches": 2}, {}, 12),
        ({"max_epochs": 2, "accumulate_grad_batches": 3}, {"n": 72}, 6),
    ],
    ids=["max_steps", "max_epochs", "accumulation", "accumulation-3"],
)
@pytest.mark.parametrize("schedule", ["cosine", "flat_cosine", "linear_warmup"])
def test_schedules_per_optimizer_step(tmp_path, schedule, trainer_kwargs, loader_kwargs, total):
    config = RangerConfig(
        optimizer="radam", lr=0.1, schedule=schedule, warmup_steps=4, flat_fraction=0.5
    )
    recorder = Recorder()
    trainer = _trainer(tmp_path, [recorder], logger=False, **trainer_kwargs)
    trainer.fit(MixinNet(config), _loader(**loader_kwargs))
    assert trainer.estimated_stepping_batches == total
    assert len(recorder.lrs) == total
    formula = LRSchedule(schedule, warmup_steps=4, total_steps=total, flat_fraction=0.5)
    expected = [0.1 * formula(s) for s in range(total)]
    assert recorder.lrs == pytest.approx(expected, abs=1e-12)
    assert recorder.lrs[:5] == pytest.approx([0.0, 0.025, 0.05, 0.075, 0.1])


def test_a_checkpoint_resumes_exactly_and_loads_with_weights_only(tmp_path):
    """Ranger with a flat-cosine schedule, resumed from the end of epoch 2 of 4 (mid k-cycle:
    5 steps an epoch, k=3), ends on the same weights as the uninterrupted run."""
    config = RangerConfig(optimizer="ranger", lr=3e-2, k=3, schedule="flat_cosine")
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1)
    uninterrupted = MixinNet(config)
    _trainer(tmp_path / "a", [checkpoint], max_epochs=4, enable_checkpointing=True).fit(
        uninterrupted, _loader(n=40), _loader(16)
    )
    path = tmp_path / "ckpt" / "epoch=1-step=10.ckpt"
    raw = torch.load(path, weights_only=True)
    assert raw["hyper_parameters"]["ranger"] == config.as_dict()
    assert raw["lr_schedulers"][0]["lr_lambdas"][0]["total_steps"] == 20

    resumed = MixinNet(config)
    _trainer(tmp_path / "b", max_epochs=4).fit(resumed, _loader(n=40), _loader(16), ckpt_path=path)
    expected = _weights(uninterrupted)
    for name, value in _weights(resumed).items():
        assert torch.equal(value, expected[name]), name

    loaded = MixinNet.load_from_checkpoint(path, weights_only=True)
    assert loaded.ranger_config() == config
    for name, value in _weights(loaded).items():
        assert torch.equal(value, raw["state_dict"][name]), name


def test_a_subclass_with_its_own_configure_optimizers_still_gets_the_callbacks(tmp_path):
    class OwnOptimizer(MixinNet):
        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)

    model = OwnOptimizer(RangerConfig(optimizer="ranger", monitor=False))
    _trainer(tmp_path, max_epochs=1).fit(model, _loader())
    assert isinstance(model.trainer.optimizers[0], torch.optim.SGD)
    assert sum(isinstance(cb, Lookahead) for cb in model.trainer.callbacks) == 1
    assert sum(isinstance(cb, SlowWeightSwap) for cb in model.trainer.callbacks) == 1


def test_a_replaced_trainer_lookahead_is_reported(tmp_path):
    model = MixinNet(RangerConfig(k=6, alpha=0.5, monitor=False))
    trainer = _trainer(tmp_path, [Lookahead(k=3, alpha=0.5)], max_steps=2)
    with pytest.warns(UserWarning, match=r"Lookahead\(k=3, alpha=0.5\) is replaced .* wins"):
        trainer.fit(model, _loader())
    (lookahead,) = [cb for cb in trainer.callbacks if isinstance(cb, Lookahead)]
    assert lookahead.k == 6


def test_missing_config_uses_the_defaults_and_warns_once():
    class NoConfig(RangerMixin, Body):
        pass

    model = NoConfig()
    with pytest.warns(UserWarning, match="has no `ranger` hyperparameter") as record:
        assert model.ranger_config() == RangerConfig()
        model.ranger_config()
    assert len([w for w in record if "ranger" in str(w.message)]) == 1


def test_ranger_config_override():
    class Custom(RangerMixin, Body):
        def ranger_config(self):
            return RangerConfig(optimizer="adamw", lr=5e-4)

    optimizer = Custom().configure_optimizers()
    assert type(optimizer) is torch.optim.AdamW and optimizer.param_groups[0]["lr"] == 5e-4


def test_mixin_after_lightning_module_is_refused():
    class Wrong(L.LightningModule, RangerMixin):
        pass

    class Plain(RangerMixin):
        pass

    with pytest.raises(TypeError, match=r"Plain is not a LightningModule: RangerMixin goes first"):
        Plain().ranger_config()
    assert Wrong.configure_optimizers is L.LightningModule.configure_optimizers


@pytest.mark.parametrize(
    ("ranger", "trainer_kwargs", "error", "match"),
    [
        (5, {"max_steps": 3}, TypeError, "must be a RangerConfig or a dict"),
        ({"optimizer": "lion"}, {"max_steps": 3}, ValueError, r"`optimizer` must be one of"),
        ({"monitor": "no"}, {"max_steps": 3}, TypeError, r"`monitor` must be a bool"),
        (
            {"schedule": "cosine"},
            {"max_steps": -1, "max_epochs": -1},
            ValueError,
            "needs a finite number",
        ),
        (
            {"warmup_steps": 50, "optimizer": "radam"},
            {"max_steps": 20},
            ValueError,
            r"\(50\) must not exceed",
        ),
    ],
)
def test_bad_hyperparameters_fail_before_training(tmp_path, ranger, trainer_kwargs, error, match):
    model = MixinNet(ranger)
    before = _weights(model)
    with pytest.raises(error, match=match):
        _trainer(tmp_path, logger=False, **trainer_kwargs).fit(model, _loader())
    for name, value in _weights(model).items():
        assert torch.equal(value, before[name])
    assert math.isfinite(value.sum().item())


def _optimizer_options(optimizer: torch.optim.Optimizer, module: nn.Module) -> tuple:
    """The optimizer's type and its groups' options and parameter names, comparable across
    modules."""
    names = {id(p): n for n, p in module.named_parameters()}
    groups = [
        {
            **{k: v for k, v in g.items() if k != "params"},
            "params": [names[id(p)] for p in g["params"]],
        }
        for g in optimizer.param_groups
    ]
    return type(optimizer), groups


ROUND_TRIP = RangerConfig(
    optimizer="radam",
    lr=2e-3,
    betas=(0.8, 0.99),
    eps=1e-7,
    weight_decay=0.1,
    decoupled_weight_decay=True,
    rectify_threshold=4.5,
    monitor=False,
)


@pytest.mark.parametrize("logger_class", [CSVLogger, TensorBoardLogger])
def test_hparams_yaml_is_plain_and_reads_back_into_the_same_optimizer(tmp_path, logger_class):
    model = MixinNet(ROUND_TRIP)
    trainer = _trainer(tmp_path, logger=logger_class(tmp_path), max_steps=2)
    trainer.fit(model, _loader())
    path = Path(trainer.logger.log_dir) / "hparams.yaml"
    text = path.read_text()
    assert "!!python" not in text
    assert yaml.safe_load(text) == {"ranger": ROUND_TRIP.as_dict()}

    hparams = load_hparams_from_yaml(str(path))
    assert RangerConfig.from_value(hparams["ranger"]) == ROUND_TRIP
    restored = MixinNet(**hparams)
    assert _optimizer_options(restored.configure_optimizers(), restored) == _optimizer_options(
        trainer.optimizers[0], model
    )


def test_checkpoint_hyperparameters_are_plain_and_build_the_same_optimizer(tmp_path):
    model = MixinNet(ROUND_TRIP)
    assert model.hparams["ranger"] == ROUND_TRIP.as_dict()  # before any training
    assert model.hparams_initial["ranger"] == ROUND_TRIP.as_dict()
    trainer = _trainer(tmp_path, max_steps=2)
    trainer.fit(model, _loader())
    path = tmp_path / "last.ckpt"
    trainer.save_checkpoint(path)
    assert torch.load(path, weights_only=True)["hyper_parameters"] == {
        "ranger": ROUND_TRIP.as_dict()
    }

    loaded = MixinNet.load_from_checkpoint(path, weights_only=True)
    assert loaded.ranger_config() == ROUND_TRIP
    assert _optimizer_options(loaded.configure_optimizers(), loaded) == _optimizer_options(
        trainer.optimizers[0], model
    )
