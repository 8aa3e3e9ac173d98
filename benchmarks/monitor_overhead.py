"""Benchmark of RectificationMonitor: training-step time with and without it, and one event's cost.

What is measured
    Training steps of ``torchvision.models.resnet18(num_classes=10)`` (no weights downloaded,
    11.2M parameters) with ``lightning_ranger.RAdam``, batches of 16 random 32x32 images, on the
    CPU, through a Lightning ``Trainer`` that logs to TensorBoard in both configurations:

    - *without*: no monitor;
    - *with*: ``RectificationMonitor()`` at its default interval, the Trainer's
      ``log_every_n_steps`` (``--interval``, default 50), histograms on, default probe (1024
      coordinates, 256 steps): it records the probe's gradients after every optimizer step and
      logs once per interval.

    Each run trains a fresh copy of the same initial weights for ``--warmup`` + ``--interval``
    steps and times the last ``--interval`` (from the start of batch ``warmup + 1`` to the end of
    the last batch, after every callback), so a *with* window holds exactly one logging event, as
    every interval of a long run does. The two configurations are timed interleaved (ABBA) over
    ``--repeats`` pairs of runs in one process; the overhead is ``median(with) / median(without)
    - 1``, in wall time and in process CPU time.

    One logging event is also timed on its own, with a full probe history (the most expensive
    bootstrap): the time spent in the monitor's ``on_train_batch_end`` when it logs, over the
    events of the *with* runs and of one run that logs at every step (``--event-steps`` steps; it
    runs first and also warms the process up). ``event / (interval * step without)`` estimates the
    overhead independently of the noise of whole runs, which on a shared machine dominates the
    direct comparison; it is the figure to read. Target: at most 1% of wall time at the default
    interval (printed, never asserted).

How to run
    python benchmarks/monitor_overhead.py [--repeats 3] [--warmup 3] [--event-steps 6]

    The defaults take about 1.5 minutes on 2 idle CPU cores (longer on a shared machine).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torchvision
from _report import Run, argument_parser, markdown_table, ratio_cell, verdict
from _timing import Timer, Timing, interleaved
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.data import DataLoader, TensorDataset

from lightning_ranger import RAdam
from lightning_ranger.callbacks.rectification_monitor import RectificationMonitor
from lightning_ranger.optim import RectificationTracker

TARGET_OVERHEAD = 0.01  # of wall time at the default interval


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

    def __init__(self, first: int, timer: Timer) -> None:
        self.first = first
        self.timer = timer
        self.start = self.end = (0.0, 0.0)

    def now(self) -> tuple[float, float]:
        self.timer.synchronize()
        return time.perf_counter(), time.process_time()

    def on_train_batch_start(self, trainer: Trainer, pl_module: Any, batch: Any, idx: int) -> None:
        if idx == self.first:
            self.start = self.now()

    def on_train_batch_end(self, trainer: Trainer, *args: Any) -> None:
        self.end = self.now()


class TimedMonitor(RectificationMonitor):
    """The monitor, recording the seconds its ``on_train_batch_end`` takes when it logs. Its probe
    history starts full (random gradients), as after ``probe_history`` steps of a long run, so that
    every event bootstraps from the largest pool."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.event_seconds: list[float] = []
        self.event_cpu_seconds: list[float] = []
        self._logged = False

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        assert self.tracker is not None
        for probe in self.tracker.probes.values():
            probe.history.values.normal_()
            probe.history.recorded = self.probe_history

    def _log(self, trainer: Trainer, tracker: RectificationTracker, step: int) -> None:
        self._logged = True  # the monitor's own decision that this batch is a logging event
        super()._log(trainer, tracker, step)

    def on_train_batch_end(self, trainer: Trainer, *args: Any) -> None:
        self._logged = False
        start, start_cpu = time.perf_counter(), time.process_time()
        super().on_train_batch_end(trainer, *args)
        if self._logged:
            self.event_seconds.append(time.perf_counter() - start)
            self.event_cpu_seconds.append(time.process_time() - start_cpu)


