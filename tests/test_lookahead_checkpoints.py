"""Lookahead's checkpoints on a single device: the layout, bit-exact resumes mid-cycle and after
``fit``, resumes keyed by parameter name, from checkpoints written without Lookahead or with
other parameters, and their error messages."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from helpers.asserts import assert_close, assert_equal, assert_same_state, fast_and_slow, params
from helpers.models import Net, TinyNet, make_optimizer
from helpers.references import tiny_lookahead_reference
from helpers.trainers import fit_lookahead, lookahead_state, make_trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_ranger.callbacks._slow_weights import mismatch_message
from lightning_ranger.callbacks.lookahead import FAST_WEIGHTS_KEY, Lookahead


def test_resume_mid_cycle_is_bit_exact(tmp_path: Path) -> None:
    trainer, lookahead = fit_lookahead(tmp_path, "full", Net("radam"), max_epochs=3)
    uninterrupted = lookahead_state(trainer, lookahead, trainer.lightning_module)

    fit_lookahead(tmp_path, "first", Net("radam"), max_epochs=1)
    ckpt = tmp_path / "first" / "epoch=0-step=5.ckpt"
    checkpoint = torch.load(ckpt, weights_only=False)
    assert checkpoint["callbacks"]["Lookahead"]["synced_at_step"] == 3  # 2 steps into the cycle

    # A fresh module with other initial weights: everything must come from the checkpoint.
    resumed_model = Net("radam", seed=7)
    trainer, lookahead = fit_lookahead(
        tmp_path, "resumed", resumed_model, max_epochs=3, ckpt_path=ckpt
    )
    assert_same_state(lookahead_state(trainer, lookahead, resumed_model), uninterrupted)


def test_checkpoint_layout_and_load_from_checkpoint(tmp_path: Path) -> None:
    trainer, lookahead = fit_lookahead(tmp_path, "run", Net("radam"), max_epochs=1)
    fast, slow = fast_and_slow(lookahead, trainer.lightning_module)
    checkpoint = torch.load(tmp_path / "run" / "epoch=0-step=5.ckpt", weights_only=False)
    assert_equal({n: checkpoint["state_dict"][n] for n in slow}, slow)
    assert_equal(checkpoint[FAST_WEIGHTS_KEY], fast)
    assert not torch.equal(slow["net.layers.out.weight"], fast["net.layers.out.weight"])
    deployed = Net.load_from_checkpoint(tmp_path / "run" / "epoch=0-step=5.ckpt")
    assert_equal(params(deployed), slow)


@pytest.mark.parametrize("final_weights", ["slow", "fast"])
def test_checkpoint_saved_after_fit_resumes_the_same(tmp_path: Path, final_weights: str) -> None:
    trainer, lookahead = fit_lookahead(tmp_path, "full", Net("radam"), max_epochs=3)
    uninterrupted = lookahead_state(trainer, lookahead, trainer.lightning_module)

    trainer, _ = fit_lookahead(
        tmp_path, "first", Net("radam"), max_epochs=1, final_weights=final_weights
    )
    trainer.save_checkpoint(tmp_path / "after_fit.ckpt")
    resumed_model = Net("radam", seed=7)
    trainer, lookahead = fit_lookahead(
        tmp_path, "resumed", resumed_model, max_epochs=3, ckpt_path=tmp_path / "after_fit.ckpt"
    )
    assert_same_state(lookahead_state(trainer, lookahead, resumed_model), uninterrupted)


def test_resume_is_keyed_by_name_not_by_position(tmp_path: Path) -> None:
    # Stateless SGD, so that the optimizer state (saved by position) plays no part.
    trainer, lookahead = fit_lookahead(tmp_path, "full", Net("plain_sgd"), max_epochs=3)
    uninterrupted = lookahead_state(trainer, lookahead, trainer.lightning_module)
    fit_lookahead(tmp_path, "first", Net("plain_sgd"), max_epochs=1)

    reordered = Net("plain_sgd", reorder=True, seed=7)
    assert [n for n, _ in reordered.named_parameters()] != list(uninterrupted["fast"])
    ckpt = tmp_path / "first" / "epoch=0-step=5.ckpt"
    trainer, lookahead = fit_lookahead(tmp_path, "resumed", reordered, max_epochs=3, ckpt_path=ckpt)
    resumed = lookahead_state(trainer, lookahead, reordered)
    assert_equal(resumed["fast"], uninterrupted["fast"])
    assert_equal(resumed["slow"], uninterrupted["slow"])


class _EveryParameterNet(Net):
    """``Net`` whose optimizer holds every parameter, frozen ones too (SGD skips those)."""

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return make_optimizer(self.hparams.optimizer, self.parameters(), self.hparams.lr)


def test_resume_with_a_parameter_frozen_since_warns_and_keeps_it_tracked(tmp_path: Path) -> None:
    fit_lookahead(tmp_path, "first", _EveryParameterNet("plain_sgd"), max_epochs=1)
    ckpt = tmp_path / "first" / "epoch=0-step=5.ckpt"
    frozen = _EveryParameterNet("plain_sgd", frozen=("layers.out.bias",))
    with pytest.warns(
        UserWarning,
        match=r"1 parameters were trainable when the checkpoint was written and have "
        r"`requires_grad=False` now; they stay tracked.*\['net.layers.out.bias'\]",
    ):
        _, lookahead = fit_lookahead(tmp_path, "resumed", frozen, max_epochs=2, ckpt_path=ckpt)
    # Tracked from the checkpoint: the sync at step 6 moved the frozen bias to its slow weights.
    fast, slow = fast_and_slow(lookahead, frozen)
    assert torch.equal(fast["net.layers.out.bias"], slow["net.layers.out.bias"])
    checkpoint = torch.load(tmp_path / "resumed" / "epoch=1-step=10.ckpt", weights_only=True)
    assert "net.layers.out.bias" in checkpoint["callbacks"]["Lookahead"]["names"]


class _RenamedNet(Net):
    """``Net`` with its layers under ``body`` instead of ``net``."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.body = self.net
        del self.net
        self.strict_loading = False  # so that Lightning loads the checkpoint and Lookahead sees it

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def test_resume_into_a_module_without_the_checkpoints_parameters_fails_clearly(
    tmp_path: Path,
) -> None:
    fit_lookahead(tmp_path, "first", Net("plain_sgd", frozen=("layers.out.bias",)), max_epochs=1)
    ckpt = tmp_path / "first" / "epoch=0-step=5.ckpt"
    with pytest.raises(
        ValueError,
        match=r"holds Lookahead weights of parameters that the module does not have .*: "
        r"in the checkpoint but not in the module: \['net.layers.inp.weight', "
        r"'net.layers.inp.bias', 'net.layers.out.weight'\]; in the module but not in the "
        r"checkpoint: \['body.layers.inp.weight', 'body.layers.inp.bias', "
        r"'body.layers.out.weight', 'body.layers.out.bias'\]",
    ):
        fit_lookahead(
            tmp_path, "resumed", _RenamedNet(optimizer="plain_sgd"), max_epochs=2, ckpt_path=ckpt
        )


