"""The callbacks and RangerMixin under ``pytorch_lightning``, the standalone distribution's name for
``lightning.pytorch``: its Trainer, LightningModule, strategies, loggers and ModelCheckpoint.

Single-device runs are compared with the same run under ``lightning.pytorch``; the 2-process runs
(DDP, FSDP1 through the CPU stand-in, FSDP2) with a one-process reference loop, and their
checkpoints with the weights the run ended on.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path
from typing import Any
from unittest.mock import Mock

import pytest

pytest.importorskip("pytorch_lightning")

import pytorch_lightning
import torch
import yaml
from helpers.asserts import assert_close, assert_equal, params
from helpers.data import make_data
from helpers.launch import run_two_processes
from helpers.models import TinyNet
from helpers.pl import NAMESPACES, PLCPUFSDPStrategy, PLNet, make_trainer, namespace, net_class
from helpers.references import tiny_lookahead_reference
from scripts.pl_namespace import VARIANTS
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2
from torch import nn

from lightning_ranger import RangerConfig, RangerMixin
from lightning_ranger._namespaces import lightning_classes, lightning_isinstance
from lightning_ranger.callbacks import (
    GradientCentralization,
    Lookahead,
    RectificationMonitor,
    SlowWeightSwap,
)
from lightning_ranger.callbacks.lookahead import FAST_WEIGHTS_KEY

CKPT = "epoch=0-step=5.ckpt"


def test_lightning_isinstance_recognises_both_namespaces() -> None:
    lightning_pytorch = namespace("lightning.pytorch")
    assert lightning_classes("strategies.FSDPStrategy") == (
        lightning_pytorch.strategies.FSDPStrategy,
        pytorch_lightning.strategies.FSDPStrategy,
    )
    assert lightning_classes("LightningModule") == (
        lightning_pytorch.LightningModule,
        pytorch_lightning.LightningModule,
    )
    for ns in (lightning_pytorch, pytorch_lightning):
        checkpoint = ns.callbacks.ModelCheckpoint()
        assert lightning_isinstance(checkpoint, "loggers.CSVLogger", "callbacks.ModelCheckpoint")
        assert not lightning_isinstance(checkpoint, "callbacks.EarlyStopping")
    with pytest.raises(AttributeError, match="ModelCheckpt"):
        lightning_classes("callbacks.ModelCheckpt")


def test_lightning_isinstance_does_not_import_pytorch_lightning() -> None:
    code = (
        "import sys\n"
        "from lightning.pytorch.callbacks import ModelCheckpoint\n"
        "from lightning_ranger._namespaces import lightning_isinstance\n"
        "assert lightning_isinstance(ModelCheckpoint(), 'callbacks.ModelCheckpoint')\n"
        "print('pytorch_lightning' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert result.stdout.strip() == "False"


def _fit_lookahead(name: str, root: Path, ckpt_path: Path | None = None) -> tuple[Any, Any]:
    """Lookahead(k=3) + SlowWeightSwap + a ModelCheckpoint of every epoch, 2 epochs of 5 steps."""
    ns = namespace(name)
    checkpoint = ns.callbacks.ModelCheckpoint(dirpath=root, save_top_k=-1, every_n_epochs=1)
    callbacks = [Lookahead(k=3, alpha=0.5), SlowWeightSwap(), checkpoint]
    trainer = make_trainer(name, root, callbacks, enable_checkpointing=True)
    model = net_class(name)()
    trainer.fit(model, ckpt_path=ckpt_path)
    return trainer, model


def test_single_device_lookahead_and_swap_equal_the_lightning_pytorch_run(tmp_path: Path) -> None:
    runs = {name: _fit_lookahead(name, tmp_path / name) for name in NAMESPACES}
    (lightning_trainer, lightning_model), (pl_trainer, pl_model) = runs.values()
    assert isinstance(pl_trainer, pytorch_lightning.Trainer)
    assert_equal(params(pl_model), params(lightning_model))
    # Validation ran on the slow weights in both: the same val_loss.
    assert pl_trainer.callback_metrics["val_loss"] == lightning_trainer.callback_metrics["val_loss"]
    for file in (CKPT, "epoch=1-step=10.ckpt"):
        ours, theirs = (torch.load(tmp_path / n / file, weights_only=True) for n in NAMESPACES)
        assert_equal(theirs["state_dict"], ours["state_dict"])
        assert_equal(theirs[FAST_WEIGHTS_KEY], ours[FAST_WEIGHTS_KEY])
        assert theirs["callbacks"]["Lookahead"] == ours["callbacks"]["Lookahead"]
    # Step 5 is 2 steps after the last sync: the file holds slow and fast weights that differ.
    mid_cycle = torch.load(tmp_path / "pytorch_lightning" / CKPT, weights_only=True)
    assert any(
        not torch.equal(mid_cycle["state_dict"][n], t)
        for n, t in mid_cycle[FAST_WEIGHTS_KEY].items()
    )


def test_resume_from_a_pytorch_lightning_checkpoint_is_exact(tmp_path: Path) -> None:
    _, uninterrupted = _fit_lookahead("pytorch_lightning", tmp_path / "a")
    _, resumed = _fit_lookahead(
        "pytorch_lightning", tmp_path / "b", ckpt_path=tmp_path / "a" / CKPT
    )
    assert_equal(params(resumed), params(uninterrupted))
    loaded = PLNet.load_from_checkpoint(tmp_path / "a" / CKPT, weights_only=True)
    saved = torch.load(tmp_path / "a" / CKPT, weights_only=True)["state_dict"]
    assert_equal(params(loaded), saved)


def test_save_weights_only_warns_with_a_pytorch_lightning_model_checkpoint(tmp_path: Path) -> None:
    checkpoint = pytorch_lightning.callbacks.ModelCheckpoint(
        dirpath=tmp_path, save_weights_only=True
    )
    trainer = make_trainer(
        "pytorch_lightning", tmp_path, [Lookahead(), checkpoint], enable_checkpointing=True
    )
    with pytest.warns(UserWarning, match=r"save_weights_only=True.*fast weights"):
        trainer.fit(PLNet())


@pytest.mark.parametrize(
    ("strategy", "match"),
    [
        (
            lambda: PLCPUFSDPStrategy(use_orig_params=False),
            r"does not support `PLCPUFSDPStrategy` with `use_orig_params=False`",
        ),
        (
            lambda: Mock(spec=pytorch_lightning.strategies.DeepSpeedStrategy),
            r"does not support `Trainer\(strategy=.*\)`.*ModelParallelStrategy",
        ),
    ],
    ids=["fsdp1-use_orig_params=False", "deepspeed"],
)
def test_pytorch_lightning_strategies_are_refused_as_lightning_pytorch_ones(
    strategy: Any, match: str
) -> None:
    # FSDP1 and DeepSpeed need CUDA (DeepSpeed its package too): the trainer is a stand-in.
    lookahead = Lookahead()
    trainer = Mock(strategy=strategy(), callbacks=[lookahead], checkpoint_callbacks=[])
    with pytest.raises(ValueError, match=match):
        lookahead.setup(trainer, PLNet(), stage="fit")


def test_gradient_centralization_refuses_pytorch_lightning_fsdp1() -> None:
    trainer = Mock(strategy=PLCPUFSDPStrategy(), callbacks=[])
    with pytest.raises(ValueError, match=r"`GradientCentralization` does not support"):
        GradientCentralization().setup(trainer, PLNet(), stage="fit")


def _monitor_run(name: str, root: Path) -> EventAccumulator:
    ns = namespace(name)
    logger = ns.loggers.TensorBoardLogger(root, name="", version=0, default_hp_metric=False)
    monitor = RectificationMonitor(logging_interval=1, log_histograms=True)
    trainer = make_trainer(name, root, [monitor], logger=logger, max_epochs=1)
    trainer.fit(net_class(name)())
    size = {"scalars": 0, "histograms": 0, "tensors": 0}
    return EventAccumulator(str(root / "version_0"), size_guidance=size).Reload()


def test_monitor_histograms_and_layout_reach_the_pytorch_lightning_tensorboard_logger(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        ours, theirs = (_monitor_run(name, tmp_path / name) for name in NAMESPACES)
    assert not [r for r in caplog.records if "takes no histograms" in r.getMessage()]
    histograms = theirs.Histograms("rectification/adaptive_lr")
    assert [h.step for h in histograms] == [1, 2, 3, 4, 5]
    for mine, other in zip(ours.Histograms("rectification/adaptive_lr"), histograms, strict=True):
        assert mine.histogram_value == other.histogram_value
    for tag in ("rectification/rho_t", "rectification/r_t", "rectification/adaptive_lr_var"):
        assert [(e.step, e.value) for e in theirs.Scalars(tag)] == [
            (e.step, e.value) for e in ours.Scalars(tag)
        ]
    layouts = [
        layout_pb2.Layout.FromString(config.tensor_proto.string_val[0])
        for run in (ours, theirs)
        for config in run.Tensors("custom_scalars__config__")
    ]
    assert len(layouts) == 2
    assert layouts[1] == layouts[0]
    (category,) = layouts[1].category
    charts = {c.title for c in category.chart}
    assert {
        "r_t vs r_t_linear_warmup",
        "rho_t vs rho_t_threshold",
        "log10 adaptive_lr quantiles",
    } <= charts


class _Body:
    """Layers and a training step for the mixin modules of both namespaces."""

    def __init__(self, ranger: RangerConfig | None = None) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = TinyNet()

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.mse_loss(self.net(x), y)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self.net(x), y))


class LightningMixinNet(RangerMixin, _Body, namespace("lightning.pytorch").LightningModule):
    pass


class PLMixinNet(RangerMixin, _Body, pytorch_lightning.LightningModule):
    pass


def _loader(n: int) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(make_data(n), batch_size=4)


def test_ranger_mixin_on_a_pytorch_lightning_module(tmp_path: Path) -> None:
    config = RangerConfig(optimizer="ranger", lr=0.05, k=3, schedule="cosine", monitor=True)
    weights = {}
    for name, cls in zip(NAMESPACES, (LightningMixinNet, PLMixinNet), strict=True):
        ns = namespace(name)
        model = cls(config)
        logger = ns.loggers.TensorBoardLogger(tmp_path / name, name="", version=0)
        trainer = make_trainer(name, tmp_path / name, [], logger=logger, enable_checkpointing=True)
        trainer.fit(model, _loader(20), _loader(8))
        weights[name] = params(model)
    assert {Lookahead, SlowWeightSwap, RectificationMonitor} <= {type(c) for c in trainer.callbacks}
    assert_equal(weights["pytorch_lightning"], weights["lightning.pytorch"])

    hparams = tmp_path / "pytorch_lightning" / "version_0" / "hparams.yaml"
    assert yaml.safe_load(hparams.read_text()) == {"ranger": config.as_dict()}
    loaded_hparams = pytorch_lightning.core.saving.load_hparams_from_yaml(str(hparams))
    assert RangerConfig.from_value(loaded_hparams["ranger"]) == config
    (path,) = (tmp_path / "pytorch_lightning" / "version_0" / "checkpoints").glob("*.ckpt")
    loaded = PLMixinNet.load_from_checkpoint(path, weights_only=True)
    assert loaded.ranger_config() == config


# 2 processes under pytorch_lightning ----------------------------------------------------------


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pl_namespace")
    run_two_processes("pl_namespace", str(out), *VARIANTS, timeout=600)
    return out


def _record(out: Path, variant: str, rank: int) -> dict:
    return torch.load(out / f"{variant}_rank{rank}.pt", weights_only=True)


@pytest.fixture(scope="module")
def reference() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """One process on the full batches of 4 (each rank takes half of each), one epoch."""
    net = TinyNet()
    return tiny_lookahead_reference(net, epochs=1, k=3)


@pytest.mark.distributed
@pytest.mark.parametrize("variant", VARIANTS)
def test_two_processes_agree_with_one_on_full_batches(
    out: Path, variant: str, reference: tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]
) -> None:
    record = _record(out, variant, 0)
    assert record["step"] == 5
    for key in ("fast", "slow"):
        assert_equal(_record(out, variant, 1)[key], record[key])
    assert_close(record["fast"], reference[0], atol=1e-6)
    assert_close(record["slow"], reference[1], atol=1e-6)


@pytest.mark.distributed
@pytest.mark.parametrize("variant", VARIANTS)
def test_checkpoints_hold_the_full_slow_and_fast_weights(out: Path, variant: str) -> None:
    """Full shapes (not FSDP1's rank-0 flat slices): ``load_from_checkpoint`` takes them."""
    record = _record(out, variant, 0)
    checkpoint = torch.load(out / variant / CKPT, weights_only=True)
    slow = {n: checkpoint["state_dict"][n] for n in record["slow"]}
    assert {n: t.shape for n, t in slow.items()} == {n: t.shape for n, t in record["slow"].items()}
    assert_equal(slow, record["slow"])
    assert_equal(checkpoint[FAST_WEIGHTS_KEY], record["fast"])
    state = checkpoint["callbacks"]["Lookahead"]
    assert (state["synced_at_step"], state["names"]) == (3, list(record["fast"]))
    loaded = PLNet.load_from_checkpoint(out / variant / CKPT, weights_only=True)
    assert_equal(params(loaded), record["slow"])
