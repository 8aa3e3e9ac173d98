"""Lookahead with 2 CPU processes: DDP, FSDP2 (``ModelParallelStrategy`` with ``fully_shard``) and
FSDP1 (``FSDPStrategy``, through the CPU test strategy of ``helpers/sharded.py``).

One launch of ``scripts/lookahead_distributed.py`` in 2 processes (``helpers/launch.py``) runs every
variant (spawn-based tests pay the start-up of Python, torch and Lightning per process, so there is
a single launch); the tests here compare what it saved.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed.checkpoint as dcp
from helpers.asserts import assert_close, assert_equal
from helpers.launch import run_two_processes
from helpers.models import TinyNet
from helpers.references import tiny_lookahead_reference
from scripts.lookahead_distributed import (
    CKPT,
    NAN_AT_STEP,
    UNINTERRUPTED_ONLY,
    VARIANTS,
    K,
)

from lightning_ranger.callbacks.lookahead import FAST_WEIGHTS_KEY

pytestmark = pytest.mark.distributed

# Fitted, checkpointed after epoch 0 and resumed from there.
RESUMED = tuple(v for v in VARIANTS if not v.endswith(UNINTERRUPTED_ONLY))
# Fitted uninterrupted only, with a NaN gradient on rank NAN_RANK before step NAN_AT_STEP.
NAN_VARIANTS = tuple(v for v in VARIANTS if v.endswith("_nan"))
# Fitted uninterrupted only, from parameters created on the meta device.
META_VARIANTS = tuple(v for v in VARIANTS if v.endswith("_meta"))


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("lookahead_distributed")
    run_two_processes(
        "lookahead_distributed",
        str(out),
        *VARIANTS,
        "fsdp2_tied",
        timeout=900,
    )
    return out


def _record(out: Path, variant: str, run: str, rank: int) -> dict:
    return torch.load(out / f"{variant}_{run}_rank{rank}.pt", weights_only=True)


def test_meta_parameters_are_copied_once_lightning_materialized_them(out: Path) -> None:
    records = [_record(out, "fsdp2_meta", "uninterrupted", rank) for rank in (0, 1)]
    for record in records:
        assert record["step"] == 15
        assert_equal(record["start_slow"], record["start_fast"])
        assert_equal(record["start_fast"], records[0]["start_fast"])
        assert all(
            t.device.type == "cpu" and torch.isfinite(t).all() for t in record["slow"].values()
        )
    start, end = records[0]["start_fast"], records[0]["slow"]
    assert all(start[n].abs().sum() > 0 for n in start)  # initialised, not the empty memory's zeros
    assert any(not torch.equal(start[n], end[n]) for n in start)  # and trained from there


@pytest.mark.parametrize("variant", NAN_VARIANTS)
def test_a_nan_on_one_ranks_shard_restores_every_rank_as_a_hand_loop_does(
    out: Path, variant: str
) -> None:
    # The NaN of rank 1's half batch spoils the full one.
    ref_fast, ref_slow = tiny_lookahead_reference(TinyNet(), epochs=3, k=K, nan_at_step=NAN_AT_STEP)
    records = [_record(out, variant, "uninterrupted", rank) for rank in (0, 1)]
    for record in records:
        assert record["restores"] == 1
        assert_close(record["fast"], ref_fast, atol=1e-6)
        assert_close(record["slow"], ref_slow, atol=1e-6)
    # Rank 0's weights were finite: it restores because the flag is reduced over the ranks, and
    # its warning names rank 1's parameter.
    assert len(records[0]["warnings"]) == 1
    assert f"in parameter 'net.layers.out.bias' at step {NAN_AT_STEP}" in records[0]["warnings"][0]
    assert records[1]["warnings"] == []  # rank zero warns alone


@pytest.fixture(scope="module")
def reference() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """One process on the full batches of 4 (each rank takes half of each)."""
    return tiny_lookahead_reference(TinyNet(), epochs=3, k=K)


@pytest.mark.parametrize("variant", RESUMED)
def test_ranks_agree(out: Path, variant: str) -> None:
    for run in ("uninterrupted", "first"):
        record = _record(out, variant, run, 0)
        for key in ("fast", "slow"):
            assert_equal(_record(out, variant, run, 1)[key], record[key])
    # 5 steps, 2 after the last sync: the fast weights have moved on from the slow ones.
    first = _record(out, variant, "first", 0)
    assert any(not torch.equal(first["fast"][n], first["slow"][n]) for n in first["fast"])


@pytest.mark.parametrize("variant", RESUMED)
def test_resume_restores_the_weights_of_the_checkpoint(out: Path, variant: str) -> None:
    first = _record(out, variant, "first", 0)
    for rank in (0, 1):
        resumed = _record(out, variant, "resumed", rank)
        assert_equal(resumed["start_fast"], first["fast"])
        assert_equal(resumed["start_slow"], first["slow"])


@pytest.mark.parametrize("variant", RESUMED)
def test_resume_is_bit_exact(out: Path, variant: str) -> None:
    uninterrupted = _record(out, variant, "uninterrupted", 0)
    assert uninterrupted["step"] == 15
    for key in ("fast", "slow"):
        for rank in (0, 1):
            # Resumed from the epoch-0 checkpoint, 2 steps into a 3-step cycle.
            assert_equal(_record(out, variant, "resumed", rank)[key], uninterrupted[key])


@pytest.mark.parametrize(
    "variant", ["ddp", "fsdp2", "fsdp2_full", "fsdp2_root", "fsdp1", "fsdp1_root"]
)
def test_two_processes_on_half_batches_match_one_on_full_batches(
    out: Path, variant: str, reference: tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]
) -> None:
    record = _record(out, variant, "uninterrupted", 0)
    assert_close(record["fast"], reference[0], atol=1e-6)
    assert_close(record["slow"], reference[1], atol=1e-6)


@pytest.mark.parametrize("variant", ["fsdp1", "fsdp1_bf16"])
def test_fsdp1_checkpoint_holds_full_slow_and_fast_weights(out: Path, variant: str) -> None:
    """Gathered from the flat shards into the shapes of Lightning's full state dict (rank 0)."""
    checkpoint = torch.load(out / variant / "first" / CKPT, weights_only=True)
    first = _record(out, variant, "first", 0)
    assert checkpoint["callbacks"]["Lookahead"] == {
        "synced_at_step": 3,
        "names": list(first["fast"]),
        "restores": 0,
    }
    slow = {n: checkpoint["state_dict"][n] for n in first["slow"]}
    assert all(t.dtype == torch.float32 for t in slow.values())
    assert_equal(slow, first["slow"])
    assert_equal(checkpoint[FAST_WEIGHTS_KEY], first["fast"])


