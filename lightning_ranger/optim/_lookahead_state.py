"""How :class:`~lightning_ranger.optim.Lookahead` keeps its slow weights and cycle position in an
optimizer state dict, in the keys of timm's ``Lookahead`` so that state dicts load both ways.
Plain PyTorch."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from lightning_ranger.optim._state_keys import state_keys
from lightning_ranger.optim.lookahead import local_tensor
from lightning_ranger.optim.slow_copies import SlowCopies

__all__ = ["SLOW_KEY", "STEP_KEY", "copies_from", "split_state_dict", "with_slow_weights"]

#: The per-parameter state entry of the slow weights (timm's name).
SLOW_KEY = "lookahead_slow_buff"
#: The param-group key that counts the steps taken (timm's name); a sync follows every ``k``-th.
STEP_KEY = "lookahead_step"
#: timm's param-group keys for what the wrapper keeps as attributes.
_TIMM_KEYS = {"lookahead_k": "k", "lookahead_alpha": "alpha"}


def with_slow_weights(
    state_dict: dict[str, Any], params: Sequence[Tensor], copies: SlowCopies | None
) -> dict[str, Any]:
    """``state_dict`` (the inner optimizer's, over ``params`` in the order of its groups) with the
    slow weights of ``copies`` under :data:`SLOW_KEY` in each parameter's state."""
    if copies is not None:
        index = {id(p): i for i, p in enumerate(params)}
        for param, slow in zip(copies.params, copies.slow, strict=True):
            state_dict["state"].setdefault(index[id(param)], {})[SLOW_KEY] = slow
    return state_dict


def split_state_dict(
    state_dict: dict[str, Any], inner: Optimizer, k: int, alpha: float
) -> tuple[dict[str, Any], dict[int, Tensor]]:
    """The inner optimizer's part of a Lookahead ``state_dict`` (without the slow weights and
    timm's ``lookahead_k``/``lookahead_alpha``), and the slow weights by the parameters' position.

    Raises:
        ValueError: if a parameter's state holds other keys than ``inner`` keeps, or timm's keys
            differ from ``k`` and ``alpha``.

    """
    state = {i: dict(s) for i, s in state_dict["state"].items()}
    slow = {i: s.pop(SLOW_KEY) for i, s in state.items() if SLOW_KEY in s}
    groups = [dict(g) for g in state_dict["param_groups"]]
    mine = {"k": k, "alpha": alpha}
    for group in groups:
        for key, attribute in _TIMM_KEYS.items():
            saved = group.pop(key, mine[attribute])
            if saved != mine[attribute]:
                raise ValueError(
                    f"The state dict was saved with `{key}={saved}`; this Lookahead has "
                    f"`{attribute}={mine[attribute]}`"
                )
    _check_state_keys(state, inner)
    # The saved groups list the state's keys (indices, or names from torch's distributed
    # checkpoint helpers) in the order of the parameters.
    order = {key: i for i, key in enumerate(key for g in groups for key in g["params"])}
    nonempty = {i: s for i, s in state.items() if s}
    inner_state = {**state_dict, "state": nonempty, "param_groups": groups}
    return inner_state, {order[key]: t for key, t in slow.items()}


@torch.no_grad()
def copies_from(slow: dict[int, Tensor], params: Sequence[Tensor]) -> SlowCopies | None:
    """Slow copies of ``params`` from ``slow`` (by the parameters' position), in their own dtype
    and placement; parameters without an entry start from their values; ``None`` if ``slow`` is
    empty."""
    if not slow:
        return None
    copies = SlowCopies(params)
    for i, saved in slow.items():
        target = local_tensor(copies.slow[i])
        target.copy_(local_tensor(saved).to(device=target.device))
    return copies


def _check_state_keys(state: dict[Any, dict[str, Any]], inner: Optimizer) -> None:
    expected = state_keys(inner, ignore=(SLOW_KEY,))
    if expected is None:
        return
    for entry in state.values():
        if entry and set(entry) != expected:
            raise ValueError(
                f"`state_dict` holds per-parameter state with keys {sorted(entry)}, where "
                f"{type(inner).__name__} keeps {sorted(expected)}: it was saved by another kind "
                "of optimizer"
            )
