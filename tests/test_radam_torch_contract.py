"""PyTorch's generic optimizer contract, checked on ``lightning_ranger.RAdam`` with torch's own test
machinery: the ``OptimizerInfo`` of ``torch.optim.RAdam`` in
``torch.testing._internal.common_optimizers.optim_db`` (its configurations and error inputs), its
``_get_optim_inputs_including_global_cliquey_kwargs`` (every configuration with each of foreach /
fused switched on) and its ``TensorTracker`` (step-by-step comparison that re-aligns both runs after
every check, so that differences cannot pile up). The checks follow torch's ``TestOptimRenewed``:
fused and foreach against the for-loop implementation (float64, float32, bfloat16, float16),
parameters on the meta device, param-group learning rates and weight decay, no-op steps, the
direction of the loss, and the error inputs.

Left out: torch's exact error wording for RAdam's own options (``Invalid beta parameter at index
0: 1.0``); ours names the option and its accepted range instead, and the error type is checked.
"""

from __future__ import annotations

import re
from copy import deepcopy

import pytest
import torch

pytest.importorskip("expecttest", reason="torch.testing._internal needs expecttest (dev extra)")

_FLAGS_WERE_FROZEN = torch.backends.flags_frozen()

from torch.testing._internal.common_optimizers import (  # noqa: E402
    OptimizerErrorEnum,
    OptimizerInfo,
    TensorTracker,
    _get_optim_inputs_including_global_cliquey_kwargs,
    optim_db,
)

if not _FLAGS_WERE_FROZEN:
    # Importing torch.testing._internal freezes torch.backends' flags (for torch's own suite);
    # the other tests of this process set them (Trainer(benchmark=...)): thaw them again. The
    # flag is a global of torch/backends/__init__.py, which sys.modules holds behind a proxy.
    torch.backends.flags_frozen.__globals__["__allow_nonbracketed_mutation_flag"] = True

from lightning_ranger import RAdam  # noqa: E402

DEVICE = "cpu"
TORCH_RADAM = next(info for info in optim_db if info.optim_cls is torch.optim.RAdam)
#: torch's RAdam entry with our class, and the fused implementation that ours adds.
OURS = OptimizerInfo(
    RAdam,
    optim_inputs_func=TORCH_RADAM.optim_inputs_func,
    optim_error_inputs_func=TORCH_RADAM.optim_error_inputs_func,
    supported_impls=("foreach", "fused"),
    supports_fused_on=("cpu", "cuda", "mps", "xpu"),
)
#: Errors whose message is RAdam's own option check (the rest come from torch.optim.Optimizer,
#: whose wording ours keeps): the type is compared, and the message must name the option.
OWN_WORDING = {
    "Tensor lr must be 1-element": "`lr`",
    "beta1 should be between 0 and 1": "`betas[0]`",
    "weight_decay should > 0": "`weight_decay`",
}


def test_the_torch_test_machinery_leaves_backend_flags_settable():
    """Other tests in this process set ``torch.backends`` flags after this module is imported."""
    assert _FLAGS_WERE_FROZEN or not torch.backends.flags_frozen()


class _Checks:
    """The assertions ``TensorTracker`` makes through a ``unittest.TestCase``, for pytest."""

    def assertGreater(self, a, b, msg=None):
        assert a > b, msg

    def assertTrue(self, x, msg=None):
        assert x, msg

    def assertEqual(self, actual, expected, **kwargs):
        torch.testing.assert_close(actual, expected, **kwargs)


def _configs(dtype=torch.float32):
    """Every configuration of torch's RAdam entry that the CPU takes (no ``capturable``)."""
    return [
        deepcopy(optim_input.kwargs)
        for optim_input in OURS.optim_inputs_func(device=DEVICE, dtype=dtype)
        if not optim_input.kwargs.get("capturable", False)
    ]


def _model(dtype, seed=1, device=DEVICE):
    torch.manual_seed(seed)
    with torch.device(device):
        model = torch.nn.Sequential(
            torch.nn.Linear(2, 3), torch.nn.Sigmoid(), torch.nn.Linear(3, 1), torch.nn.Sigmoid()
        )
    return model.to(dtype=dtype)


def _compare_implementations(dtype, flag):
    """Two runs, ``flag=False`` (the for-loop) and ``flag=True``, aligned step by step for 7 steps:
    past the first rectified step (6 with beta2 = 0.999), with a step without gradients (2), a
    layer frozen for steps 3-4, and a 0-dim parameter that has a gradient only at the first step.
    Returns the number of configurations compared."""
    compared = 0
    for kwargs in _configs(dtype):
        models, optimizers = [], []
        for flag_value in (False, True):
            model = _model(dtype)
            empty = torch.empty((), device=DEVICE, dtype=dtype, requires_grad=True)
            empty.grad = torch.rand_like(empty)
            models.append(model)
            optimizers.append(RAdam([*model.parameters(), empty], **kwargs, **{flag: flag_value}))
        inputs = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5, 0.6], dtype=dtype).reshape(3, 2)
        tracker = TensorTracker()
        for i in range(7):
            for model, optimizer in zip(models, optimizers, strict=True):
                optimizer.zero_grad()
                if i in (3, 5):
                    model[2].requires_grad_(i == 5)
                if i != 2:
                    model(inputs).sum().backward()
                optimizer.step()
            reference, candidate = optimizers
            for p_ref, p_new in zip(models[0].parameters(), models[1].parameters(), strict=True):
                tracker.add(p_ref)
                tracker.pop_check_set(p_new, _Checks())
                for key, value in reference.state[p_ref].items():
                    tracker.add(value)
                    tracker.pop_check_set(candidate.state[p_new][key], _Checks())
            assert tracker.all_popped()
        compared += 1
    return compared


