"""Lookahead with tied weights: a language model whose output layer shares the embedding's weight.
Both state-dict keys of the shared tensor hold the slow weights in the checkpoint, so loading it
(``load_from_checkpoint``, ``trainer.test(ckpt_path=...)``) gives the slow weights; resuming is
exact."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from helpers.asserts import assert_equal, fast_and_slow
from helpers.models import TiedLM
from helpers.trainers import fit_lookahead, make_trainer

from lightning_ranger.callbacks.lookahead import FAST_WEIGHTS_KEY

CKPT = "epoch=0-step=5.ckpt"  # 5 steps, k=3: 2 steps after the last sync
pytestmark = pytest.mark.filterwarnings("ignore:.*dirpath has changed")


def _fit(tmp_path: Path, name: str, max_epochs: int, ckpt_path: Any = None) -> tuple[dict, dict]:
    model = TiedLM(seed=7 if ckpt_path else 0)
    _, lookahead = fit_lookahead(tmp_path, name, model, max_epochs, ckpt_path)
    assert model.out.weight is model.emb.weight
    return fast_and_slow(lookahead, model)


def test_every_key_of_a_tied_weight_holds_the_slow_weights(tmp_path: Path) -> None:
    fast, slow = _fit(tmp_path, "run", 1)
    assert list(slow) == ["emb.weight", "mix.weight", "mix.bias"]
    assert not torch.equal(fast["emb.weight"], slow["emb.weight"])
    checkpoint = torch.load(tmp_path / "run" / CKPT, weights_only=True)
    state_dict = checkpoint["state_dict"]
    assert torch.equal(state_dict["out.weight"], state_dict["emb.weight"])
    assert_equal({n: state_dict[n] for n in slow}, slow)
    assert_equal(checkpoint[FAST_WEIGHTS_KEY], fast)

    loaded = TiedLM.load_from_checkpoint(tmp_path / "run" / CKPT)
    assert loaded.out.weight is loaded.emb.weight
    assert_equal({n: p.detach() for n, p in loaded.named_parameters()}, slow)


def test_trainer_test_from_the_checkpoint_evaluates_the_slow_weights(tmp_path: Path) -> None:
    _, slow = _fit(tmp_path, "run", 1)
    tested = make_trainer(tmp_path, []).test(TiedLM(seed=7), ckpt_path=tmp_path / "run" / CKPT)

    expected = TiedLM(seed=7)
    expected.load_state_dict({**slow, "out.weight": slow["emb.weight"]})
    with torch.no_grad():
        loss = expected.loss(next(iter(expected.test_dataloader())))
    assert tested[0]["test_loss"] == pytest.approx(loss.item(), abs=1e-6)


def test_resume_with_a_tied_weight_is_bit_exact(tmp_path: Path) -> None:
    fast, slow = _fit(tmp_path, "full", 3)
    _fit(tmp_path, "first", 1)
    resumed_fast, resumed_slow = _fit(tmp_path, "resumed", 3, ckpt_path=tmp_path / "first" / CKPT)
    assert_equal(resumed_fast, fast)
    assert_equal(resumed_slow, slow)