def _read_sharded(path: Path, slow: dict[str, Any], fast: dict[str, Any]) -> tuple[dict, dict]:
    """The slow and fast weights of a distributed checkpoint as full tensors shaped like ``slow``
    and ``fast``, read in this single process."""
    state_dict: dict[str, Any] = {n: torch.empty_like(t) for n, t in slow.items()}
    state_dict[FAST_WEIGHTS_KEY] = {n: torch.empty_like(t) for n, t in fast.items()}
    dcp.load({"state_dict": state_dict}, checkpoint_id=path)
    return {n: state_dict[n] for n in slow}, state_dict[FAST_WEIGHTS_KEY]


def test_sharded_checkpoint_holds_per_rank_shards_of_both_weights(out: Path) -> None:
    path = out / "fsdp2" / "first" / "epoch=0-step=5.ckpt"
    assert {"__0_0.distcp", "__1_0.distcp", "meta.pt"} <= {p.name for p in path.iterdir()}
    metadata = dcp.FileSystemReader(path).read_metadata().state_dict_metadata
    first = _record(out, "fsdp2", "first", 0)
    for name, fast in first["fast"].items():
        for key in (f"state_dict.{name}", f"state_dict.{FAST_WEIGHTS_KEY}.{name}"):
            assert len(metadata[key].chunks) == (2 if fast.shape[0] > 1 else 1), key
    slow, fast = _read_sharded(path, first["slow"], first["fast"])
    assert_equal(slow, first["slow"])
    assert_equal(fast, first["fast"])
    callbacks = torch.load(path / "meta.pt", weights_only=False)["callbacks"]
    assert callbacks["Lookahead"] == {
        "synced_at_step": 3,
        "names": list(first["fast"]),
        "restores": 0,
    }


def test_bf16_true_slow_shards_are_float32_and_follow_a_float32_run(
    out: Path, reference: tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]
) -> None:
    path = out / "fsdp2_bf16" / "uninterrupted" / "epoch=2-step=15.ckpt"
    metadata = dcp.FileSystemReader(path).read_metadata().state_dict_metadata
    for name in reference[1]:
        assert metadata[f"state_dict.{name}"].properties.dtype == torch.float32
        assert metadata[f"state_dict.{FAST_WEIGHTS_KEY}.{name}"].properties.dtype == torch.bfloat16
    slow, _ = _read_sharded(path, reference[1], reference[0])
    assert any(not torch.equal(t, t.bfloat16().float()) for t in slow.values())
    assert_close(slow, reference[1], atol=2e-2)


def test_sharded_checkpoint_holds_slow_weights_under_every_key_of_a_tied_weight(out: Path) -> None:
    """FSDP2 with a language model whose output layer is its embedding: both keys of the shared
    tensor hold its slow shards in the distributed checkpoint."""
    record = torch.load(out / "fsdp2_tied_rank0.pt", weights_only=True)
    slow, fast = record["slow"]["emb.weight"], record["fast"]["emb.weight"]
    assert not torch.equal(slow, fast)  # 2 steps after the sync at step 4
    state_dict = {"emb.weight": torch.empty_like(slow), "out.weight": torch.empty_like(slow)}
    dcp.load({"state_dict": state_dict}, checkpoint_id=out / "fsdp2_tied" / "epoch=1-step=6.ckpt")
    assert_equal(state_dict, {"emb.weight": slow, "out.weight": slow})
