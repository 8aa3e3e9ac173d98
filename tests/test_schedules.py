import math

import pytest
import torch

from lightning_ranger.optim.schedules import LRSchedule, build_scheduler


def _cosine(progress):
    return 0.5 * (1 + math.cos(math.pi * progress))


@pytest.mark.parametrize("warmup", [0, 10])
def test_cosine_formula(warmup):
    total = 110
    schedule = LRSchedule("cosine", warmup_steps=warmup, total_steps=total)
    for s in range(total + 5):
        after = (s - warmup) / (total - warmup)
        expected = s / warmup if s < warmup else _cosine(min(1.0, after))
        assert schedule(s) == pytest.approx(expected, abs=1e-15), s


def test_flat_cosine_formula():
    schedule = LRSchedule("flat_cosine", warmup_steps=20, total_steps=120, flat_fraction=0.72)
    flat_end = 20 + 0.72 * 100  # 92
    assert [schedule(s) for s in (0, 10, 20)] == [0.0, 0.5, 1.0]
    assert schedule(91) == 1.0
    assert schedule(92) == pytest.approx(_cosine(0.0))
    assert schedule(106) == pytest.approx(_cosine((106 - flat_end) / (120 - flat_end)))
    assert schedule(120) == pytest.approx(0.0, abs=1e-15)


def test_linear_warmup_then_constant_without_a_horizon():
    schedule = LRSchedule("linear_warmup", warmup_steps=4)
    assert [schedule(s) for s in range(7)] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert LRSchedule("constant", total_steps=math.inf)(10**9) == 1.0


def test_scheduler_state_dict_is_plain_data_and_resumes():
    def make():
        p = torch.nn.Parameter(torch.zeros(1))
        optimizer = torch.optim.SGD([p], lr=1.0)
        return optimizer, build_scheduler(optimizer, LRSchedule("cosine", 5, total_steps=50))

    optimizer, scheduler = make()
    for _ in range(17):
        optimizer.step()
        scheduler.step()
    state = scheduler.state_dict()
    torch.save(state, buffer := __import__("io").BytesIO())
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    twin_optimizer, twin = make()
    twin.load_state_dict(loaded)
    twin_optimizer.load_state_dict(optimizer.state_dict())
    for _ in range(5):
        optimizer.step(), scheduler.step(), twin_optimizer.step(), twin.step()
    assert twin_optimizer.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"]
    assert optimizer.param_groups[0]["lr"] == pytest.approx(_cosine((22 - 5) / 45))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"name": 3}, r"`schedule` must be one of 'constant', 'linear_warmup', .*, got 3"),
        ({"name": "constant", "warmup_steps": 1.5}, r"`warmup_steps` must be an int >= 0, got 1.5"),
        ({"name": "constant", "warmup_steps": True}, r"`warmup_steps` must be an int >= 0"),
        ({"name": "cosine", "total_steps": 10, "flat_fraction": "0.5"}, r"`flat_fraction` must"),
    ],
)
def test_options_of_the_wrong_type(kwargs, match):
    with pytest.raises(TypeError, match=match):
        LRSchedule(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (
            {"name": "step"},
            r"`schedule` must be one of 'constant', 'linear_warmup', 'flat_cosine', 'cosine', "
            r"got 'step'",
        ),
        ({"name": "constant", "warmup_steps": -1}, r"`warmup_steps` must be an int >= 0, got -1"),
        ({"name": "linear_warmup"}, r"needs `warmup_steps` > 0"),
        ({"name": "cosine"}, r"`schedule='cosine'` needs a finite number of training steps"),
        ({"name": "flat_cosine", "total_steps": math.inf}, r"needs a finite number"),
        ({"name": "cosine", "total_steps": 10, "warmup_steps": 11}, r"must not exceed"),
        (
            {"name": "cosine", "total_steps": 10, "flat_fraction": 1.5},
            r"`flat_fraction` must be a float in \[0, 1\], got 1.5",
        ),
    ],
)
def test_options_outside_their_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LRSchedule(**kwargs)