def test_mismatch_message_labels_each_side() -> None:
    assert mismatch_message(["a", "b"], ["b", "a"]) is None
    assert mismatch_message(["a", "gate"], ["a", "new"]) == (
        "in the checkpoint but not in the module: ['gate']; "
        "in the module but not in the checkpoint: ['new']"
    )


def test_resume_from_a_weights_only_checkpoint_gets_lightnings_message(tmp_path: Path) -> None:
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "weights", save_weights_only=True)
    trainer = make_trainer(
        tmp_path, [Lookahead(k=3), checkpoint], max_epochs=1, enable_checkpointing=True
    )
    with pytest.warns(UserWarning, match=r"save_weights_only=True"):
        trainer.fit(Net("plain_sgd"))
    trainer = make_trainer(tmp_path, [Lookahead(k=3)], max_epochs=2)
    with pytest.raises(KeyError, match=r"checkpoint contains only the model.*save_weights_only"):
        trainer.fit(Net("plain_sgd"), ckpt_path=checkpoint.best_model_path)


def test_resume_from_a_checkpoint_without_lookahead_starts_from_its_weights(tmp_path: Path) -> None:
    first = make_trainer(tmp_path / "plain", [], max_epochs=1)
    first.fit(Net("plain_sgd"))
    first.save_checkpoint(tmp_path / "plain.ckpt")
    start = params(first.lightning_module)

    lookahead = Lookahead(k=3, final_weights="fast")
    trainer = make_trainer(tmp_path, [lookahead], max_epochs=2)
    model = Net("plain_sgd", seed=7)
    trainer.fit(model, ckpt_path=tmp_path / "plain.ckpt")

    net = TinyNet()
    net.load_state_dict({n[len("net.") :]: t for n, t in start.items()})
    # The reference starts at step 5 with a fresh cycle: 5 more steps, one sync after 3.
    ref_fast, ref_slow = tiny_lookahead_reference(net, "plain_sgd", epochs=1, k=3)
    fast, slow = fast_and_slow(lookahead, model)
    assert_close(fast, ref_fast, atol=1e-6)
    assert_close(slow, ref_slow, atol=1e-6)
