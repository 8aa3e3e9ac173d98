"""Comparisons of named tensors (parameters, fast and slow weights) and of resumed states."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn


def params(module: nn.Module) -> dict[str, Tensor]:
    """Detached copies of the parameters, by name."""
    return {n: p.detach().clone() for n, p in module.named_parameters()}


def fast_and_slow(lookahead: Any, model: nn.Module) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Copies of the module's fast and slow weights by name, while it holds the fast ones (after a
    ``final_weights="fast"`` fit); it holds the same fast weights afterwards."""
    fast = params(model)
    assert lookahead.show_slow_weights()
    slow = params(model)
    lookahead.show_fast_weights()
    assert_equal(params(model), fast)
    return fast, slow


def assert_close(actual: dict[str, Tensor], expected: dict[str, Tensor], atol: float) -> None:
    assert actual.keys() == expected.keys()
    for name in actual:
        diff = (actual[name].double() - expected[name].double()).abs().max().item()
        assert diff <= atol, f"{name}: max abs difference {diff} > {atol}"


def assert_equal(actual: dict[str, Tensor], expected: dict[str, Tensor]) -> None:
    assert actual.keys() == expected.keys()
    for name in actual:
        assert torch.equal(actual[name], expected[name]), name


def assert_same_state(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a["step"] == b["step"]
    assert_equal(a["fast"], b["fast"])
    assert_equal(a["slow"], b["slow"])
    for key, state in a["optimizer"].items():
        assert_equal(state, b["optimizer"][key])
