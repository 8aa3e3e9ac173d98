"""GradientCentralization with 2 CPU processes (gloo): DDP and FSDP2 match one process.

One launch of this file under ``torch.distributed.run --nproc_per_node=2`` (its ``__main__``
part) fits the same model three times in one process group (DDP; FSDP2 through
``ModelParallelStrategy`` with ``fully_shard``; FSDP2 with ``min_ndim=1``, whose sharded 1-D
gradients need collectives), then centralizes DTensors of other placements directly, and saves
what each rank got; the tests compare that with one process (see ``_launch.py``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from _launch import run_two_processes
from _lookahead_helpers import Net, TinyNet, assert_close, assert_equal, batches_of, make_data

from lightning_ranger.callbacks.gradient_centralization import GradientCentralization

pytestmark = pytest.mark.distributed

# variant: (FSDP2, min_ndim)
VARIANTS = {"ddp": (False, 2), "fsdp2": (True, 2), "fsdp2_min_ndim_1": (True, 1)}
EPOCHS = 2


# ---------------------------------------------------------------- the 2-process part


def fit(out: Path, variant: str) -> None:
    from _lookahead_distributed_script import ShardedNet, full_weights
    from _lookahead_helpers import make_trainer
    from lightning.pytorch.strategies import ModelParallelStrategy
    from torch.distributed.tensor import DTensor

    sharded, min_ndim = VARIANTS[variant]
    model = (ShardedNet if sharded else Net)("radam")
    strategy: Any = "ddp"
    if sharded:
        strategy = ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1)
    callback = GradientCentralization(min_ndim=min_ndim)
    trainer = make_trainer(
        out / variant, [callback], devices=2, strategy=strategy, max_epochs=EPOCHS
    )
    trainer.fit(model)
    record = {
        "weights": full_weights(model, trainer),
        "step": trainer.global_step,
        "sharded": [isinstance(p, DTensor) for p in model.parameters()],
    }
    torch.save(record, out / f"{variant}_rank{trainer.global_rank}.pt")


def placements(out: Path) -> None:
    """Centralize DTensors of several placements (uneven shards included) on a 2-rank mesh."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Partial, Replicate, Shard, distribute_tensor

    from lightning_ranger.callbacks.gradient_centralization import centralize_gradients

    mesh = init_device_mesh("cpu", (2,))
    torch.manual_seed(0)  # the same full tensors on both ranks
    full = {
        "rows_uneven": (torch.randn(5, 6), [Shard(0)]),
        "conv_rows": (torch.randn(4, 3, 2, 2), [Shard(0)]),
        "columns": (torch.randn(4, 7), [Shard(1)]),  # tensor parallel's row-wise sharding
        "vector": (torch.randn(5), [Shard(0)]),
        "replicated": (torch.randn(3, 4), [Replicate()]),
    }
    tensors = {n: distribute_tensor(t, mesh, p) for n, (t, p) in full.items()}
    partial = torch.randn(3, 5)
    half = partial / 2 + (1 if dist.get_rank() == 0 else -1)  # the halves add up to `partial`
    tensors["partial_sum"] = DTensor.from_local(half, mesh, [Partial("sum")], run_check=False)
    full["partial_sum"] = (partial, [Partial("sum")])
    centralize_gradients(list(tensors.values()))
    got = {n: t.full_tensor() for n, t in tensors.items()}
    torch.save(
        {"got": got, "full": {n: t for n, (t, _) in full.items()}},
        out / f"placements_rank{dist.get_rank()}.pt",
    )


def main(out: Path) -> None:
    for variant in VARIANTS:
        fit(out, variant)
    placements(out)


# ---------------------------------------------------------------- the tests


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("gradient_centralization_distributed")
    run_two_processes(Path(__file__), str(out), timeout=300)
    return out


def _record(out: Path, name: str, rank: int) -> dict:
    return torch.load(out / f"{name}_rank{rank}.pt", weights_only=True)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_two_processes_on_half_batches_match_one_on_full_batches(out: Path, variant: str) -> None:
    from test_gradient_centralization import reference_run

    sharded, min_ndim = VARIANTS[variant]
    first, second = _record(out, variant, 0), _record(out, variant, 1)
    assert first["step"] == second["step"] == 5 * EPOCHS
    assert first["sharded"] == [sharded] * 4
    assert_equal(second["weights"], first["weights"])  # ranks identical
    expected, _ = reference_run(
        TinyNet(), batches_of(make_data(20), 4), epochs=EPOCHS, min_ndim=min_ndim
    )
    assert_close(first["weights"], expected, atol=1e-6)


def test_dtensor_placements_match_full_tensors(out: Path) -> None:
    from test_gradient_centralization import centralized

    for rank in (0, 1):
        record = _record(out, "placements", rank)
        assert record["got"].keys() == record["full"].keys()
        for name, got in record["got"].items():
            torch.testing.assert_close(
                got, centralized(record["full"][name]), rtol=0, atol=1e-6, msg=name
            )


if __name__ == "__main__":
    from _launch import leave_process_group

    main(Path(sys.argv[1]))
    leave_process_group()
