"""Benchmark of RectificationMonitor: training-step time with and without it, and one event's cost.

What is measured
    Training steps of ``torchvision.models.resnet18(num_classes=10)`` (no weights downloaded,
    11.2M parameters) with ``lightning_ranger.RAdam``, batches of 16 random 32x32 images, on the
    CPU, through a Lightning ``Trainer`` that logs to TensorBoard in both configurations:

    - *without*: no monitor;
    - *with*: ``RectificationMonitor()`` at its default interval, the Trainer's
      ``log_every_n_steps`` (50), histograms on, default probe (1024 coordinates, 256 steps): it
      records the probe's gradients after every optimizer step and logs at step 50.

    Each run trains a fresh copy of the same initial weights for ``--warmup`` + 50 steps and times
    the last 50 (from the start of batch ``warmup + 1`` to the end of the last batch, after every
    callback), so a *with* window holds exactly one logging event, at step 50, as every 50 steps of
    a long run do. The two configurations alternate (ABBA order) over ``--repeats`` pairs of runs
    in one process, and the medians of the mean step time are compared:
    ``overhead = median(with) / median(without) - 1``, in wall time and in process CPU time (the
    CPU time of this process is less sensitive to other processes on a shared machine).

    One logging event is also timed on its own, with a full probe history (the most expensive
    bootstrap): the time spent in the monitor's
    ``on_train_batch_end`` when it logs, over the events of the *with* runs and of one extra run
    that logs at every step (``--event-steps`` steps; it runs first and also warms the process
    up). ``event / (50 * step)`` estimates the overhead independently of the noise of whole runs.

    The script prints the step time of both configurations (the *without* runs are the baseline),
    the overhead against that baseline, one event's time, the event-based estimate and the probe's
    memory. On a shared machine the measured overhead is noisy (the load average is printed); the
    estimate from the event cost is the steadier figure.

How to run
    python benchmarks/monitor_overhead.py [--repeats 3] [--warmup 3] [--event-steps 6]

    The defaults take about 1.5 minutes on 2 idle CPU cores (longer on a shared machine).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning
import torch
import torchvision
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.data import DataLoader, TensorDataset

from lightning_ranger import RAdam
from lightning_ranger.callbacks.rectification_monitor import RectificationMonitor

BATCH = 16
INTERVAL = 50  # the Trainer's default log_every_n_steps, hence the monitor's default interval


class ResNetClassifier(LightningModule):
    def __init__(self, initial: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.net = torchvision.models.resnet18(num_classes=10)
        self.net.load_state_dict(initial)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return torch.nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return RAdam(self.parameters(), lr=1e-3)


class WindowTimer(Callback):
    """Wall and process CPU time from the start of batch ``first`` (0-based) to the last's end."""

    def __init__(self, first: int) -> None:
        self.first = first
        self.start = self.end = (0.0, 0.0)

    def on_train_batch_start(self, trainer: Trainer, pl_module: Any, batch: Any, idx: int) -> None:
        if idx == self.first:
            self.start = (time.perf_counter(), time.process_time())

    def on_train_batch_end(self, trainer: Trainer, *args: Any) -> None:
        self.end = (time.perf_counter(), time.process_time())


