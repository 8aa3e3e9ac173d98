"""RAdam's three implementations against an independent float64 Algorithm 2, against each other
and against torch.optim.RAdam."""

import itertools

import pytest
import torch
from helpers.data import IMPLEMENTATIONS, gradient_sequence, random_params
from helpers.launch import run_two_processes
from helpers.references import ReferenceRAdam, reference_radam

from lightning_ranger import RAdam


def _run(params, grad_seq, **options):
    """Run RAdam over ``grad_seq``; returns float64 (real) copies of the final parameters."""
    params = [p.clone().requires_grad_() for p in params]
    optimizer = RAdam(params, **options)
    for grads in grad_seq:
        for p, g in zip(params, grads, strict=True):
            p.grad = g.to(p.dtype)
        optimizer.step()
    return [_real64(p) for p in params], optimizer


def _real64(p):
    p = p.detach()
    return (torch.view_as_real(p) if p.is_complex() else p).to(torch.float64)


def _assert_follows_algorithm_2(impl, params, grad_seq, **options):
    """Every implementation ends where the float64 reference does, to float64 rounding."""
    actual, _ = _run(params, grad_seq, **options, **IMPLEMENTATIONS[impl])
    expected = reference_radam(params, grad_seq, **options)
    for a, e in zip(actual, expected, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("beta2", [0.999, 0.8, 0.7])
@pytest.mark.parametrize("rectify_threshold", [4.0, 5.0])
@pytest.mark.parametrize("degenerate_to_sgd", [True, False])
@pytest.mark.parametrize("weight_decay", ["none", "l2", "decoupled"])
@pytest.mark.parametrize("maximize", [False, True])
def test_matches_float64_algorithm_2(
    impl, beta2, rectify_threshold, degenerate_to_sgd, weight_decay, maximize
):
    options = {
        "lr": 3e-2,
        "betas": (0.9, beta2),
        "eps": 1e-8,
        "weight_decay": 0.0 if weight_decay == "none" else 0.1,
        "decoupled_weight_decay": weight_decay == "decoupled",
        "rectify_threshold": rectify_threshold,
        "degenerate_to_sgd": degenerate_to_sgd,
        "maximize": maximize,
    }
    params = random_params()
    _assert_follows_algorithm_2(impl, params, gradient_sequence(params, steps=25), **options)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_matches_float64_algorithm_2_over_140_steps(impl):
    """Eager steps read their step sizes from blocks of 64 precomputed steps: across the block
    boundaries (steps 64/65 and 128/129) every step still follows the reference."""
    params = random_params(shapes=[(5, 3), ()])
    _assert_follows_algorithm_2(
        impl,
        params,
        gradient_sequence(params, steps=140),
        lr=1e-2,
        betas=(0.8, 0.99),
        weight_decay=0.1,
    )


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_threshold_changes_the_first_rectified_step(impl):
    """With beta2 = 0.999, step 5 (rho_5 = 4.996) is rectified with threshold 4 but is an SGD step
    with threshold 5: the two runs agree for 4 steps and differ from step 5 on."""
    params = random_params()
    grad_seq = gradient_sequence(params, steps=5)
    runs = {
        th: [
            _run(params, grad_seq[:n], rectify_threshold=th, **IMPLEMENTATIONS[impl])[0]
            for n in (4, 5)
        ]
        for th in (4.0, 5.0)
    }
    for a, b in zip(runs[4.0][0], runs[5.0][0], strict=True):
        assert torch.equal(a, b)
    assert not any(
        torch.allclose(a, b)
        for a, b in zip(runs[4.0][1], runs[5.0][1], strict=True)
        if a.numel() > 1
    )


def test_no_update_before_rectification_without_sgd_fallback():
    params = random_params()
    grad_seq = gradient_sequence(params, steps=5)
    actual, optimizer = _run(params, grad_seq, degenerate_to_sgd=False)
    for a, p in zip(actual, params, strict=True):
        assert torch.equal(a, p)  # rho_t <= 5 for t <= 5: parameters never moved ...
    state = optimizer.state[optimizer.param_groups[0]["params"][0]]
    assert state["step"].item() == 5.0
    assert state["exp_avg"].abs().sum() > 0  # ... but the moments did


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"weight_decay": 0.1},
        {"weight_decay": 0.1, "decoupled_weight_decay": True},
        {"maximize": True, "betas": (0.8, 0.99)},
    ],
    ids=["plain", "l2", "decoupled", "maximize"],
)
def test_parity_with_torch_radam_in_float32(impl, options):
    """50 steps of a real model (gradients depend on the weights) agree with torch.optim.RAdam."""

    def train(optimizer_cls, **kwargs):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
        optimizer = optimizer_cls(model.parameters(), lr=1e-2, **options, **kwargs)
        x, y = torch.randn(32, 8), torch.randn(32, 1)
        for _ in range(50):
            optimizer.zero_grad()
            torch.nn.functional.mse_loss(model(x), y).backward()
            optimizer.step()
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    expected = train(torch.optim.RAdam, foreach=False)
    actual = train(RAdam, **IMPLEMENTATIONS[impl])
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-6)


