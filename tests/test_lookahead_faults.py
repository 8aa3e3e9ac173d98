"""Lookahead with a NaN gradient (single device): the fast weights restart from the slow ones, as a
hand-written loop does; the restore count is logged and resumes; ``on_nonfinite="raise"``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from helpers.asserts import assert_close, assert_equal, fast_and_slow
from helpers.models import NaNGradientNet, TinyNet
from helpers.references import tiny_lookahead_reference
from helpers.trainers import make_trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import Logger
from typing_extensions import override

from lightning_ranger.callbacks.lookahead import RESTORES_METRIC, Lookahead

# 5 batches of 4 per epoch, 3 epochs: 15 RAdam steps. With k=4 the syncs come after steps 4, 8
# and 12; the NaN gradient of step 6 makes `out.bias` NaN (and, through the loss, every parameter
# at step 7), and the sync after step 8 restores.
K, EPOCHS, NAN_AT_STEP = 4, 3, 6


class _Recorder(Logger):
    """A logger that keeps what ``log_metrics`` gets."""

    def __init__(self) -> None:
        super().__init__()
        self.logged: list[tuple[int | None, dict[str, float]]] = []

    @property
    @override
    def name(self) -> str:
        return "recorder"

    @property
    @override
    def version(self) -> int:
        return 0

    @override
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    @override
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.logged.append((step, dict(metrics)))


def _reference() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    return tiny_lookahead_reference(TinyNet(), epochs=EPOCHS, k=K, nan_at_step=NAN_AT_STEP)


def test_a_nan_gradient_restores_the_fast_weights_as_a_hand_loop_does(tmp_path: Path) -> None:
    model = NaNGradientNet(nan_at_step=NAN_AT_STEP, optimizer="radam")
    lookahead = Lookahead(k=K, alpha=0.5, final_weights="fast")
    recorder = _Recorder()
    trainer = make_trainer(tmp_path, [lookahead], max_epochs=EPOCHS, logger=recorder)
    with pytest.warns(
        UserWarning,
        match=r"NaN or infinite fast weight in parameter 'net.layers.inp.weight' at step 8: the "
        r"fast weights restart from the slow weights of step 4 .*\(restores so far: 1\)",
    ):
        trainer.fit(model)
    fast, slow = fast_and_slow(lookahead, model)
    ref_fast, ref_slow = _reference()
    assert all(torch.isfinite(t).all() for t in ref_fast.values())
    assert_close(fast, ref_fast, atol=1e-6)
    assert_close(slow, ref_slow, atol=1e-6)
    assert lookahead.restores == 1
    assert [(s, m) for s, m in recorder.logged if RESTORES_METRIC in m] == [
        (8, {RESTORES_METRIC: 1.0})
    ]
    # The optimizer restarted after step 8: 7 more steps, not 15.
    state = trainer.optimizers[0].state
    assert {int(s["step"]) for s in state.values()} == {7}


def _fit(
    tmp_path: Path, name: str, max_epochs: int, ckpt_path: Any = None
) -> tuple[Any, Lookahead, NaNGradientNet]:
    model = NaNGradientNet(nan_at_step=NAN_AT_STEP, optimizer="radam", seed=7 if ckpt_path else 0)
    lookahead = Lookahead(k=K, alpha=0.5, final_weights="fast")
    checkpoint = ModelCheckpoint(dirpath=tmp_path / name, save_top_k=-1, every_n_epochs=1)
    trainer = make_trainer(
        tmp_path / name,
        [lookahead, checkpoint],
        max_epochs=max_epochs,
        enable_checkpointing=True,
    )
    trainer.fit(model, ckpt_path=ckpt_path)
    return trainer, lookahead, model


@pytest.mark.filterwarnings("ignore:.*NaN or infinite fast weight")
@pytest.mark.filterwarnings("ignore:.*dirpath has changed")
def test_a_checkpoint_after_a_restore_resumes_exactly(tmp_path: Path) -> None:
    trainer, lookahead, model = _fit(tmp_path, "full", EPOCHS)
    uninterrupted = (*fast_and_slow(lookahead, model), trainer.optimizers[0].state_dict())

    # Epoch 1 ends at step 10: after the restore at step 8, 2 steps into the next cycle.
    _fit(tmp_path, "first", 2)
    ckpt = tmp_path / "first" / "epoch=1-step=10.ckpt"
    state = torch.load(ckpt, weights_only=True)["callbacks"]["Lookahead"]
    assert state["synced_at_step"] == 8 and state["restores"] == 1

    trainer, lookahead, model = _fit(tmp_path, "resumed", EPOCHS, ckpt_path=ckpt)
    assert lookahead.restores == 1
    fast, slow = fast_and_slow(lookahead, model)
    assert_equal(fast, uninterrupted[0])
    assert_equal(slow, uninterrupted[1])
    for key, value in trainer.optimizers[0].state_dict()["state"].items():
        assert_equal(value, uninterrupted[2]["state"][key])


def test_on_nonfinite_raise_names_the_parameter_and_the_step(tmp_path: Path) -> None:
    # A NaN gradient at the step before the sync: only `out.bias` is NaN there, not the first.
    model = NaNGradientNet(nan_at_step=8, optimizer="radam")
    trainer = make_trainer(tmp_path, [Lookahead(k=K, on_nonfinite="raise")], max_epochs=EPOCHS)
    with pytest.raises(
        FloatingPointError,
        match=r"NaN or infinite fast weight in parameter 'net.layers.out.bias' at step 8 "
        r"\(`on_nonfinite='raise'`\)",
    ):
        trainer.fit(model)


@pytest.mark.parametrize(
    ("value", "error"), [("ignore", ValueError), ("RESTORE", ValueError), (None, TypeError)]
)
def test_on_nonfinite_takes_restore_or_raise(value: Any, error: type[Exception]) -> None:
    with pytest.raises(
        error, match=rf"`on_nonfinite` must be one of 'restore', 'raise', got {value!r}"
    ):
        Lookahead(on_nonfinite=value)
