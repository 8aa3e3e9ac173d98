"""RangerConfig: each field's checks (wrong type: TypeError, wrong value: ValueError), the fields
that only Ranger reads, and the round trip through plain data (YAML, checkpoints)."""

from __future__ import annotations

import pytest

from lightning_ranger import RangerConfig
from lightning_ranger.optim.rectification import DEFAULT_RECTIFY_THRESHOLD


def test_the_default_rectify_threshold_is_radams():
    assert RangerConfig().rectify_threshold == DEFAULT_RECTIFY_THRESHOLD


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        (
            {"optimizer": "sgd"},
            r"`optimizer` must be one of 'radam', 'ranger', 'adam', 'adamw', got 'sgd'",
        ),
        ({"schedule": "step"}, r"`schedule` must be one of"),
        ({"lr": 0.0}, r"`lr` must be a float > 0, got 0.0"),
        ({"lr": -1e-3}, r"`lr` must be a float > 0"),
        ({"betas": (0.9, 1.0)}, r"`betas\[1\]` must be a float in \[0, 1\), got 1.0"),
        (
            {"rectify_threshold": 3},
            r"`rectify_threshold` must be a float >= 4 \(r_t is undefined below 4\), got 3",
        ),
        ({"k": 0}, r"`k` must be a positive int"),
        ({"alpha": 1.5}, r"`alpha` must be a float in \(0, 1\], got 1.5"),
        ({"warmup_steps": -5}, r"`warmup_steps` must be an int >= 0"),
        ({"schedule": "linear_warmup"}, r"needs `warmup_steps` > 0"),
        ({"flat_fraction": 2.0}, r"`flat_fraction` must be a float in \[0, 1\]"),
    ],
)
def test_a_field_outside_its_values_raises_value_error(fields, match):
    with pytest.raises(ValueError, match=match):
        RangerConfig(**fields)


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"optimizer": 1}, r"`optimizer` must be one of 'radam', 'ranger', 'adam', 'adamw', got 1"),
        ({"lr": "big"}, r"`lr` must be a float > 0, got 'big'"),
        ({"lr": True}, r"`lr` must be a float > 0, got True"),
        ({"betas": "fast"}, r"`betas` must be a pair of floats"),
        ({"k": 2.5}, r"`k` must be a positive int, got 2.5"),
        ({"monitor": "yes"}, r"`monitor` must be a bool, got 'yes'"),
        ({"gradient_centralization": 1}, r"`gradient_centralization` must be a bool, got 1"),
        ({"no_decay_norm_and_bias": None}, r"`no_decay_norm_and_bias` must be a bool, got None"),
        ({"slow_weight_eval": 0}, r"`slow_weight_eval` must be a bool, got 0"),
        ({"decoupled_weight_decay": 1}, r"`decoupled_weight_decay` must be a bool"),
    ],
)
def test_a_field_of_the_wrong_type_raises_type_error(fields, match):
    with pytest.raises(TypeError, match=match):
        RangerConfig(**fields)


def test_lookahead_fields_are_ignored_for_other_optimizers():
    assert RangerConfig(optimizer="radam", k=0, alpha=7.0).k == 0


def test_config_from_plain_data():
    config = RangerConfig(optimizer="adam", betas=(0.8, 0.9), schedule="cosine")
    assert RangerConfig.from_value(config) is config
    assert RangerConfig.from_value(config.as_dict()) == config
    assert RangerConfig.from_value({"betas": [0.5, 0.6]}).betas == (0.5, 0.6)
    with pytest.raises(ValueError, match=r"unknown `ranger` fields \['learning_rate'\]"):
        RangerConfig.from_value({"learning_rate": 1.0})
    with pytest.raises(TypeError, match="must be a RangerConfig or a dict of its fields, got int"):
        RangerConfig.from_value(5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"`lr` must be a float > 0, got '1e-3'"):
        RangerConfig.from_value({"lr": "1e-3"})
