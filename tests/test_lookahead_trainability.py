"""Lookahead with parameters that become trainable after ``fit`` starts: a manual unfreeze (against
a hand loop, with exact resumes on both sides of it) and Lightning's ``BackboneFinetuning``
(compared with Lightning's own resume, which is not exact)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from helpers.asserts import assert_close, assert_equal, fast_and_slow, params
from helpers.models import Net, TinyNet
from helpers.references import tiny_lookahead_reference
from helpers.trainers import make_trainer
from lightning.pytorch.callbacks import BackboneFinetuning, ModelCheckpoint
from torch import nn

from lightning_ranger import RAdam
from lightning_ranger.callbacks.lookahead import Lookahead

# 5 steps per epoch, k=3: syncs after steps 3, 6, 9, 12 and 15. `inp` is frozen in epoch 0 and
# trainable from epoch 1 (step 6) on, so the sync after step 6 takes it up.
K, EPOCHS = 3, 3
INP = ["net.layers.inp.weight", "net.layers.inp.bias"]
pytestmark = pytest.mark.filterwarnings("ignore:.*dirpath has changed")


class UnfreezeNet(Net):
    """``Net`` whose ``inp`` layer is frozen in epoch 0 and trainable from epoch 1 on; its RAdam
    holds every parameter (frozen ones get no gradient and do not move)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(
            optimizer="radam", frozen=("layers.inp.weight", "layers.inp.bias"), **kwargs
        )

    def on_train_epoch_start(self) -> None:
        for p in self.net.layers["inp"].parameters():
            p.requires_grad_(self.current_epoch >= 1)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return RAdam(self.parameters(), lr=self.hparams.lr)


def _fit(tmp_path: Path, name: str, max_epochs: int, ckpt_path: Any = None) -> tuple[Any, Any]:
    model = UnfreezeNet(seed=7 if ckpt_path else 0)
    lookahead = Lookahead(k=K, alpha=0.5, final_weights="fast")
    checkpoint = ModelCheckpoint(dirpath=tmp_path / name, save_top_k=-1, every_n_epochs=1)
    trainer = make_trainer(
        tmp_path / name, [lookahead, checkpoint], max_epochs=max_epochs, enable_checkpointing=True
    )
    trainer.fit(model, ckpt_path=ckpt_path)
    return fast_and_slow(lookahead, model)


def test_a_parameter_unfrozen_after_the_start_is_tracked_from_the_next_sync(
    tmp_path: Path,
) -> None:
    with pytest.warns(
        UserWarning,
        match=r"2 parameters became trainable since fit started and are tracked from step 6 on.*"
        + r"\['net.layers.inp.weight', 'net.layers.inp.bias'\]",
    ):
        fast, slow = _fit(tmp_path, "full", EPOCHS)

    net = TinyNet()
    for p in net.layers["inp"].parameters():
        p.requires_grad_(False)

    def before_epoch(epoch: int) -> None:
        for p in net.layers["inp"].parameters():
            p.requires_grad_(epoch >= 1)

    ref_fast, ref_slow = tiny_lookahead_reference(
        net, epochs=EPOCHS, k=K, before_epoch=before_epoch
    )
    assert_close(fast, ref_fast, atol=1e-6)
    assert_close(slow, ref_slow, atol=1e-6)
    assert not torch.equal(fast[INP[0]], TinyNet().layers["inp"].weight)  # it did train
    names = torch.load(tmp_path / "full" / "epoch=2-step=15.ckpt", weights_only=True)["callbacks"]
    assert names["Lookahead"]["names"][-2:] == INP


@pytest.mark.filterwarnings("ignore:.*became trainable since fit started")
@pytest.mark.parametrize(
    ("checkpoint", "tracked"),
    [("epoch=0-step=5.ckpt", False), ("epoch=1-step=10.ckpt", True)],
    ids=["before the unfreeze", "after it"],
)
def test_resume_across_an_unfreeze_is_exact(tmp_path: Path, checkpoint: str, tracked: bool) -> None:
    fast, slow = _fit(tmp_path, "full", EPOCHS)
    _fit(tmp_path, "first", 2)
    ckpt = tmp_path / "first" / checkpoint
    names = torch.load(ckpt, weights_only=True)["callbacks"]["Lookahead"]["names"]
    assert (INP[0] in names) == tracked
    resumed_fast, resumed_slow = _fit(tmp_path, "resumed", EPOCHS, ckpt_path=ckpt)
    assert_equal(resumed_fast, fast)
    assert_equal(resumed_slow, slow)


class BackboneNet(Net):
    """``Net``'s layers as the ``backbone`` (``inp``) and ``head`` (``out``) that
    ``BackboneFinetuning`` expects; its RAdam holds the trainable parameters, and
    ``BackboneFinetuning`` adds the backbone's as a param group when it unfreezes it."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(optimizer="radam", **kwargs)
        self.backbone: nn.Module = self.net.layers["inp"]
        self.head: nn.Module = self.net.layers["out"]
        del self.net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.backbone(x)))


def _finetune(
    tmp_path: Path, lookahead: bool, max_epochs: int, ckpt_path: Any = None
) -> dict[str, torch.Tensor]:
    callbacks: list[Any] = [
        BackboneFinetuning(unfreeze_backbone_at_epoch=1, backbone_initial_ratio_lr=0.5),
        ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, every_n_epochs=1),
    ]
    if lookahead:
        callbacks.insert(0, Lookahead(k=K, alpha=0.5))
    model = BackboneNet()
    trainer = make_trainer(tmp_path, callbacks, max_epochs=max_epochs, enable_checkpointing=True)
    trainer.fit(model, ckpt_path=ckpt_path)
    return params(model)


@pytest.mark.filterwarnings("ignore:.*became trainable since fit started")
def test_backbone_finetuning_resume_is_no_worse_than_lightnings_own(tmp_path: Path) -> None:
    differences = {}
    for lookahead in (False, True):
        run = tmp_path / str(lookahead)
        uninterrupted = _finetune(run / "full", lookahead, EPOCHS)
        # Resumed before the unfreeze: both Lightning and Lookahead are exact.
        _finetune(run / "first", lookahead, 2)
        resumed = _finetune(
            run / "early", lookahead, EPOCHS, ckpt_path=run / "first" / "epoch=0-step=5.ckpt"
        )
        assert_equal(resumed, uninterrupted)
        # Resumed after it: Lightning's BackboneFinetuning restores the backbone's param group
        # but leaves the backbone frozen, so the run goes on without training it.
        late = run / "first" / "epoch=1-step=10.ckpt"
        if lookahead:
            with pytest.warns(
                UserWarning,
                match=r"2 parameters were trainable when the checkpoint was written and have "
                r"`requires_grad=False` now.*\['backbone.weight', 'backbone.bias'\]",
            ):
                resumed = _finetune(run / "late", lookahead, EPOCHS, ckpt_path=late)
        else:
            resumed = _finetune(run / "late", lookahead, EPOCHS, ckpt_path=late)
        differences[lookahead] = max(
            (resumed[n] - uninterrupted[n]).abs().max().item() for n in resumed
        )
    assert differences[False] > 1e-3  # Lightning's own resume is not exact here
    assert differences[True] <= 2 * differences[False], differences
