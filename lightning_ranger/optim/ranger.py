"""Ranger: :class:`~lightning_ranger.optim.lookahead_optimizer.Lookahead` around
:class:`~lightning_ranger.optim.radam.RAdam`, one optimizer for plain PyTorch and Fabric loops."""

from __future__ import annotations

from typing import Any, Literal

from torch import Tensor

from lightning_ranger.optim.lookahead_optimizer import Lookahead
from lightning_ranger.optim.radam import ParamsT, RAdam

__all__ = ["Ranger"]


class Ranger(Lookahead):
    """RAdam wrapped in Lookahead: ``Lookahead(RAdam(params, lr, betas, eps, weight_decay,
    **radam_options), k, alpha, on_nonfinite)``, equal to it bit for bit.

    RAdam's rectification removes the need for a warmup; Lookahead's slow weights make the run
    less sensitive to the learning rate. Inside a Lightning ``Trainer`` use
    :class:`~lightning_ranger.RAdam` with the
    :class:`~lightning_ranger.callbacks.lookahead.Lookahead` callback instead (or
    ``RangerMixin``).

    Args:
        params: the parameters or param groups, as for any optimizer (``named_parameters()`` too).
        lr: learning rate. Default: ``1e-3``.
        betas: RAdam's moment coefficients. Default: ``(0.9, 0.999)``.
        eps: added to the denominator. Default: ``1e-8``.
        weight_decay: L2 penalty (decoupled with ``decoupled_weight_decay=True``). Default: ``0``.
        k: steps between syncs of the slow weights. Default: ``6``.
        alpha: slow-weight step size, in ``(0, 1]``. Default: ``0.5``.
        on_nonfinite: ``"restore"`` or ``"raise"``, as :class:`Lookahead`'s. Default:
            ``"restore"``.
        **radam_options: RAdam's other keyword arguments (``rectify_threshold``,
            ``degenerate_to_sgd``, ``decoupled_weight_decay``, ``foreach``, ``fused``, ...).

    Raises:
        TypeError, ValueError: as :class:`~lightning_ranger.optim.radam.RAdam` and
            :class:`Lookahead` raise for their arguments.

    Example::

        >>> import torch
        >>> model = torch.nn.Linear(4, 1)
        >>> optimizer = Ranger(model.parameters(), lr=1e-2)
        >>> model(torch.randn(8, 4)).square().mean().backward()
        >>> optimizer.step()

    """

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        k: int = 6,
        alpha: float = 0.5,
        on_nonfinite: Literal["restore", "raise"] = "restore",
        **radam_options: Any,
    ) -> None:
        radam = RAdam(
            params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, **radam_options
        )
        super().__init__(radam, k=k, alpha=alpha, on_nonfinite=on_nonfinite)

    def __repr__(self) -> str:
        return f"Ranger(k={self.k}, alpha={self.alpha}, optimizer={self.optimizer!r})"
