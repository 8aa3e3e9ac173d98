"""What a RangerConfig builds, without a Trainer: the optimizer and its options, the param groups
(which parameters get no weight decay) and the callbacks."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch import nn

from lightning_ranger import RAdam, RangerConfig, RangerMixin
from lightning_ranger.callbacks import (
    GradientCentralization,
    Lookahead,
    RectificationMonitor,
    SlowWeightSwap,
)
from lightning_ranger.mixin.factory import build_callbacks, build_optimizer


@pytest.mark.parametrize(
    ("name", "cls", "extra"),
    [
        ("radam", RAdam, {"rectify_threshold": 4.0, "decoupled_weight_decay": True}),
        ("adam", torch.optim.Adam, {}),
        ("adamw", torch.optim.AdamW, {}),
    ],
)
def test_optimizers_and_their_options(name, cls, extra):
    config = RangerConfig(
        optimizer=name, lr=2e-3, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1, **extra
    )
    body = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Tanh(), nn.Linear(8, 2))
    optimizer = build_optimizer(config, body)
    assert type(optimizer) is cls
    decay, no_decay = optimizer.param_groups
    assert (decay["lr"], decay["betas"], decay["eps"], decay["weight_decay"]) == (
        2e-3,
        (0.8, 0.99),
        1e-6,
        0.1,
    )
    assert no_decay["weight_decay"] == 0.0
    for key, value in extra.items():
        assert decay[key] == value


def test_callbacks_follow_the_config():
    def types(**fields):
        return [type(cb) for cb in build_callbacks(RangerConfig(**fields))]

    assert types() == [Lookahead, SlowWeightSwap, RectificationMonitor]
    assert types(slow_weight_eval=False, monitor=False) == [Lookahead]
    assert types(optimizer="radam") == [RectificationMonitor]
    assert types(optimizer="adamw", monitor=False) == []
    assert types(optimizer="radam", monitor=False, gradient_centralization=True) == [
        GradientCentralization
    ]
    lookahead = build_callbacks(RangerConfig(k=3, alpha=0.25))[0]
    assert (lookahead.k, lookahead.alpha) == (3, 0.25)


def test_no_decay_group_holds_exactly_biases_1d_and_normalization_parameters():
    class Wide(RangerMixin, L.LightningModule):
        def __init__(self):
            super().__init__()
            self.save_hyperparameters({"ranger": {"optimizer": "radam", "weight_decay": 0.01}})
            self.conv = nn.Conv2d(1, 4, 3)
            self.bn = nn.BatchNorm2d(4)
            self.embedding = nn.Embedding(10, 4)
            self.ln = nn.LayerNorm(4)
            self.gn = nn.GroupNorm(2, 4)
            self.head = nn.Linear(4, 2)
            self.scale = nn.Parameter(torch.ones(4))

    model = Wide()
    decay, no_decay = model.configure_optimizers().param_groups
    assert (decay["name"], no_decay["name"]) == ("decay", "no_decay")
    names = {id(p): n for n, p in model.named_parameters()}
    assert sorted(names[id(p)] for p in decay["params"]) == [
        "conv.weight",
        "embedding.weight",
        "head.weight",
    ]
    norms = ["bn.weight", "bn.bias", "ln.weight", "ln.bias", "gn.weight", "gn.bias"]
    assert sorted(names[id(p)] for p in no_decay["params"]) == sorted(
        [*norms, "conv.bias", "head.bias", "scale"]
    )
    model.hparams["ranger"]["weight_decay"] = 0.0
    assert len(model.configure_optimizers().param_groups) == 1
    model.hparams["ranger"].update(weight_decay=0.01, no_decay_norm_and_bias=False)
    assert len(model.configure_optimizers().param_groups) == 1
