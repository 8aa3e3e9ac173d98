"""``lightning_ranger.optim.Lookahead`` and ``Ranger`` in loops of one's own with 2 processes:
Lightning Fabric with DDP, and torch's ``fully_shard`` (FSDP2) with distributed checkpoints.

One launch of ``scripts/plain_loops.py`` runs both; the tests compare what it saved with one
process (Fabric on the full batches, a plain-PyTorch Lookahead loop) and with itself resumed.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from helpers.asserts import assert_close, assert_equal, params
from helpers.data import batches_of, make_data
from helpers.launch import run_two_processes
from helpers.models import TinyNet
from helpers.references import tiny_lookahead_reference
from lightning.fabric import Fabric
from scripts.plain_loops import EPOCHS, HISTORY, PROBE, VAL, K
from torch import nn

from lightning_ranger import RAdam, Ranger
from lightning_ranger.optim import Lookahead, RectificationTracker

pytestmark = pytest.mark.distributed

FSDP2 = ["fsdp2_layers", "fsdp2_root"]


@pytest.fixture(scope="module")
def records(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("plain_loops")
    run_two_processes("plain_loops", str(out), "fabric", "fsdp2", timeout=600)
    return torch.load(out / "plain_loops.pt", weights_only=True)


@pytest.fixture(scope="module")
def reference() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """A plain-PyTorch Lookahead loop on one process, keyed as ``TinyNet`` names parameters."""
    fast, slow = tiny_lookahead_reference(TinyNet(), epochs=EPOCHS, k=K)
    return _unprefixed(fast), _unprefixed(slow)


def _unprefixed(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name.removeprefix("net."): t for name, t in weights.items()}


def test_fabric_on_2_processes_equals_fabric_on_one(records: dict[str, Any]) -> None:
    fabric = Fabric(accelerator="cpu", devices=1)
    net = TinyNet()
    model, optimizer = fabric.setup(net, Ranger(net.parameters(), lr=0.05, k=K))
    losses = []
    for _ in range(EPOCHS):
        for x, y in batches_of(make_data(20), 4):
            fabric.backward(nn.functional.mse_loss(model(x), y))
            optimizer.step()
            optimizer.zero_grad()
        with optimizer.slow_weights(), torch.no_grad():
            losses.append(nn.functional.mse_loss(model(VAL.tensors[0]), VAL.tensors[1]).item())
    record = records["fabric"]
    assert record["steps"] == optimizer.steps == 15
    assert_close(record["fast"], params(net), atol=1e-6)
    with optimizer.slow_weights():
        assert_close(record["slow"], params(net), atol=1e-6)
    assert record["losses"] == pytest.approx(losses, abs=1e-6)


def test_fabric_follows_a_plain_lookahead_loop(
    records: dict[str, Any], reference: tuple[dict, dict]
) -> None:
    assert_close(records["fabric"]["fast"], reference[0], atol=1e-6)
    assert_close(records["fabric"]["slow"], reference[1], atol=1e-6)


def test_fabric_save_and_load_resume_mid_cycle_bit_for_bit(records: dict[str, Any]) -> None:
    uninterrupted, resumed = records["fabric"], records["fabric_resumed"]
    assert_equal(resumed["fast"], uninterrupted["fast"])
    assert_equal(resumed["slow"], uninterrupted["slow"])
    assert resumed["losses"][-1] == uninterrupted["losses"][-1]


@pytest.mark.parametrize("name", FSDP2)
def test_fully_shard_follows_a_plain_lookahead_loop_with_sharded_slow_weights(
    records: dict[str, Any], reference: tuple[dict, dict], name: str
) -> None:
    record = records[name]
    assert record["steps"] == 15
    assert record["slow_is_sharded"]
    assert_close(record["fast"], reference[0], atol=1e-6)
    assert_close(record["slow"], reference[1], atol=1e-6)
    assert "pass `module=`" in record["without_module"]


@pytest.mark.parametrize("name", FSDP2)
def test_a_distributed_checkpoint_resumes_mid_cycle_bit_for_bit(
    records: dict[str, Any], name: str
) -> None:
    uninterrupted, resumed = records[name], records[f"{name}_resumed"]
    assert resumed["steps"] == uninterrupted["steps"] == 15
    assert_equal(resumed["fast"], uninterrupted["fast"])
    assert_equal(resumed["slow"], uninterrupted["slow"])


@pytest.mark.parametrize("name", FSDP2)
def test_forwards_inside_and_after_slow_weights_compute_with_the_weights_shown(
    records: dict[str, Any], name: str
) -> None:
    """The root keeps its unsharded parameters after each evaluation forward: the forward after
    the block must gather the fast weights again."""
    record = records[name]
    x, y = VAL.tensors
    net = TinyNet()
    for weights, key in ((record["slow"], "slow_loss"), (record["fast"], "fast_loss")):
        net.load_state_dict(weights)
        with torch.no_grad():
            expected = nn.functional.mse_loss(net(x), y).item()
        assert record[key] == pytest.approx(expected, abs=1e-6)
    assert record["fast_loss_after"] == record["fast_loss"] != record["slow_loss"]


@pytest.mark.parametrize("name", FSDP2)
def test_the_tracker_reduces_over_shards_and_resumes_from_a_gathered_state(
    records: dict[str, Any], name: str
) -> None:
    """Each rank probes the coordinates of its shards; the values are those of one process on the
    full batches, and a resume from the gathered state mid-run gives the same values."""
    net = TinyNet()
    optimizer = Lookahead(RAdam(net.parameters(), lr=0.05), k=K)
    tracker = RectificationTracker(optimizer, probe_size=PROBE, probe_history=HISTORY)
    for _ in range(EPOCHS):
        for x, y in batches_of(make_data(20), 4):
            nn.functional.mse_loss(net(x), y).backward()
            optimizer.step()
            tracker.update()
            optimizer.zero_grad()
    expected = tracker.compute()
    sharded, resumed = records[name]["tracker"], records[f"{name}_resumed"]["tracker"]
    assert resumed == sharded
    assert sharded.keys() == expected.keys()
    assert sharded["rectification/rho_t"] == expected["rectification/rho_t"]
    for metric, value in expected.items():
        assert sharded[metric] == pytest.approx(value, rel=1e-4, abs=1e-9), metric
