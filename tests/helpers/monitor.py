"""The RectificationMonitor tests' pieces: a tiny regressor, a quiet Trainer logging to
TensorBoard, readers for the event files, a callback that computes the expected statistics by
hand (numpy, float64) from the optimizer state after every optimizer step, and the checks of the
logged series against it."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from lightning_ranger import RAdam

N_SAMPLES = 96


#: Probe size of the 2-process runs: 40 of the 83 coordinates, spread over both ranks' shards.
PROBE = 40


#: The series logged at every logging event once the optimizer has state.
METRICS = ["rho_t", "r_t", "rho_t_threshold", "r_t_linear_warmup"]
METRICS += ["adaptive_lr_mean", "adaptive_lr_var", "eps_dominated_fraction", "nonfinite_fraction"]
METRICS += ["adaptive_lr_p05", "adaptive_lr_p50", "adaptive_lr_p95"]
#: The variance over draws: from the second recorded step on (``GAUSSIAN``: while rho_t > 4).
DRAWS = ["adaptive_lr_var_ratio", "adaptive_lr_rel_var", "rectified_var_ratio"]
GAUSSIAN = "adaptive_lr_var_ratio_gaussian"
#: The base-10 logarithms logged beside the variance ratios and the quantiles (where positive).
LOGGED_LOG10 = [f"{m}_log10" for m in (DRAWS[0], GAUSSIAN, DRAWS[2], *METRICS[-3:])]

#: Two param groups (first and second linear layer) with different beta2 and thresholds.
TWO_GROUPS = [
    {"betas": (0.9, 0.999)},
    {"betas": (0.8, 0.95), "rectify_threshold": 8.0},
]


def dataset() -> TensorDataset:
    generator = torch.Generator().manual_seed(1234)
    x = torch.randn(N_SAMPLES, 6, generator=generator)
    y = torch.randn(N_SAMPLES, 3, generator=generator)
    return TensorDataset(x, y)


class Regressor(LightningModule):
    """``Linear(6, hidden) -> Tanh -> Linear(hidden, 3)`` with an MSE loss on a fixed dataset.

    Args:
        optimizer: ``"radam"`` (lightning_ranger), ``"adam"``, ``"adamax"``, ``"sgd"`` (torch).
        groups: options of one param group per linear layer; ``None``: one group for all.
        batch_size: per process; the samples are read in order (a distributed run splits each
            global batch across ranks with ``DistributedSampler(shuffle=False)``).
        two_optimizers: one optimizer per linear layer, stepped manually one after the other.
        hidden: width of the hidden layer (``10 * hidden + 3`` parameters).

    """

    def __init__(
        self,
        optimizer: str = "radam",
        groups: list[dict[str, Any]] | None = None,
        batch_size: int = 8,
        two_optimizers: bool = False,
        hidden: int = 8,
    ) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(6, hidden), nn.Tanh(), nn.Linear(hidden, 3))
        self.optimizer_name = optimizer
        self.groups = groups
        self.batch_size = batch_size
        self.two_optimizers = two_optimizers
        self.automatic_optimization = not two_optimizers

    def configure_model(self) -> None:
        if self.device_mesh is None:
            return
        from torch.distributed.fsdp import fully_shard

        mesh = self.device_mesh["data_parallel"]
        for layer in (self.net[0], self.net[2]):
            fully_shard(layer, mesh=mesh)
        fully_shard(self.net, mesh=mesh)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y)
        if self.two_optimizers:
            for optimizer in self.optimizers():
                optimizer.zero_grad()
            self.manual_backward(loss)
            for optimizer in self.optimizers():
                optimizer.step()
        return loss

    def _optimizer(self, params: Any, **options: Any) -> torch.optim.Optimizer:
        if self.optimizer_name == "radam":
            return RAdam(params, lr=1e-2, **options)
        if self.optimizer_name == "sgd":
            return torch.optim.SGD(params, lr=1e-2, **options)
        cls = {"adam": torch.optim.Adam, "adamax": torch.optim.Adamax}[self.optimizer_name]
        return cls(params, lr=1e-2, **options)

    def configure_optimizers(self) -> Any:
        layers = (self.net[0], self.net[2])
        if self.two_optimizers:
            return [self._optimizer(layer.parameters()) for layer in layers]
        if self.groups is None:
            return self._optimizer(self.parameters())
        return self._optimizer(
            [
                {"params": layer.parameters(), **g}
                for layer, g in zip(layers, self.groups, strict=True)
            ]
        )

    def train_dataloader(self) -> DataLoader:
        data = dataset()
        sampler = None
        if self.trainer.world_size > 1:
            sampler = DistributedSampler(
                data, self.trainer.world_size, self.trainer.global_rank, shuffle=False
            )
        return DataLoader(data, batch_size=self.batch_size, sampler=sampler, shuffle=False)


def tb_logger(root: Path) -> TensorBoardLogger:
    return TensorBoardLogger(root, name="", version=0, default_hp_metric=False)


def trainer(root: Path, max_steps: int, callbacks: list[Callback], **kwargs: Any) -> Trainer:
    """A quiet CPU Trainer logging every step to TensorBoard under ``root`` (or to ``logger``)."""
    kwargs.setdefault("logger", tb_logger(root))
    kwargs.setdefault("accelerator", "cpu")
    kwargs.setdefault("devices", 1)
    kwargs.setdefault("log_every_n_steps", 1)
    kwargs.setdefault("enable_checkpointing", False)
    return Trainer(
        default_root_dir=root,
        max_steps=max_steps,
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kwargs,
    )


def events(root: Path) -> EventAccumulator:
    """The events :func:`tb_logger` wrote under ``root``."""
    accumulator = EventAccumulator(
        str(root / "version_0"), size_guidance={"scalars": 0, "histograms": 0, "tensors": 0}
    )
    accumulator.Reload()
    return accumulator


def scalars(accumulator: EventAccumulator, tag: str) -> dict[int, float]:
    return {e.step: e.value for e in accumulator.Scalars(tag)}


def tf_bucket_limits() -> np.ndarray:
    """TensorBoard's default positive histogram buckets, written down independently."""
    limits = [1e-12]
    while limits[-1] < 1e20:
        limits.append(limits[-1] * 1.1)
    return np.array([*limits, np.finfo(np.float64).max])


