"""Validation loss and accuracy on the line from Lookahead's slow weights to its fast weights."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import nn
from typing_extensions import override

from lightning_ranger.callbacks import Lookahead


@dataclass(frozen=True)
class LineScan:
    """The validation metrics at ``slow + a (fast - slow)`` for each ``a`` in ``alphas``, taken
    just before Lookahead's ``sync``-th sync (at optimizer step ``sync * k``)."""

    sync: int
    step: int
    alphas: list[float]
    val_loss: list[float]
    val_acc: list[float]


class LookaheadLine(Callback):
    """Scan the line from the slow to the fast weights just before chosen Lookahead syncs, as in
    figure 2 of the Lookahead paper (Zhang et al., 2019): when the inner optimizer has taken its
    ``k`` steps and before the slow weights move ``alpha`` of the way to the fast ones.

    Put it in ``Trainer(callbacks=...)``: callbacks that a module's ``configure_callbacks`` adds
    (the ``Lookahead`` of a ``RangerMixin`` module) run after the Trainer's, so at the end of the
    ``k``-th step this callback still sees the fast weights away from the slow ones. It assumes one
    optimizer step per batch, and restores the fast weights and the global random state after each
    scan, so the run trains exactly as without it.

    Args:
        syncs: which syncs to scan (1 is the first, at optimizer step ``k``).
        points: number of evenly spaced ``a`` in ``[0, 1]``.

    Raises:
        RuntimeError: if the trainer has no ``Lookahead``, or the slow weights already equal the
            fast ones at a scan (the sync ran first).

    """

    def __init__(self, syncs: Sequence[int], points: int = 11) -> None:
        self.syncs = set(syncs)
        self.alphas = torch.linspace(0.0, 1.0, points).tolist()
        self.scans: list[LineScan] = []

    @override
    def on_train_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        lookaheads = [cb for cb in trainer.callbacks if isinstance(cb, Lookahead)]  # type: ignore[attr-defined]
        if not lookaheads:
            raise RuntimeError("`LookaheadLine` needs a `Lookahead` callback")
        k, step = lookaheads[0].k, trainer.global_step
        if step % k or step // k not in self.syncs:
            return
        params = [p for p in pl_module.parameters() if p.requires_grad]
        # A DataLoader draws its base seed from the global generator: keep the run's batches.
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            fast = [p.detach().clone() for p in params]
            lookaheads[0].show_slow_weights()
            slow = [p.detach().clone() for p in params]
            lookaheads[0].show_fast_weights()
            if all(torch.equal(s, f) for s, f in zip(slow, fast, strict=True)):
                raise RuntimeError("the Lookahead sync ran before `LookaheadLine`")
            losses, accuracies = [], []
            for a in self.alphas:
                for p, s, f in zip(params, slow, fast, strict=True):
                    torch.lerp(s, f, a, out=p)
                loss, acc = _evaluate(pl_module, trainer.datamodule.val_dataloader())  # type: ignore[attr-defined]
                losses.append(loss)
                accuracies.append(acc)
            for p, f in zip(params, fast, strict=True):
                p.copy_(f)
        self.scans.append(LineScan(step // k, step, self.alphas, losses, accuracies))


def _evaluate(module: LightningModule, loader: Any) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of a classifier over ``loader``, in eval mode."""
    was_training = module.training
    module.eval()
    loss, correct, count = 0.0, 0, 0
    for x, y in loader:
        logits = module(x.to(module.device))
        y = y.to(module.device)
        loss += nn.functional.cross_entropy(logits, y, reduction="sum").item()
        correct += int((logits.argmax(dim=1) == y).sum())
        count += len(y)
    module.train(was_training)
    return loss / count, correct / count
