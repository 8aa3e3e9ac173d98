import copy

import pytest
import torch

from lightning_ranger import RAdam
from lightning_ranger.optim.radam import validate_options


def _params():
    return [torch.nn.Parameter(torch.zeros(2))]


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        (
            {"lr": -1e-3},
            ValueError,
            r"`lr` must be a float >= 0 \(or a 1-element Tensor\), got -0.001",
        ),
        ({"lr": float("nan")}, ValueError, r"`lr` must be a float >= 0 .*, got nan"),
        (
            {"lr": "0.1"},
            TypeError,
            r"`lr` must be a float >= 0 \(or a 1-element Tensor\), got '0.1'",
        ),
        ({"lr": torch.tensor([1e-3, 1e-3])}, ValueError, r"`lr` as a Tensor must have exactly 1"),
        ({"lr": torch.tensor(-1.0)}, ValueError, r"`lr` must be a float >= 0 .*, got -1.0"),
        ({"betas": (1.0, 0.999)}, ValueError, r"`betas\[0\]` must be a float in \[0, 1\), got 1.0"),
        ({"betas": (0.9, -0.1)}, ValueError, r"`betas\[1\]` must be a float in \[0, 1\), got -0.1"),
        ({"betas": (0.9, 1.5)}, ValueError, r"`betas\[1\]` must be a float in \[0, 1\), got 1.5"),
        (
            {"betas": (0.9,)},
            TypeError,
            r"`betas` must be a pair of floats in \[0, 1\), got \(0.9,\)",
        ),
        ({"betas": 0.9}, TypeError, r"`betas` must be a pair of floats"),
        ({"betas": (0.9, "x")}, TypeError, r"`betas\[1\]` must be a float in \[0, 1\), got 'x'"),
        ({"eps": -1e-8}, ValueError, r"`eps` must be a float >= 0, got -1e-08"),
        ({"weight_decay": -0.1}, ValueError, r"`weight_decay` must be a float >= 0, got -0.1"),
        ({"weight_decay": None}, TypeError, r"`weight_decay` must be a float >= 0, got None"),
        (
            {"rectify_threshold": 3.9},
            ValueError,
            r"`rectify_threshold` must be a float >= 4 \(r_t is undefined below 4\), got 3.9",
        ),
        (
            {"rectify_threshold": float("nan")},
            ValueError,
            r"`rectify_threshold` must be .*, got nan",
        ),
        ({"degenerate_to_sgd": 1}, TypeError, r"`degenerate_to_sgd` must be a bool, got 1"),
        ({"decoupled_weight_decay": "yes"}, TypeError, r"`decoupled_weight_decay` must be a bool"),
        ({"maximize": None}, TypeError, r"`maximize` must be a bool, got None"),
        ({"foreach": 1}, TypeError, r"`foreach` must be a bool or None, got 1"),
        ({"fused": "auto"}, TypeError, r"`fused` must be a bool or None, got 'auto'"),
        ({"fused": True, "foreach": True}, ValueError, r"`fused=True` and `foreach=True` cannot"),
    ],
)
def test_bad_options_are_refused_at_construction(options, error, match):
    with pytest.raises(error, match=match):
        RAdam(_params(), **options)


def test_bad_options_of_a_param_group_are_refused():
    with pytest.raises(ValueError, match=r"`rectify_threshold` must be a float >= 4 .*, got 2"):
        RAdam([{"params": _params(), "rectify_threshold": 2}])
    optimizer = RAdam(_params())
    with pytest.raises(ValueError, match=r"`lr` must be a float >= 0 .*, got -1.0"):
        optimizer.add_param_group({"params": _params(), "lr": -1.0})


class _OtherTensor(torch.Tensor):
    """A tensor subclass, which torch's fused kernels do not take."""


def test_fused_true_on_an_unsupported_tensor_type_is_refused():
    param = torch.zeros(2).as_subclass(_OtherTensor).requires_grad_()
    with pytest.raises(
        ValueError, match=r"`fused=True` is not supported for a _OtherTensor on device 'cpu'"
    ):
        RAdam([param], fused=True)


def test_a_rejected_param_group_leaves_the_optimizer_unchanged():
    kept = _params()
    optimizer = RAdam(kept, lr=1e-2)
    optimizer.add_param_group({"params": _params(), "lr": 1e-3})
    before = copy.deepcopy(optimizer.state_dict())
    rejected = {"params": _params(), "lr": -1.0}
    with pytest.raises(ValueError, match=r"`lr` must be a float >= 0 .*, got -1.0"):
        optimizer.add_param_group(rejected)
    with pytest.raises(TypeError, match=r"`maximize` must be a bool, got 'yes'"):
        optimizer.add_param_group({"params": _params(), "maximize": "yes"})
    assert len(optimizer.param_groups) == 2
    assert optimizer.state_dict() == before
    # The parameters of the rejected group are free to join a valid group afterwards.
    optimizer.add_param_group({"params": rejected["params"], "lr": 1e-4})
    assert [g["lr"] for g in optimizer.param_groups] == [1e-2, 1e-3, 1e-4]


def test_boundary_values_are_accepted():
    optimizer = RAdam(
        _params(), lr=0.0, betas=(0.0, 0.0), eps=0.0, weight_decay=0.0, rectify_threshold=4.0
    )
    assert optimizer.param_groups[0]["betas"] == (0.0, 0.0)
    RAdam(_params(), rectify_threshold=float("inf"))  # never rectify: SGD with momentum


def test_validate_options_checks_as_the_constructor_does():
    validate_options()  # the constructor's defaults
    validate_options(lr=torch.tensor(0.0), betas=[0.0, 0.5], rectify_threshold=4)
    with pytest.raises(ValueError, match=r"`betas\[1\]` must be a float in \[0, 1\), got 1.0"):
        validate_options(betas=(0.9, 1.0))
    with pytest.raises(TypeError, match=r"not options of RAdam: \['momentum'\]; RAdam takes \["):
        validate_options(momentum=0.9)