class TimedMonitor(RectificationMonitor):
    """The monitor, recording the seconds its ``on_train_batch_end`` takes when it logs. Its probe
    history starts full (random gradients), as after ``probe_history`` steps of a long run, so that
    every event bootstraps from the largest pool."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.event_seconds: list[float] = []
        self.event_cpu_seconds: list[float] = []

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        for probe in self._probes.values():
            probe.history.values.normal_()
            probe.history.recorded = self.probe_history

    def on_train_batch_end(self, trainer: Trainer, *args: Any) -> None:
        start, start_cpu = time.perf_counter(), time.process_time()
        super().on_train_batch_end(trainer, *args)
        if trainer.global_step % (self.logging_interval or INTERVAL) == 0:
            self.event_seconds.append(time.perf_counter() - start)
            self.event_cpu_seconds.append(time.process_time() - start_cpu)


def run(
    initial: dict[str, torch.Tensor],
    data: TensorDataset,
    steps: int,
    first_timed: int,
    monitor: RectificationMonitor | None,
    root: Path,
) -> tuple[float, float]:
    """Train ``steps`` steps; mean wall and CPU seconds per step from batch ``first_timed`` on."""
    timer = WindowTimer(first_timed)
    callbacks: list[Callback] = [timer] if monitor is None else [monitor, timer]
    trainer = Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=steps,
        logger=TensorBoardLogger(root, name="", version=None),
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    loader = DataLoader(data, batch_size=BATCH, shuffle=False)
    trainer.fit(ResNetClassifier(initial), loader)
    wall, cpu = (end - start for end, start in zip(timer.end, timer.start, strict=True))
    return wall / (steps - first_timed), cpu / (steps - first_timed)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="pairs of runs (default 3)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per run")
    parser.add_argument("--event-steps", type=int, default=6, help="steps of the event run")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    torch.manual_seed(0)
    initial = torchvision.models.resnet18(num_classes=10).state_dict()
    steps = args.warmup + INTERVAL
    data = TensorDataset(
        torch.randn(steps * BATCH, 3, 32, 32), torch.randint(0, 10, (steps * BATCH,))
    )
    print(f"torch {torch.__version__}, lightning {lightning.__version__}, CPU")
    print(f"threads: {torch.get_num_threads()} (CPU cores seen: {os.cpu_count()})")
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    print(f"ResNet-18, batch {BATCH} of 32x32, RAdam; {INTERVAL} timed steps per run\n")

    times: dict[str, list[tuple[float, float]]] = {"without": [], "with": []}
    events: list[float] = []
    events_cpu: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        # First, so that it also warms the process up (allocator, lazy initializations).
        every_step = TimedMonitor(logging_interval=1)
        run(initial, data, args.event_steps, 0, every_step, Path(tmp) / "events")
        events += every_step.event_seconds
        events_cpu += every_step.event_cpu_seconds
        probes = every_step._probes.values()
        probe_bytes = sum(p.history.nbytes() + p.positions.nbytes for p in probes)
        probe_coordinates = sum(p.size for p in probes)
        for r in range(args.repeats):
            order = ["without", "with"] if r % 2 == 0 else ["with", "without"]
            for name in order:
                monitor = TimedMonitor() if name == "with" else None
                root = Path(tmp) / f"{name}{r}"
                times[name].append(run(initial, data, steps, args.warmup, monitor, root))
                if monitor is not None:
                    events += monitor.event_seconds
                    events_cpu += monitor.event_cpu_seconds

    medians = {
        name: [statistics.median(timing[k] for timing in runs) for k in (0, 1)]
        for name, runs in times.items()
    }
    print(f"{'ms per step':<12}{'median wall':>12}{'median CPU':>12}   all runs (wall / CPU)")
    for name, runs in times.items():
        wall, cpu = medians[name]
        listed = ", ".join(f"{w * 1e3:.0f}/{c * 1e3:.0f}" for w, c in runs)
        print(f"{name:<12}{wall * 1e3:>12.1f}{cpu * 1e3:>12.1f}   {listed}")
    print()
    event = statistics.median(events)
    best = min(events)
    print(
        f"one logging event: {event * 1e3:.1f} ms (median of {len(events)}, best {best * 1e3:.1f})"
    )
    baseline = medians["without"]
    for k, clock in enumerate(("wall", "CPU")):
        overhead = medians["with"][k] / baseline[k] - 1.0
        print(
            f"measured overhead ({clock} time): {overhead * 100:+.2f}% of the"
            f" {baseline[k] * 1e3:.1f} ms baseline step"
        )
    event_cpu = statistics.median(events_cpu)
    print(f"one logging event, process CPU time: {event_cpu * 1e3:.1f} ms (median)")
    for k, (clock, cost) in enumerate((("wall", event), ("CPU", event_cpu))):
        estimate = cost / (INTERVAL * baseline[k])
        print(
            f"estimated overhead ({clock} time), event / ({INTERVAL} baseline steps of"
            f" {baseline[k] * 1e3:.1f} ms): {estimate * 100:.2f}%"
        )
    print(f"probe memory: {probe_bytes / 2**20:.2f} MiB ({probe_coordinates} coordinates)")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