class Runs:
    """Training runs of fresh copies of the same initial weights, each timed over its last
    ``interval`` steps, with the monitor's events gathered."""

    def __init__(self, args: Any, run: Run, root: Path) -> None:
        self.args = args
        self.run = run
        self.root = root
        torch.manual_seed(0)
        self.initial = torchvision.models.resnet18(num_classes=10).state_dict()
        n = (args.warmup + args.interval) * args.batch
        self.data = TensorDataset(torch.randn(n, 3, 32, 32), torch.randint(0, 10, (n,)))
        #: Process CPU seconds per step of every timed run, by configuration.
        self.cpu: dict[str, list[float]] = {"without": [], "with": []}
        self.events: list[float] = []
        self.events_cpu: list[float] = []

    def train(
        self, steps: int, first_timed: int, monitor: TimedMonitor | None
    ) -> tuple[float, float]:
        """Train ``steps`` steps; wall and process CPU seconds per step from batch
        ``first_timed`` on."""
        timer = WindowTimer(first_timed, Timer(self.run.device))
        trainer = Trainer(
            accelerator=self.run.device.type,
            devices=1,
            max_steps=steps,
            log_every_n_steps=self.args.interval,
            logger=TensorBoardLogger(self.root, name="", version=None),
            callbacks=[timer] if monitor is None else [monitor, timer],
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        loader = DataLoader(self.data, batch_size=self.args.batch, shuffle=False)
        trainer.fit(ResNetClassifier(self.initial), loader)
        if monitor is not None:
            self.events += monitor.event_seconds
            self.events_cpu += monitor.event_cpu_seconds
        wall, cpu = (end - start for end, start in zip(timer.end, timer.start, strict=True))
        return wall / (steps - first_timed), cpu / (steps - first_timed)

    def timed(self, name: str) -> Callable[[], float]:
        """A timed run of configuration ``name`` (``"with"`` the monitor or ``"without"``): it
        returns the wall seconds per step and keeps the CPU seconds in :attr:`cpu`."""

        def train() -> float:
            monitor = TimedMonitor() if name == "with" else None
            wall, cpu = self.train(self.args.warmup + self.args.interval, self.args.warmup, monitor)
            self.cpu[name].append(cpu)
            return wall

        return train


def main(argv: Sequence[str] | None = None) -> None:
    parser = argument_parser(__doc__)
    parser.add_argument("--repeats", type=int, default=3, help="pairs of runs (default 3)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per run")
    parser.add_argument("--event-steps", type=int, default=6, help="steps of the event run")
    parser.add_argument(
        "--interval", type=int, default=50, help="log_every_n_steps, the timed steps per run"
    )
    parser.add_argument("--batch", type=int, default=16, help="images per step (default 16)")
    args = parser.parse_args(argv)
    run = Run(args, __file__, argv)

    with tempfile.TemporaryDirectory() as tmp:
        runs = Runs(args, run, Path(tmp))
        # First, so that it also warms the process up (allocator, lazy initializations).
        every_step = TimedMonitor(logging_interval=1)
        runs.train(args.event_steps, 0, every_step)
        assert every_step.tracker is not None
        probes = every_step.tracker.probes.values()
        probe_bytes = sum(p.history.nbytes() + p.positions.nbytes for p in probes)
        probe_coordinates = sum(p.size for p in probes)
        variants = {name: runs.timed(name) for name in ("without", "with")}
        wall = interleaved(variants, args.repeats, lambda train: train(), warmup=0)
    cpu = {name: Timing(tuple(seconds)) for name, seconds in runs.cpu.items()}
    events, events_cpu = Timing(tuple(runs.events)), Timing(tuple(runs.events_cpu))

    def per_step(name: str) -> str:
        each = ", ".join(
            f"{w * 1e3:.0f}/{c * 1e3:.0f}"
            for w, c in zip(wall[name].samples, cpu[name].samples, strict=True)
        )
        return (
            f"{wall[name].median * 1e3:.1f} ms wall, {cpu[name].median * 1e3:.1f} ms CPU "
            f"(runs: {each})"
        )

    measured = [wall["with"].ratio(wall["without"]), cpu["with"].ratio(cpu["without"])]
    estimated = [
        events.ratio(wall["without"], per=args.interval),
        events_cpu.ratio(cpu["without"], per=args.interval),
    ]
    rows = [
        [
            "one logging event, wall time",
            f"**{events.median * 1e3:.1f} ms** (median of {len(events.samples)}, best "
            f"{events.minimum * 1e3:.1f} ms)",
        ],
        ["one logging event, process CPU time", f"{events_cpu.median * 1e3:.1f} ms"],
        [f"training step without the monitor (median of {args.repeats} runs)", per_step("without")],
        [f"training step with the monitor (median of {args.repeats} runs)", per_step("with")],
        [
            "measured overhead, with / without - 1",
            f"{measured[0].median - 1:+.2%} wall, {measured[1].median - 1:+.2%} CPU",
        ],
        [
            f"estimated overhead at interval {args.interval}, event / ({args.interval} steps "
            "without), of medians (of minima)",
            f"**{ratio_cell(estimated[0], percent=True)}** wall, "
            f"{ratio_cell(estimated[1], percent=True)} CPU",
        ],
        ["probe memory", f"{probe_bytes / 2**20:.2f} MiB ({probe_coordinates} coordinates)"],
    ]
    title = (
        f"ResNet-18 (10 classes, 11.2 M parameters in one group), RAdam, batch {args.batch} of "
        f"32x32, {args.interval} timed steps per run after {args.warmup}, TensorBoard logger; the "
        "probe history starts full (the most expensive bootstrap):"
    )
    met = verdict("estimated overhead (wall)", estimated[0].median, TARGET_OVERHEAD, percent=True)
    run.finish([title, markdown_table(["figure", "value"], rows), f"- {met}"])


if __name__ == "__main__":
    main()