@pytest.mark.parametrize(
    "dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16], ids=str
)
def test_fused_matches_forloop(dtype):
    assert _compare_implementations(dtype, "fused") == len(_configs(dtype)) == 6


def test_foreach_matches_forloop():
    assert _compare_implementations(torch.float64, "foreach") == 6


def test_fused_error_on_params_on_meta():
    """Construction on the meta device is accepted; a step there raises a ``RuntimeError``; after
    ``to_empty`` the optimizer steps."""
    model = _model(torch.float32, device="meta")
    optimizer = RAdam(model.parameters(), fused=True)
    with torch.device("meta"):
        for p in model.parameters():
            p.grad = torch.rand_like(p)
    with pytest.raises(RuntimeError, match=r"cannot step parameters on the meta device"):
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    model.to_empty(device=DEVICE)
    for p in model.parameters():
        p.grad = torch.rand_like(p)
    optimizer.step()


@pytest.mark.parametrize("fused", [True, None, False])
def test_deferred_initialisation_steps_the_materialized_parameters(fused):
    """With ``swap_module_params_on_conversion`` (``to_empty`` keeps the parameter objects) the
    optimizer built on meta parameters steps the materialized ones."""
    model = _model(torch.float32, device="meta")
    optimizer = RAdam(model.parameters(), lr=1e-2, fused=fused)
    previous = torch.__future__.get_swap_module_params_on_conversion()
    torch.__future__.set_swap_module_params_on_conversion(True)
    try:
        model.to_empty(device=DEVICE)
    finally:
        torch.__future__.set_swap_module_params_on_conversion(previous)
    twin = _model(torch.float32, seed=3)
    model.load_state_dict(twin.state_dict())
    twin_optimizer = RAdam(twin.parameters(), lr=1e-2, fused=fused)
    inputs = torch.randn(5, 2)
    for net, opt in ((model, optimizer), (twin, twin_optimizer)):
        for _ in range(7):
            opt.zero_grad()
            net(inputs).sum().backward()
            opt.step()
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        assert a.device.type == DEVICE
        assert torch.equal(a, b)


def _all_configs():
    """torch's configurations with every implementation flag: torch's helper offers foreach on
    CUDA only, so the foreach variants, which ours also runs on the CPU, are added here."""
    configs = [
        optim_input.kwargs
        for optim_input in _get_optim_inputs_including_global_cliquey_kwargs(
            DEVICE, torch.float32, OURS
        )
    ]
    return configs + [{**c, "fused": False, "foreach": True} for c in configs if not c["fused"]]


def test_every_configuration_is_covered():
    # 6 configurations x (for-loop, fused, foreach)
    assert len(_all_configs()) == 18


@pytest.mark.parametrize("kwargs", _all_configs(), ids=str)
def test_param_groups_lr_and_weight_decay(kwargs):
    """A group at ``lr=1e-28`` does not move; a group without weight decay beside one with it;
    the loss goes the configured way in 20 steps."""
    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(10, 5))
    bias = torch.nn.Parameter(torch.randn(10))
    irrelevant = torch.nn.Parameter(torch.randn(2))
    irrelevant_before = irrelevant.detach().clone()
    inputs = torch.randn(5)
    group = {**kwargs, "lr": kwargs.get("lr", 1e-3) or 1e-3}
    optimizer = RAdam(
        [
            {"params": [weight], **group},
            {"params": [bias], **{**group, "weight_decay": 0.0}},
            {"params": [irrelevant]},
        ],
        lr=1e-28,
    )

    def loss():
        return (weight.mv(inputs) + bias).pow(2).sum()

    initial = loss().item()
    for _ in range(20):
        optimizer.zero_grad()
        loss().backward()
        irrelevant.grad = torch.rand_like(irrelevant)
        optimizer.step()
    final = loss().item()
    assert final > initial if kwargs.get("maximize", False) else final < initial
    torch.testing.assert_close(irrelevant.detach(), irrelevant_before)


@pytest.mark.parametrize("kwargs", _all_configs(), ids=str)
def test_step_is_noop_for_zero_grads_and_without_grads(kwargs):
    param = torch.randn(5, 1, requires_grad=True)
    before = param.detach().clone()
    no_grad = [torch.randn(2, 3) for _ in range(2)]
    RAdam(no_grad, **kwargs).step(lambda: torch.tensor([1.0]))
    if kwargs.get("weight_decay", 0) != 0:
        return  # weight decay moves parameters even for zero gradients
    optimizer = RAdam([param], **kwargs)
    param.grad = torch.zeros_like(param)
    optimizer.step()
    assert torch.equal(param.detach(), before)


@pytest.mark.parametrize(
    "error_input",
    OURS.optim_error_inputs_func(device=DEVICE, dtype=torch.float32),
    ids=lambda e: e.optimizer_error_input.desc,
)
def test_errors(error_input):
    optim_input = error_input.optimizer_error_input
    params = optim_input.params
    if params is None:
        params = [torch.nn.Parameter(torch.randn(2))]
    assert error_input.error_on == OptimizerErrorEnum.CONSTRUCTION_ERROR
    if issubclass(error_input.error_type, Warning):
        with pytest.warns(error_input.error_type, match=error_input.error_regex):
            RAdam(params, **optim_input.kwargs)
        return
    with pytest.raises(error_input.error_type) as raised:
        RAdam(params, **optim_input.kwargs)
    message = str(raised.value)
    if optim_input.desc in OWN_WORDING:
        assert OWN_WORDING[optim_input.desc] in message
    else:
        assert re.search(error_input.error_regex, message), message