class Reference(Callback):
    """After every optimizer step, the expected values of every group, computed by hand.

    ``self.values[global_step][(optimizer index, group index)]`` holds ``t``, ``mean``, ``var``,
    ``min``, ``max``, ``count``, ``sum``, ``sum_sq``, the bucket ``counts`` (per right limit
    of :func:`tf_bucket_limits`) and the ``sorted`` values of
    ``l_t = sqrt(1 - beta2^t) / (sqrt(v) + eps)`` over the group, and the share of elements with
    ``sqrt(v) < eps`` (``eps_dominated``).
    """

    def __init__(self) -> None:
        self.values: dict[int, dict[tuple[int, int], dict[str, Any]]] = {}
        self.limits = tf_bucket_limits()

    def on_train_batch_end(self, trainer: Trainer, *args: Any) -> None:
        if trainer.global_step in self.values or trainer.world_size > 1:
            return
        step_values = self.values[trainer.global_step] = {}
        for j, optimizer in enumerate(trainer.optimizers):
            for i, group in enumerate(optimizer.param_groups):
                states = [optimizer.state[p] for p in group["params"] if optimizer.state.get(p)]
                if not states or "exp_avg_sq" not in states[0]:
                    continue
                beta2, eps = group["betas"][1], group["eps"]
                parts = []
                for state in states:
                    t = float(state["step"])
                    v = state["exp_avg_sq"].detach().double().numpy().ravel()
                    parts.append(math.sqrt(1.0 - beta2**t) / (np.sqrt(v) + eps))
                lr = np.concatenate(parts)
                v_all = np.concatenate(
                    [s["exp_avg_sq"].detach().double().numpy().ravel() for s in states]
                )
                step_values[(j, i)] = {
                    "eps_dominated": float((np.sqrt(v_all) < eps).mean()),
                    "sorted": np.sort(lr),
                    "t": float(states[0]["step"]),
                    "mean": lr.mean(),
                    "var": lr.var(),
                    "min": lr.min(),
                    "max": lr.max(),
                    "count": lr.size,
                    "sum": lr.sum(),
                    "sum_sq": (lr * lr).sum(),
                    "counts": np.bincount(
                        np.searchsorted(self.limits, lr, side="left"), minlength=len(self.limits)
                    ),
                }


