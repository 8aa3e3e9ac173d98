"""RectificationMonitor with 2 CPU processes (gloo): DDP, FSDP2 and FSDP1 log the single-process
values; and, on one process with a tracker that reduces as under FSDP1, a rank that holds none of
a group's optimizer state still joins the reduce.

The 2-process run is ``scripts/monitor_distributed.py`` under ``torchrun``, in a subprocess: both
``DDPStrategy`` and ``ModelParallelStrategy`` launch their processes by re-running the command
line, which inside pytest would re-run the test session. Under torchrun the processes exist from
the start, so one launch trains with DDP, FSDP2 and FSDP1 (``FSDPStrategy`` through the CPU test
strategy of ``helpers/sharded.py``) in the same process group (one process start-up for all).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist
from helpers.launch import run_two_processes
from helpers.monitor import PROBE, TWO_GROUPS, Reference, Regressor, events, scalars, trainer

from lightning_ranger import RAdam
from lightning_ranger.callbacks.rectification_monitor import RectificationMonitor
from lightning_ranger.optim import RectificationTracker
from lightning_ranger.optim import adaptive_lr as stats

STEPS = list(range(1, 13))
EXACT = ["rho_t", "r_t", "rho_t_threshold", "r_t_linear_warmup", "nonfinite_fraction"]
#: Sums over shards and the probe's gradients (reduced in another order): equal up to rounding.
SHARDED = [
    ("adaptive_lr_mean", 1e-4),
    ("adaptive_lr_var", 1e-3),
    ("eps_dominated_fraction", 1e-6),
    ("adaptive_lr_p05", 1e-4),
    ("adaptive_lr_p50", 1e-4),
    ("adaptive_lr_p95", 1e-4),
    ("adaptive_lr_var_ratio", 1e-3),
    ("adaptive_lr_rel_var", 1e-3),
    ("rectified_var_ratio", 1e-3),
    ("adaptive_lr_var_ratio_gaussian", 1e-6),
]


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("monitor_distributed")
    run_two_processes("monitor_distributed", str(out), timeout=600)
    return out


@pytest.mark.distributed
def test_ddp_fsdp2_and_fsdp1_give_single_process_values(out, tmp_path):

    facts = json.loads((out / "facts.json").read_text())
    assert [f["world_size"] for f in facts["ddp"]] == [2, 2]
    assert [f["global_step"] for name in facts for f in facts[name]] == [12] * 6
    # DDP replicates the state (83 elements on each rank); FSDP2 splits it into DTensor shards.
    assert [(f["dtensor"], f["local_numel"]) for f in facts["ddp"]] == [(False, 83)] * 2
    assert all(f["dtensor"] for f in facts["fsdp2"])
    assert sum(f["local_numel"] for f in facts["fsdp2"]) == 83
    assert all(f["local_numel"] < 83 for f in facts["fsdp2"])
    # FSDP1 splits one flat parameter: each rank holds the state of its slices, in plain tensors.
    assert not any(f["dtensor"] for f in facts["fsdp1"])
    assert sum(f["local_numel"] for f in facts["fsdp1"]) == 83
    assert all(0 < f["local_numel"] < 83 for f in facts["fsdp1"])

    # One process, the same 8 samples per step that the two ranks of 4 read together.
    reference = Reference()
    monitor = RectificationMonitor(logging_interval=1, probe_size=PROBE)
    single = trainer(tmp_path / "single", 12, [monitor, reference])
    single.fit(Regressor(groups=TWO_GROUPS, batch_size=8))
    expected = events(tmp_path / "single")

    for i in (1, 2):
        # The single-process run itself matches the statistics computed by hand.
        mean = scalars(expected, f"rectification/adaptive_lr_mean/pg{i}")
        for step in STEPS:
            assert mean[step] == pytest.approx(reference.values[step][(0, i - 1)]["mean"], rel=1e-4)
        for name in ("ddp", "fsdp2", "fsdp1"):
            got = events(out / name)
            assert set(got.Tags()["scalars"]) == set(expected.Tags()["scalars"])
            for metric in EXACT:
                tag = f"rectification/{metric}/pg{i}"
                assert scalars(got, tag) == pytest.approx(scalars(expected, tag), rel=1e-6)
            for metric, rel in SHARDED:
                tag = f"rectification/{metric}/pg{i}"
                assert scalars(got, tag) == pytest.approx(scalars(expected, tag), rel=rel), name
            # The probe's draw series exist from step 2 on in every run.
            assert len(scalars(got, f"rectification/adaptive_lr_var_ratio/pg{i}")) == 11
            tag = f"rectification/adaptive_lr/pg{i}"
            histograms = got.Histograms(tag)
            assert [h.step for h in histograms] == STEPS
            for h, e in zip(histograms, expected.Histograms(tag), strict=True):
                h, e = h.histogram_value, e.histogram_value
                assert h.num == e.num == {1: 56, 2: 27}[i]  # 6 * 8 + 8, 8 * 3 + 3
                for field in ("min", "max", "sum", "sum_squares"):
                    assert getattr(h, field) == pytest.approx(getattr(e, field), rel=1e-4)
                np.testing.assert_array_equal(h.bucket, e.bucket)
                np.testing.assert_array_equal(h.bucket_limit, e.bucket_limit)


@pytest.mark.distributed
@pytest.mark.parametrize("name", ["fsdp2", "fsdp1"])
def test_a_sharded_resume_continues_the_draw_series(out, name):
    """Each rank probes other coordinates; the checkpoint holds their history gathered over the
    ranks, and each rank takes its own back: resumed after step 12, the run logs what the
    uninterrupted one logs, the variance over draws from the first step on."""
    long, resumed = events(out / f"{name}_long"), events(out / f"{name}_resumed")
    for i in (1, 2):
        tag = f"rectification/adaptive_lr_var_ratio/pg{i}"
        after = scalars(resumed, tag)
        assert sorted(after) == list(range(13, 25))
        assert after == {step: scalars(long, tag)[step] for step in after}


def test_a_rank_without_optimizer_state_still_joins_the_fsdp1_reduce(monkeypatch):
    """Under FSDP1 a rank may hold none of the optimizer state (its slices are all padding, or
    another rank holds all of an optimizer's parameters): it still sends its rows of zeros, or the
    other ranks would wait for it in the all-reduce forever."""
    params = [torch.nn.Parameter(torch.zeros(0)), torch.nn.Parameter(torch.zeros(0))]
    optimizer = RAdam([{"params": params[:1]}, {"params": params[1:]}])
    tracker = RectificationTracker(optimizer, probe_size=8, probe_history=4, pool_groups=False)
    tracker.sharded = True  # as when FSDP1 shards the parameters over 2 ranks
    reduced: list[tuple[torch.Tensor, Any]] = []
    monkeypatch.setattr(tracker, "_all_reduce", lambda t, op: reduced.append((t.clone(), op)))
    assert tracker.compute() == {}
    assert [op for _, op in reduced] == [dist.ReduceOp.SUM, dist.ReduceOp.MAX]
    sums = reduced[0][0]
    # Per group: the sums over the weights and histogram buckets, and an empty probe row.
    assert sums.shape == (2 * (stats.BUCKETS + len(stats.BUCKET_LIMITS)),) and not sums.any()