# Tolerances for "fused and foreach equal the per-tensor path": in float32 and float64 foreach runs
# the same operations as the per-tensor loop and the fused kernel rounds differently. In float16 and
# bfloat16 every path computes the update in float32 and rounds each tensor once, as torch's fused
# kernels do, so the three agree exactly.
DTYPE_TOLERANCES = {
    torch.float64: {"rtol": 1e-13, "atol": 1e-14},
    torch.float32: {"rtol": 1e-6, "atol": 1e-6},
    torch.bfloat16: {"rtol": 0.0, "atol": 0.0},
    torch.float16: {"rtol": 0.0, "atol": 0.0},
}


@pytest.mark.parametrize("dtype", list(DTYPE_TOLERANCES), ids=str)
@pytest.mark.parametrize("impl", ["fused", "foreach"])
@pytest.mark.parametrize("options", [{}, {"weight_decay": 0.1, "decoupled_weight_decay": True}])
def test_fast_paths_equal_per_tensor_path(dtype, impl, options):
    params = random_params(dtype)
    grad_seq = gradient_sequence(params, steps=12)
    expected, _ = _run(params, grad_seq, lr=1e-2, **options, **IMPLEMENTATIONS["per-tensor"])
    actual, _ = _run(params, grad_seq, lr=1e-2, **options, **IMPLEMENTATIONS[impl])
    for a, e in zip(actual, expected, strict=True):
        torch.testing.assert_close(a, e, **DTYPE_TOLERANCES[dtype])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_half_precision_follows_the_float64_reference(dtype, impl):
    """Low-precision runs stay within a few units in the last place of the float64 trajectory."""
    params = random_params(dtype)
    grad_seq = gradient_sequence(params, steps=12)
    actual, _ = _run(params, grad_seq, lr=1e-2, **IMPLEMENTATIONS[impl])
    expected = reference_radam(params, grad_seq, lr=1e-2)
    eps = torch.finfo(dtype).eps
    for a, e in zip(actual, expected, strict=True):
        torch.testing.assert_close(a, e, rtol=4 * eps, atol=12 * 1e-2 * eps)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_precision_zero_second_moment_stays_finite(impl, dtype):
    """``eps=1e-8`` underflows to 0 in float16: a zero ``v_t`` must still give a finite step,
    as the update is computed in float32 on every path."""
    param = torch.ones(4, dtype=dtype, requires_grad=True)
    optimizer = RAdam([param], lr=1e-2, **IMPLEMENTATIONS[impl])
    for t in range(8):  # rectified from step 6
        param.grad = torch.tensor([0.0, 0.0, 1e-3, -1.0], dtype=dtype) * (t % 2)
        optimizer.step()
    assert torch.isfinite(param).all()
    assert param[0].item() == param[1].item() == 1.0  # zero gradients never moved them
    v = optimizer.state[param]["exp_avg_sq"]
    assert v[0].item() == 0.0 and torch.isfinite(v).all()


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_several_groups_with_their_own_options(impl):
    params = random_params()
    grad_seq = gradient_sequence(params, steps=20)
    group_options = [
        {"lr": 1e-2, "betas": (0.9, 0.999)},
        {"lr": 3e-2, "betas": (0.5, 0.8), "rectify_threshold": 4.0, "weight_decay": 0.2},
        {"lr": 5e-3, "degenerate_to_sgd": False, "maximize": True, "eps": 1e-3},
    ]
    groups = [[0, 1], [2], [3]]
    copies = [p.clone().requires_grad_() for p in params]
    optimizer = RAdam(
        [
            {"params": [copies[i] for i in idx], **o}
            for idx, o in zip(groups, group_options, strict=True)
        ],
        **IMPLEMENTATIONS[impl],
    )
    for grads in grad_seq:
        for p, g in zip(copies, grads, strict=True):
            p.grad = g.clone()
        optimizer.step()
    for idx, opts in zip(groups, group_options, strict=True):
        expected = reference_radam(
            [params[i] for i in idx], [[g[i] for i in idx] for g in grad_seq], **opts
        )
        for i, e in zip(idx, expected, strict=True):
            torch.testing.assert_close(copies[i].detach(), e, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("impl", ["foreach", "per-tensor"])
def test_complex_parameters_are_pairs_of_reals(impl):
    gen = torch.Generator().manual_seed(0)
    params = [
        torch.randn(6, 3, dtype=torch.complex128, generator=gen),
        torch.randn(4, dtype=torch.float64, generator=gen),
    ]
    grad_seq = [
        [torch.randn(p.shape, dtype=p.dtype, generator=gen) for p in params] for _ in range(15)
    ]
    copies = [p.clone().requires_grad_() for p in params]
    optimizer = RAdam(copies, lr=1e-2, weight_decay=0.1, **IMPLEMENTATIONS[impl])
    torch_copies = [p.clone().requires_grad_() for p in params]
    torch_optimizer = torch.optim.RAdam(torch_copies, lr=1e-2, weight_decay=0.1, foreach=False)
    for grads in grad_seq:
        for p, q, g in zip(copies, torch_copies, grads, strict=True):
            p.grad, q.grad = g.clone(), g.clone()
        optimizer.step()
        torch_optimizer.step()
    expected = reference_radam(params, grad_seq, lr=1e-2, weight_decay=0.1)
    torch.testing.assert_close(
        torch.view_as_real(copies[0].detach()), expected[0], rtol=1e-12, atol=1e-13
    )
    torch.testing.assert_close(copies[1].detach(), expected[1], rtol=1e-12, atol=1e-13)
    for p, q in zip(copies, torch_copies, strict=True):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-12, atol=1e-13)


