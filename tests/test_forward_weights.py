"""The weights that every forward computes with, under Lookahead with and without SlowWeightSwap,
with 2 processes: DDP, FSDP2 (``ModelParallelStrategy``: each linear layer its own unit, or the
root holding every parameter) and FSDP1 (each linear layer its own unit, or the root unit holding
every parameter; ``FULL_SHARD``, ``SHARD_GRAD_OP`` and ``NO_SHARD``).

FSDP keeps the root's unsharded parameters after a forward without backward; a swap that wrote
only the shards would let the next training forward compute on the slow weights of the validation
before it. One launch of ``scripts/forward_weights.py`` runs every strategy and scenario; the tests
compare each training forward with the same run without validation, checkpoints or swap
(bit for bit) and with a plain-PyTorch Lookahead loop on one process (within 1e-6).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from helpers.asserts import assert_close, assert_equal
from helpers.launch import run_two_processes
from helpers.references import tiny_lookahead_forward_weights
from scripts.forward_weights import EPOCHS, SCENARIOS, STRATEGIES, K, scenarios

pytestmark = pytest.mark.distributed

#: 5 training batches an epoch.
STEPS = 5 * EPOCHS
#: (strategy, scenario) pairs that train, against which baseline.
RUNS = [
    (strategy, scenario)
    for strategy in STRATEGIES
    for scenario in scenarios(strategy)
    if not scenario.endswith("baseline")
]


def _baseline(scenario: str) -> str:
    return "two_fits_baseline" if scenario.startswith("two_fits") else "baseline"


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("forward_weights")
    run_two_processes("forward_weights", str(out), *STRATEGIES, timeout=900)
    return out


def _record(out: Path, strategy: str, scenario: str) -> dict[str, Any]:
    return torch.load(out / f"{strategy}_{scenario}.pt", weights_only=True)


@pytest.mark.parametrize(("strategy", "scenario"), RUNS)
def test_training_forwards_are_those_of_the_run_without_validation_checkpoints_or_swap(
    out: Path, strategy: str, scenario: str
) -> None:
    record = _record(out, strategy, scenario)
    baseline = _record(out, strategy, _baseline(scenario))
    assert record["step"] == baseline["step"] == STEPS
    assert len(record["training"]) == len(baseline["training"]) == STEPS
    pairs = zip(record["training"], baseline["training"], strict=True)
    for step, (used, expected) in enumerate(pairs):
        for name in expected:
            assert torch.equal(used[name], expected[name]), f"step {step + 1}: {name}"
    assert_equal(record["fast"], baseline["fast"])
    assert_equal(record["slow"], baseline["slow"])


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("baseline", ["baseline", "two_fits_baseline"])
def test_training_forwards_follow_a_plain_lookahead_loop(
    out: Path, strategy: str, baseline: str
) -> None:
    if baseline not in scenarios(strategy):
        pytest.skip(f"{strategy} does not run two fits on one module")
    fits = [EPOCHS - 1, 1] if baseline.startswith("two_fits") else [EPOCHS]
    expected = tiny_lookahead_forward_weights(fits, k=K)
    used = _record(out, strategy, baseline)["training"]
    assert len(used) == len(expected) == STEPS
    for u, e in zip(used, expected, strict=True):
        assert_close(u, e, atol=1e-6)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_validation_computes_on_the_slow_weights_and_training_on_the_fast_ones(
    out: Path, strategy: str
) -> None:
    record = _record(out, strategy, "sanity")
    # The sanity check (2 batches) on the initial weights, then 2 batches after each epoch.
    assert len(record["evaluation"]) == 2 + 2 * EPOCHS
    first = record["training"][0]
    assert_equal(record["evaluation"][0], first)
    # The validation after epoch 0 (step 5, 1 step after the sync at 4) ran on other weights than
    # the next training step: the slow ones.
    after_epoch_0, next_step = record["evaluation"][2], record["training"][5]
    assert any(not torch.equal(after_epoch_0[n], next_step[n]) for n in next_step)
    assert_equal(record["evaluation"][-1], record["slow"])
    # Without the swap, validation computes on the fast weights of training.
    no_swap = _record(out, strategy, "no_swap")
    assert_equal(no_swap["evaluation"][2], _record(out, strategy, "baseline")["training"][5])
    assert_equal(no_swap["evaluation"][-1], no_swap["fast"])


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_validates_on_the_same_slow_weights(out: Path, strategy: str) -> None:
    record, ddp = _record(out, strategy, "interval"), _record(out, "ddp", "interval")
    # The sanity check, then validations after batches 2 and 4 of each epoch (of 5), 2 batches each.
    assert len(record["evaluation"]) == len(ddp["evaluation"]) == 2 + 2 * 2 * EPOCHS
    for used, expected in zip(record["evaluation"], ddp["evaluation"], strict=True):
        assert_close(used, expected, atol=1e-6)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_forwards_after_fit_compute_on_the_weights_shown(out: Path, strategy: str) -> None:
    show = _record(out, strategy, "show")
    fast, slow = show["fast"], show["slow"]
    assert any(not torch.equal(fast[n], slow[n]) for n in fast)
    assert len(show["after_fit"]) == 3
    for used, expected in zip(show["after_fit"], (fast, slow, fast), strict=True):
        assert_equal(used, expected)
    # `final_weights="slow"` leaves the slow weights where the next forward reads them.
    final_slow = _record(out, strategy, "final_slow")
    assert_equal(final_slow["after_fit"][0], final_slow["slow"])
    assert_equal(final_slow["slow"], slow)


def test_every_scenario_is_tested() -> None:
    tested = {scenario for _, scenario in RUNS} | {"baseline", "two_fits_baseline"}
    assert tested == set(SCENARIOS)
