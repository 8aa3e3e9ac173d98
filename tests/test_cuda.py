"""The CUDA paths, for a machine with a GPU: RAdam's three implementations against the float64
Algorithm 2, Gradient Centralization, and Lookahead's exact resume in the GPU precisions (16-mixed
with a real GradScaler, bf16-mixed).

Skipped without CUDA; not yet run on a GPU. They check the CUDA cells of the strategy matrix
(docs/strategies.md): ``python -m pytest -m cuda`` on a machine with a GPU.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _lookahead_helpers import Net
from test_gradient_centralization import _gradients, centralized
from test_lookahead import _assert_same_state, _run, _state
from test_radam_numerics import IMPLEMENTATIONS, _grads, _params, _reference

from lightning_ranger import RAdam
from lightning_ranger.callbacks.gradient_centralization import centralize_gradients

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

CUDA = torch.device("cuda")


def _run_on_cuda(params: list[torch.Tensor], grad_seq: list, **options: object) -> list:
    """RAdam on CUDA copies of ``params`` over ``grad_seq``; the final parameters in float64."""
    copies = [p.detach().to(CUDA, copy=True).requires_grad_() for p in params]
    optimizer = RAdam(copies, **options)
    for grads in grad_seq:
        for p, g in zip(copies, grads, strict=True):
            p.grad = g.to(CUDA, p.dtype)
        optimizer.step()
    return [p.detach().double().cpu() for p in copies]


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize(
    ("dtype", "rtol", "atol"),
    [(torch.float64, 1e-10, 1e-12), (torch.float32, 1e-5, 1e-6)],
    ids=["float64", "float32"],
)
@pytest.mark.parametrize("weight_decay", ["none", "l2", "decoupled"])
def test_radam_on_cuda_matches_float64_algorithm_2(
    impl: str, dtype: torch.dtype, rtol: float, atol: float, weight_decay: str
) -> None:
    options = {
        "lr": 3e-2,
        "betas": (0.9, 0.8),  # rectified from step 4 on: both phases in 25 steps
        "weight_decay": 0.0 if weight_decay == "none" else 0.1,
        "decoupled_weight_decay": weight_decay == "decoupled",
    }
    params = _params()
    grad_seq = _grads(params, steps=25)
    actual = _run_on_cuda(
        [p.to(dtype) for p in params], grad_seq, **options, **IMPLEMENTATIONS[impl]
    )
    expected = _reference([p.to(dtype).double() for p in params], grad_seq, **options)
    for a, e in zip(actual, expected, strict=True):
        torch.testing.assert_close(a, e, rtol=rtol, atol=atol)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_radam_on_cuda_in_half_precision_follows_the_float64_reference(
    impl: str, dtype: torch.dtype
) -> None:
    params = [p.to(dtype) for p in _params()]
    grad_seq = _grads(params, steps=12)
    actual = _run_on_cuda(params, grad_seq, lr=1e-2, **IMPLEMENTATIONS[impl])
    expected = _reference(params, grad_seq, lr=1e-2)
    eps = torch.finfo(dtype).eps
    for a, e in zip(actual, expected, strict=True):
        torch.testing.assert_close(a, e, rtol=8 * eps, atol=12 * 1e-2 * eps)


@pytest.mark.parametrize(("dtype", "atol"), [(torch.float32, 2e-6), (torch.float64, 1e-14)])
def test_gradient_centralization_on_cuda_matches_the_hand_loop(
    dtype: torch.dtype, atol: float
) -> None:
    grads = [g.to(CUDA) for g in _gradients(dtype)]
    expected = [centralized(g) for g in grads]
    centralize_gradients(grads)
    for g, e in zip(grads, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=0, atol=atol)


@pytest.mark.parametrize("precision", ["32-true", "16-mixed", "bf16-mixed", "bf16-true"])
def test_lookahead_resume_mid_cycle_on_a_gpu_is_bit_exact(tmp_path: Path, precision: str) -> None:
    """As the CPU test: 3 epochs uninterrupted against 1 epoch, then a resume from its mid-cycle
    checkpoint into a module with other weights (16-mixed: with the GradScaler's state)."""
    gpu = {"accelerator": CUDA.type, "devices": 1, "precision": precision}
    trainer, lookahead = _run(tmp_path, "full", Net("radam"), max_epochs=3, **gpu)
    uninterrupted = _state(trainer, lookahead, trainer.lightning_module)
    _run(tmp_path, "first", Net("radam"), max_epochs=1, **gpu)
    ckpt = tmp_path / "first" / "epoch=0-step=5.ckpt"
    resumed = Net("radam", seed=7)
    trainer, lookahead = _run(tmp_path, "resumed", resumed, max_epochs=3, ckpt_path=ckpt, **gpu)
    _assert_same_state(_state(trainer, lookahead, resumed), uninterrupted)