def test_complex_parameters_with_fused():
    gen = torch.Generator().manual_seed(0)
    param = torch.randn(5, 2, dtype=torch.complex64, generator=gen)
    grad_seq = [[torch.randn(5, 2, dtype=torch.complex64, generator=gen)] for _ in range(10)]
    fused, _ = _run([param], grad_seq, fused=True)
    per_tensor, _ = _run([param], grad_seq, fused=False, foreach=False)
    torch.testing.assert_close(fused[0], per_tensor[0], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_mixed_dtypes_in_one_group(impl):
    """Each tensor of a mixed float32/float64 group moves as it would alone in its dtype."""
    params = [
        *random_params(torch.float64, shapes=[(5, 3), (4,)]),
        *random_params(torch.float32, seed=3, shapes=[(6,), (2, 2)]),
    ]
    grad_seq = gradient_sequence(params, steps=10)
    mixed, _ = _run(params, grad_seq, **IMPLEMENTATIONS[impl])
    for idx in ([0, 1], [2, 3]):
        alone, _ = _run(
            [params[i] for i in idx],
            [[g[i] for i in idx] for g in grad_seq],
            **IMPLEMENTATIONS[impl],
        )
        for i, a in zip(idx, alone, strict=True):
            assert torch.equal(mixed[i], a)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_parameters_with_unequal_step_counts(impl):
    """A parameter that missed some steps (no gradient) keeps its own step count and phase."""
    params = random_params(shapes=[(4, 3), (5,)])
    grad_seq = gradient_sequence(params, steps=12)
    copies = [p.clone().requires_grad_() for p in params]
    optimizer = RAdam(copies, lr=1e-2, **IMPLEMENTATIONS[impl])
    late = ReferenceRAdam([params[1]], lr=1e-2)
    for t, grads in enumerate(grad_seq):
        copies[0].grad = grads[0].clone()
        copies[1].grad = grads[1].clone() if t >= 4 else None
        if t >= 4:
            late.step([grads[1]])
        optimizer.step()
    assert optimizer.state[copies[0]]["step"].item() == 12
    assert optimizer.state[copies[1]]["step"].item() == 8
    expected_first = reference_radam([params[0]], [[g[0]] for g in grad_seq], lr=1e-2)[0]
    torch.testing.assert_close(copies[0].detach(), expected_first, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(copies[1].detach(), late.params[0], rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_tensor_lr_equals_float_lr(impl):
    params = random_params()
    grad_seq = gradient_sequence(params, steps=10)
    as_float, _ = _run(params, grad_seq, lr=0.01, **IMPLEMENTATIONS[impl])
    lr = torch.tensor(0.01, dtype=torch.float64)
    as_tensor, _ = _run(params, grad_seq, lr=lr, **IMPLEMENTATIONS[impl])
    for a, b in zip(as_float, as_tensor, strict=True):
        assert torch.equal(a, b)


def test_default_selection_is_fused_on_cpu_and_bitwise_equal_to_fused():
    params = random_params(torch.float32)
    grad_seq = gradient_sequence(params, steps=10)
    default, _ = _run(params, grad_seq)
    fused, _ = _run(params, grad_seq, fused=True)
    for a, b in itertools.zip_longest(default, fused):
        assert torch.equal(a, b)


@pytest.mark.distributed
def test_dtensor_parameters_step_like_plain_tensors():
    """FSDP2 parameters are DTensors: every path, 16-bit included, steps a parameter sharded over
    2 processes exactly as a plain tensor (``tests/scripts/radam_dtensor.py``)."""
    run_two_processes("radam_dtensor", timeout=300)
