"""``torch.compile(optimizer.step)``: every implementation compiles once, across the rectification
threshold, and follows the eager trajectory.

Graphs are counted with ``torch._dynamo.utils.counters`` after ``torch._dynamo.reset()``. The
foreach and per-tensor implementations trace one graph whose step-dependent scalars (``r_t``, the
bias corrections, the step size) are computed from the step counts inside it; the fused
implementation runs eagerly under compile (torch's fused kernels cannot be traced), which is what
``torch.optim.Adam(fused=True)`` does too, so it compiles no graph at all.
"""

import pytest
import torch
import torch._dynamo
from helpers.data import IMPLEMENTATIONS
from torch._dynamo.utils import counters

from lightning_ranger import RAdam

#: Graphs that one compiled ``step`` makes over a whole run.
EXPECTED_GRAPHS = {"fused": 0, "foreach": 1, "per-tensor": 1}
STEPS = 12  # with beta2 = 0.999 steps 1-5 are un-rectified and 6-12 rectified
SHAPES = [(3, 2), (4,), ()]


def _run(dtype, compiled, steps=STEPS, lr=1e-2, schedule=None, **options):
    """Final parameters after ``steps`` steps on fixed gradients, and the graphs compiled."""
    torch._dynamo.reset()
    counters.clear()
    gen = torch.Generator().manual_seed(0)
    params = [
        torch.randn(s, generator=gen, dtype=torch.float64).to(dtype).requires_grad_()
        for s in SHAPES
    ]
    optimizer = RAdam(params, lr=lr() if callable(lr) else lr, **options)
    step = torch.compile(optimizer.step) if compiled else optimizer.step
    for t in range(steps):
        if schedule is not None:
            schedule(optimizer, t)
        grad_gen = torch.Generator().manual_seed(100 + t)
        for p in params:
            p.grad = torch.randn(p.shape, generator=grad_gen, dtype=torch.float64).to(dtype)
        step()
    steps_taken = {s["step"].item() for s in optimizer.state.values()}
    assert steps_taken == {float(steps)}
    return [p.detach().to(torch.float64) for p in params], counters["stats"]["unique_graphs"]


TOLERANCES = {
    torch.float64: {"rtol": 1e-12, "atol": 1e-14},
    torch.float32: {"rtol": 1e-6, "atol": 1e-7},
    torch.bfloat16: {"rtol": 2**-7, "atol": 2**-7 * 1e-2},
}


@pytest.mark.parametrize("dtype", list(TOLERANCES), ids=str)
@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize(
    "options",
    [{}, {"weight_decay": 0.1, "decoupled_weight_decay": True, "maximize": True}],
    ids=["plain", "decoupled-maximize"],
)
def test_compiled_step_compiles_once_and_matches_eager(dtype, impl, options):
    eager, _ = _run(dtype, compiled=False, **options, **IMPLEMENTATIONS[impl])
    compiled, graphs = _run(dtype, compiled=True, **options, **IMPLEMENTATIONS[impl])
    assert graphs == EXPECTED_GRAPHS[impl]
    for c, e in zip(compiled, eager, strict=True):
        torch.testing.assert_close(c, e, **TOLERANCES[dtype])


@pytest.mark.parametrize("impl", ["foreach", "per-tensor"])
def test_one_graph_for_the_paper_threshold_without_sgd_fallback(impl):
    """Threshold 4 rectifies from step 5; without the SGD fallback steps 1-4 do not move."""
    options = {"rectify_threshold": 4.0, "degenerate_to_sgd": False, "weight_decay": 0.1}
    eager, _ = _run(torch.float64, compiled=False, **options, **IMPLEMENTATIONS[impl])
    compiled, graphs = _run(torch.float64, compiled=True, **options, **IMPLEMENTATIONS[impl])
    assert graphs == 1
    for c, e in zip(compiled, eager, strict=True):
        torch.testing.assert_close(c, e, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("impl", ["foreach", "per-tensor"])
def test_a_tensor_learning_rate_changed_in_place_needs_no_recompile(impl):
    """A tensor ``lr`` is a graph input: halving it at step 8 reuses the graph."""

    def halve_at_step_8(optimizer, t):
        if t == 8:
            optimizer.param_groups[0]["lr"].mul_(0.5)

    def run(compiled):
        return _run(
            torch.float64,
            compiled,
            lr=lambda: torch.tensor(1e-2, dtype=torch.float64),
            schedule=halve_at_step_8,
            **IMPLEMENTATIONS[impl],
        )

    (eager, _), (compiled, graphs) = run(False), run(True)
    assert graphs == 1
    for c, e in zip(compiled, eager, strict=True):
        torch.testing.assert_close(c, e, rtol=1e-12, atol=1e-14)


def test_the_default_implementation_compiles_like_torch_fused_adam():
    """The default on CPU is fused: under compile it runs eagerly, as torch's fused Adam does."""
    eager, _ = _run(torch.float32, compiled=False)
    compiled, graphs = _run(torch.float32, compiled=True)
    assert graphs == 0
    for c, e in zip(compiled, eager, strict=True):
        assert torch.equal(c, e)
