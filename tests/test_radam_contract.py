"""The optimizer contract that torch's own suite checks for every torch.optim optimizer: state
dicts (also torch.optim.RAdam's and older ones), deepcopy, printing, hooks, missing gradients,
closures and sparse gradients."""

import copy
import pickle

import pytest
import torch

from lightning_ranger import RAdam
from lightning_ranger.optim.rectification import DEFAULT_RECTIFY_THRESHOLD


def _model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))


def _train(model, optimizer, steps, seed=1):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(16, 6, generator=gen)
        optimizer.zero_grad()
        model(x).pow(2).mean().backward()
        optimizer.step()


def _flat(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


@pytest.mark.parametrize("source_cls", [RAdam, torch.optim.RAdam], ids=["ours", "torch"])
@pytest.mark.parametrize("target_cls", [RAdam, torch.optim.RAdam], ids=["ours", "torch"])
def test_state_dict_round_trip_between_implementations(source_cls, target_cls):
    """Train 10 steps with one implementation, continue 10 with the other: same trajectory as
    20 uninterrupted steps of torch.optim.RAdam."""
    kwargs = {"lr": 1e-2, "weight_decay": 0.05}
    uninterrupted = _model()
    reference = torch.optim.RAdam(uninterrupted.parameters(), foreach=False, **kwargs)
    _train(uninterrupted, reference, 10, seed=1)
    _train(uninterrupted, reference, 10, seed=2)

    first = _model()
    source = source_cls(first.parameters(), **kwargs)
    _train(first, source, 10, seed=1)
    second = _model(seed=99)
    second.load_state_dict(first.state_dict())
    target = target_cls(second.parameters(), lr=0.5)  # the loaded groups override lr
    target.load_state_dict(copy.deepcopy(source.state_dict()))
    assert target.param_groups[0]["lr"] == 1e-2
    _train(second, target, 10, seed=2)
    torch.testing.assert_close(_flat(second), _flat(uninterrupted), rtol=0, atol=1e-6)


def test_torch_state_dict_gets_torch_behaviour_defaults():
    model = _model()
    source = torch.optim.RAdam(model.parameters())
    _train(model, source, 2)
    target = RAdam(model.parameters(), rectify_threshold=4.0, degenerate_to_sgd=False)
    target.load_state_dict(source.state_dict())
    group = target.param_groups[0]
    assert group["rectify_threshold"] == DEFAULT_RECTIFY_THRESHOLD
    assert group["degenerate_to_sgd"] is True
    assert group["fused"] is None


def test_own_state_dict_round_trip_is_exact():
    model = _model()
    optimizer = RAdam(model.parameters(), lr=1e-2, rectify_threshold=4.0)
    _train(model, optimizer, 7)
    state = copy.deepcopy(optimizer.state_dict())
    twin = _model(seed=5)
    twin.load_state_dict(model.state_dict())
    twin_optimizer = RAdam(twin.parameters())
    twin_optimizer.load_state_dict(state)
    assert twin_optimizer.param_groups[0]["rectify_threshold"] == 4.0
    _train(model, optimizer, 5, seed=3)
    _train(twin, twin_optimizer, 5, seed=3)
    assert torch.equal(_flat(model), _flat(twin))
    first = optimizer.state_dict()["state"][0]
    assert set(first) == {"step", "exp_avg", "exp_avg_sq"}
    assert first["step"].dtype == torch.float32 and first["step"].device.type == "cpu"
    assert first["step"].item() == 12.0


def test_loads_an_older_state_dict_with_a_float_step():
    model = _model()
    optimizer = RAdam(model.parameters(), lr=1e-2)
    _train(model, optimizer, 6)
    state = copy.deepcopy(optimizer.state_dict())
    for param_state in state["state"].values():
        param_state["step"] = float(param_state["step"])  # as torch < 1.12 saved it
    for group in state["param_groups"]:
        for key in ("rectify_threshold", "degenerate_to_sgd", "fused", "foreach", "maximize"):
            del group[key]
    twin = _model(seed=5)
    twin.load_state_dict(model.state_dict())
    twin_optimizer = RAdam(twin.parameters())
    twin_optimizer.load_state_dict(state)
    step = twin_optimizer.state[next(twin.parameters())]["step"]
    assert torch.is_tensor(step) and step.item() == 6.0
    _train(model, optimizer, 4, seed=3)
    _train(twin, twin_optimizer, 4, seed=3)
    assert torch.equal(_flat(model), _flat(twin))


def test_deepcopy_and_pickle_give_an_independent_equal_optimizer():
    model = _model()
    optimizer = RAdam(model.parameters(), lr=1e-2)
    _train(model, optimizer, 3)
    for clone in (copy.deepcopy(optimizer), pickle.loads(pickle.dumps(optimizer))):
        assert type(clone) is RAdam
        assert clone.param_groups[0]["lr"] == 1e-2
        original = list(optimizer.state.values())
        copied = list(clone.state.values())
        for a, b in zip(original, copied, strict=True):
            assert torch.equal(a["exp_avg_sq"], b["exp_avg_sq"])
            assert a["exp_avg_sq"] is not b["exp_avg_sq"]


def test_repr_shows_the_options():
    optimizer = RAdam(_model().parameters(), lr=3e-4, rectify_threshold=4.0)
    text = repr(optimizer)
    assert text.startswith("RAdam (")
    for expected in (
        "lr: 0.0003",
        "rectify_threshold: 4.0",
        "degenerate_to_sgd: True",
        "betas: (0.9, 0.999)",
    ):
        assert expected in text


def test_step_pre_and_post_hooks_run_once_per_step():
    model = _model()
    optimizer = RAdam(model.parameters())
    calls = []
    optimizer.register_step_pre_hook(lambda opt, args, kwargs: calls.append("pre"))
    optimizer.register_step_post_hook(lambda opt, args, kwargs: calls.append("post"))
    _train(model, optimizer, 2)
    assert calls == ["pre", "post", "pre", "post"]


def test_state_dict_hooks():
    optimizer = RAdam(_model().parameters())
    optimizer.register_state_dict_post_hook(lambda opt, sd: {**sd, "extra": 1})
    assert optimizer.state_dict()["extra"] == 1


def test_parameters_without_gradients_are_left_alone():
    frozen = torch.nn.Parameter(torch.ones(3))
    used = torch.nn.Parameter(torch.ones(3))
    optimizer = RAdam([frozen, used], lr=0.1)
    used.grad = torch.ones(3)
    optimizer.step()
    assert torch.equal(frozen, torch.ones(3))
    assert frozen not in optimizer.state
    assert optimizer.state[used]["step"].item() == 1.0
    # Step 1 is un-rectified: SGD with bias-corrected momentum, m_hat = g.
    torch.testing.assert_close(used.detach(), torch.full((3,), 0.9))


def test_closure_is_evaluated_with_gradients_and_its_loss_returned():
    model = _model()
    optimizer = RAdam(model.parameters())
    x = torch.randn(4, 6)

    def closure():
        optimizer.zero_grad()
        loss = model(x).pow(2).mean()
        loss.backward()
        return loss

    loss = optimizer.step(closure)
    assert torch.is_tensor(loss) and loss.item() > 0
    assert all(s["step"].item() == 1.0 for s in optimizer.state.values())


def test_sparse_gradients_get_a_clear_error():
    embedding = torch.nn.Embedding(10, 3, sparse=True)
    optimizer = RAdam(embedding.parameters())
    embedding(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="RAdam does not support sparse gradients"):
        optimizer.step()


def test_add_param_group_takes_defaults_and_own_options():
    a, b = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    optimizer = RAdam([a], lr=1e-2, rectify_threshold=4.0)
    optimizer.add_param_group({"params": [b], "lr": 1e-3})
    group = optimizer.param_groups[1]
    assert group["lr"] == 1e-3 and group["rectify_threshold"] == 4.0


def test_works_with_torch_lr_schedulers():
    model = _model()
    optimizer = RAdam(model.parameters(), lr=1.0)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    for _ in range(3):
        _train(model, optimizer, 1)
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == 0.125
