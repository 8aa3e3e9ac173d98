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
from helpers.asserts import assert_same_state
from helpers.data import (
    IMPLEMENTATIONS,
    gradient_sequence,
    gradients_of_many_layouts,
    random_params,
)
from helpers.models import Net
from helpers.references import centralized, reference_radam
from helpers.trainers import fit_lookahead, lookahead_state

from lightning_ranger import RAdam
from lightning_ranger.optim import centralize_gradients

pytestmark = pytest.mark.cuda

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
    params = random_params()
    grad_seq = gradient_sequence(params, steps=25)
    actual = _run_on_cuda(
        [p.to(dtype) for p in params], grad_seq, **options, **IMPLEMENTATIONS[impl]
    )
    expected = reference_radam([p.to(dtype).double() for p in params], grad_seq, **options)
    for a, e in zip(actual, expected, strict=True):
        torch.testing.assert_close(a, e, rtol=rtol, atol=atol)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_radam_on_cuda_in_half_precision_follows_the_float64_reference(
    impl: str, dtype: torch.dtype
) -> None:
    params = [p.to(dtype) for p in random_params()]
    grad_seq = gradient_sequence(params, steps=12)
    actual = _run_on_cuda(params, grad_seq, lr=1e-2, **IMPLEMENTATIONS[impl])
    expected = reference_radam(params, grad_seq, lr=1e-2)
    eps = torch.finfo(dtype).eps
    for a, e in zip(actual, expected, strict=True):
        torch.testing.assert_close(a, e, rtol=8 * eps, atol=12 * 1e-2 * eps)


@pytest.mark.parametrize(("dtype", "atol"), [(torch.float32, 2e-6), (torch.float64, 1e-14)])
def test_gradient_centralization_on_cuda_matches_the_hand_loop(
    dtype: torch.dtype, atol: float
) -> None:
    grads = [g.to(CUDA) for g in gradients_of_many_layouts(dtype)]
    expected = [centralized(g) for g in grads]
    centralize_gradients(grads)
    for g, e in zip(grads, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=0, atol=atol)


@pytest.mark.parametrize("precision", ["32-true", "16-mixed", "bf16-mixed", "bf16-true"])
def test_lookahead_resume_mid_cycle_on_a_gpu_is_bit_exact(tmp_path: Path, precision: str) -> None:
    """As the CPU test: 3 epochs uninterrupted against 1 epoch, then a resume from its mid-cycle
    checkpoint into a module with other weights (16-mixed: with the GradScaler's state)."""
    gpu = {"accelerator": CUDA.type, "devices": 1, "precision": precision}
    trainer, lookahead = fit_lookahead(tmp_path, "full", Net("radam"), max_epochs=3, **gpu)
    uninterrupted = lookahead_state(trainer, lookahead, trainer.lightning_module)
    fit_lookahead(tmp_path, "first", Net("radam"), max_epochs=1, **gpu)
    ckpt = tmp_path / "first" / "epoch=0-step=5.ckpt"
    resumed = Net("radam", seed=7)
    trainer, lookahead = fit_lookahead(
        tmp_path, "resumed", resumed, max_epochs=3, ckpt_path=ckpt, **gpu
    )
    assert_same_state(lookahead_state(trainer, lookahead, resumed), uninterrupted)
