"""Which per-parameter state keys an optimizer keeps, told before its first step. Plain PyTorch."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch.optim import Optimizer

from lightning_ranger.optim.lookahead import local_tensor

__all__ = ["state_keys"]


def state_keys(optimizer: Optimizer, ignore: Iterable[str] = ()) -> set[str] | None:
    """The per-parameter state keys that ``optimizer`` keeps (less those in ``ignore``): those of
    its state, or, before its first step, those of one step of a copy of it (built from its
    ``defaults``) on a one-element parameter; ``None`` if that cannot be told.

    Example::

        >>> sorted(state_keys(torch.optim.Adam([torch.zeros(2, requires_grad=True)])))
        ['exp_avg', 'exp_avg_sq', 'step']

    """
    for entry in optimizer.state.values():
        if entry:
            return set(entry) - set(ignore)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if not params:
        return None
    like = local_tensor(params[0])
    probe = torch.zeros(1, dtype=like.dtype, device=like.device, requires_grad=True)
    probe.grad = torch.zeros_like(probe)
    try:
        other = type(optimizer)([probe], **optimizer.defaults)
        other.step()
    except Exception:  # an optimizer that cannot be built from its defaults
        return None
    return set(other.state[probe]) - set(ignore) or None