def fit(
    root: Path,
    model: LightningModule,
    monitor: Callback,
    max_steps: int = 12,
    callbacks_first: Sequence[Callback] = (),
    **kwargs: Any,
) -> tuple[Trainer, EventAccumulator, Reference]:
    """Train ``model`` with ``monitor`` (after ``callbacks_first``) and a :class:`Reference`; the
    Trainer, the events it logged and the reference."""
    reference = Reference()
    run = trainer(root, max_steps, [*callbacks_first, monitor, reference], **kwargs)
    run.fit(model)
    return run, events(root), reference


def closed_form(t: float, beta2: float, threshold: float) -> dict[str, float]:
    """rho_t, r_t (0 up to the threshold), the threshold and the linear warmup, by the paper."""
    r_inf = 2.0 / (1.0 - beta2) - 1.0
    rho_t = r_inf - 2.0 * t * beta2**t / (1.0 - beta2**t)
    r_t = 0.0
    if rho_t > threshold:
        r_t = math.sqrt((rho_t - 4) * (rho_t - 2) * r_inf / ((r_inf - 4) * (r_inf - 2) * rho_t))
    warmup = min(1.0, t / (2.0 / (1.0 - beta2)))
    return {"rho_t": rho_t, "r_t": r_t, "rho_t_threshold": threshold, "r_t_linear_warmup": warmup}


def check_group(
    accumulator: EventAccumulator,
    reference: Reference,
    key: tuple[int, int],
    suffix: str,
    beta2: float,
    threshold: float,
    steps: list[int],
    sampled: bool = False,
) -> None:
    """Every series of one group equals the closed forms and the statistics by hand (the mean and
    variance within 2% and 10% when they come from a sample of a group of over 65536 elements)."""
    series = {m: scalars(accumulator, f"rectification/{m}{suffix}") for m in METRICS}
    for metric, values in series.items():
        assert sorted(values) == steps, metric
    for step in steps:
        expected = reference.values[step][key]
        for metric, value in closed_form(expected["t"], beta2, threshold).items():
            assert series[metric][step] == pytest.approx(value, rel=1e-6, abs=1e-12), metric
        mean_rel, var_rel = (0.02, 0.1) if sampled else (1e-4, 1e-3)
        assert series["adaptive_lr_mean"][step] == pytest.approx(expected["mean"], rel=mean_rel)
        assert series["adaptive_lr_var"][step] == pytest.approx(expected["var"], rel=var_rel)
        # From the sample of a large group: within 4 standard errors of a share (0.5 / 256).
        eps_abs = 0.008 if sampled else 1e-12
        got = series["eps_dominated_fraction"][step]
        assert got == pytest.approx(expected["eps_dominated"], rel=1e-6, abs=eps_abs)
        assert series["nonfinite_fraction"][step] == 0.0
        # Each quantile q lies, within a histogram bucket (10%), between the order statistics
        # around q * n (conventions differ by one element on a small group).
        values = expected["sorted"]
        for q in (0.05, 0.5, 0.95):
            rank = math.ceil(q * len(values))
            low, high = values[max(rank - 2, 0)], values[min(rank, len(values) - 1)]
            got = series[f"adaptive_lr_p{round(100 * q):02d}"][step]
            assert low / 1.1 <= got <= high * 1.1, (q, low, got, high)


def check_histograms(
    accumulator: EventAccumulator,
    reference: Reference,
    key: tuple[int, int],
    suffix: str,
    steps: list[int],
) -> None:
    """Histograms hold every element: exact counts per TensorBoard bucket, min, max and sums."""
    histograms = accumulator.Histograms(f"rectification/adaptive_lr{suffix}")
    assert [h.step for h in histograms] == steps
    for event in histograms:
        h, expected = event.histogram_value, reference.values[event.step][key]
        assert h.num == expected["count"]
        for field in ("min", "max", "sum", "sum_sq"):
            got = getattr(h, "sum_squares" if field == "sum_sq" else field)
            assert got == pytest.approx(expected[field], rel=1e-5), field
        limits = reference.limits
        filled = np.flatnonzero(expected["counts"])
        first, last = max(filled[0] - 1, 0), filled[-1] + 1
        np.testing.assert_allclose(h.bucket_limit, limits[first:last], rtol=1e-9)
        np.testing.assert_array_equal(h.bucket, expected["counts"][first:last])
