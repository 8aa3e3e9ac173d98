"""Benchmark of RectificationMonitor: its whole cost next to a training step, with one param group
and with one per tensor.

What is measured
    Training steps of ``torchvision.models.resnet18(num_classes=10)`` (no weights downloaded,
    11.2M parameters in 62 tensors) with ``lightning_ranger.RAdam``, batches of 16 random 32x32
    images, on the CPU, through a Lightning ``Trainer`` that logs to TensorBoard, in two layouts
    of the param groups:

    - *one group*: every parameter in one group;
    - *62 groups* (``--groups per-tensor``): one group per tensor, the lr decaying by 0.9 per
      tensor from the head down (a layer-wise lr decay), all with the same betas and eps.

    Each layout trains *without* the monitor and *with* ``RectificationMonitor()`` at its default
    interval, the Trainer's ``log_every_n_steps`` (``--interval``, default 50), histograms on,
    default probe (1024 coordinates, 256 steps). Each run trains a fresh copy of the same initial
    weights for ``--warmup`` + ``--interval`` steps and times the last ``--interval``, so a
    *with* window holds ``interval`` recordings of the probe's gradients and exactly one logging
    event, as every interval of a long run does. The runs are timed interleaved over
    ``--repeats`` rounds in one process.

    - *Whole cost*: the wall time spent in the monitor's ``on_train_batch_end`` over a window
      (every recording and the event, the TensorBoard writes included). Its share of
      ``interval`` training steps without the monitor is the overhead (target: at most 1% with
      one group, printed, never asserted). Timing the monitor's own calls is independent of the
      noise of whole runs, which on a shared machine dominates the direct comparison of the
      steps with and without it (also printed).
    - *Its parts*: the recording at every step (the call without the event) and one logging
      event, over the timed windows and a first run that logs at every step (``--event-steps``
      steps; it also warms the process up). The probe history starts full (random gradients),
      the most expensive bootstrap.
    - With ``--groups per-tensor``: the 62 groups' event and recording over the one group's
      (targets: at most 2x each), and, for comparison, the same 62 groups monitored alone
      (``pool_groups=False``) in a run that logs at every step.

How to run
    python benchmarks/monitor_overhead.py [--groups per-tensor] [--repeats 3] [--warmup 3]

    The defaults take about 1.5 minutes on 2 idle CPU cores, 3 minutes with ``--groups
    per-tensor`` (longer on a shared machine).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torchvision
from _report import Run, argument_parser, markdown_table, verdict
from _timing import Timer, Timing, interleaved
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.data import DataLoader, TensorDataset

from lightning_ranger import RAdam
from lightning_ranger.callbacks.rectification_monitor import RectificationMonitor
from lightning_ranger.optim import RectificationTracker

TARGET_OVERHEAD = 0.01  # of wall time at the default interval, one group
TARGET_GROUPS = 2.0  # 62 groups' event and recording over one group's

LAYOUTS = {"one": "one group", "per-tensor": "62 groups"}


class ResNetClassifier(LightningModule):
    def __init__(self, initial: dict[str, torch.Tensor], layout: str) -> None:
        super().__init__()
        self.net = torchvision.models.resnet18(num_classes=10)
        self.net.load_state_dict(initial)
        self.layout = layout

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return torch.nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        if self.layout == "one":
            return RAdam(self.parameters(), lr=1e-3)
        params = list(self.parameters())
        decayed = [
            {"params": [p], "lr": 1e-3 * 0.9 ** (len(params) - 1 - i)} for i, p in enumerate(params)
        ]
        return RAdam(decayed, lr=1e-3)


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
    """The monitor, recording the wall seconds of each of its ``on_train_batch_end`` calls from
    batch ``first`` on, and of the logging events among them. Its probe history starts full
    (random gradients), as after ``probe_history`` steps of a long run, so that every event
    bootstraps from the largest pool."""

    def __init__(self, first: int = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.first = first
        self.calls: list[float] = []
        self.events: list[float] = []
        self.recordings: list[float] = []
        self._event = 0.0

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        assert self.tracker is not None
        for probe in self.tracker.probes.values():
            probe.history.values.normal_()
            probe.history.recorded = self.probe_history

    def _log(self, trainer: Trainer, tracker: RectificationTracker, step: int) -> None:
        start = time.perf_counter()
        super()._log(trainer, tracker, step)
        self._event = time.perf_counter() - start

    def on_train_batch_end(self, trainer: Trainer, *args: Any) -> None:
        self._event = 0.0
        start = time.perf_counter()
        super().on_train_batch_end(trainer, *args)
        seconds = time.perf_counter() - start
        if args[-1] < self.first:  # batch_idx
            return
        self.calls.append(seconds)
        self.recordings.append(seconds - self._event)
        if self._event:
            self.events.append(seconds)

    def probe_bytes(self) -> int:
        assert self.tracker is not None
        probes = self.tracker.probes.values()
        return sum(p.history.nbytes() + p.positions.nbytes for p in probes)


class Layout:
    """The runs of one layout of the param groups: timed windows without and with the monitor,
    and what the monitor's calls took."""

    def __init__(self, name: str, runs: Runs) -> None:
        self.name = name
        self.runs = runs
        self.events: list[float] = []
        self.recordings: list[float] = []
        self.whole: list[float] = []  # the monitor's seconds per timed window
        self.probe_bytes = 0

    def monitored(self, steps: int, first: int, **kwargs: Any) -> tuple[TimedMonitor, float]:
        """Train ``steps`` steps with the monitor timing its calls from batch ``first``: the
        monitor and the wall seconds per step from that batch on."""
        monitor = TimedMonitor(first, **kwargs)
        return monitor, self.runs.train(self.name, steps, first, monitor)

    def keep(self, monitor: TimedMonitor) -> None:
        """Count the events, recordings and probe of a run with the default monitor."""
        self.events += monitor.events
        self.recordings += monitor.recordings
        self.probe_bytes = monitor.probe_bytes()

    def timed(self, with_monitor: bool) -> Callable[[], float]:
        """A timed run: wall seconds per step of its window."""
        args = self.runs.args

        def train() -> float:
            steps = args.warmup + args.interval
            if not with_monitor:
                return self.runs.train(self.name, steps, args.warmup, None)
            monitor, wall = self.monitored(steps, args.warmup)
            self.keep(monitor)
            self.whole.append(sum(monitor.calls))
            return wall

        return train


class Runs:
    """Training runs of fresh copies of the same initial weights, each timed over its last
    ``interval`` steps."""

    def __init__(self, args: Any, run: Run, root: Path) -> None:
        self.args = args
        self.run = run
        self.root = root
        torch.manual_seed(0)
        self.initial = torchvision.models.resnet18(num_classes=10).state_dict()
        n = (max(args.warmup + args.interval, args.event_steps)) * args.batch
        self.data = TensorDataset(torch.randn(n, 3, 32, 32), torch.randint(0, 10, (n,)))

    def train(self, layout: str, steps: int, first_timed: int, monitor: Callback | None) -> float:
        """Train ``steps`` steps; wall seconds per step from batch ``first_timed`` on."""
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
        trainer.fit(ResNetClassifier(self.initial, layout), loader)
        return (timer.end[0] - timer.start[0]) / (steps - first_timed)


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f} ms"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argument_parser(__doc__)
    parser.add_argument("--repeats", type=int, default=3, help="rounds of runs (default 3)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per run")
    parser.add_argument("--event-steps", type=int, default=6, help="steps of the event run")
    parser.add_argument(
        "--interval", type=int, default=50, help="log_every_n_steps, the timed steps per run"
    )
    parser.add_argument("--batch", type=int, default=16, help="images per step (default 16)")
    parser.add_argument(
        "--groups",
        choices=["one", "per-tensor"],
        default="one",
        help="one: one param group; per-tensor: also 62 groups, one per tensor, side by side",
    )
    args = parser.parse_args(argv)
    run = Run(args, __file__, argv)
    names = ["one"] if args.groups == "one" else ["one", "per-tensor"]

    with tempfile.TemporaryDirectory() as tmp:
        runs = Runs(args, run, Path(tmp))
        layouts = {name: Layout(name, runs) for name in names}
        alone = None
        for layout in layouts.values():
            # First, so that they also warm the process up (allocator, lazy initializations).
            layout.keep(layout.monitored(args.event_steps, 0, logging_interval=1)[0])
        if args.groups == "per-tensor":
            alone, _ = layouts["per-tensor"].monitored(
                args.event_steps, 0, logging_interval=1, pool_groups=False
            )
        variants = {
            f"{name} {kind}": layout.timed(kind == "with")
            for name, layout in layouts.items()
            for kind in ("without", "with")
        }
        wall = interleaved(variants, args.repeats, lambda train: train(), warmup=0)

    columns: dict[str, list[str]] = {}
    overheads: dict[str, float] = {}
    for name, layout in layouts.items():
        without, with_ = wall[f"{name} without"], wall[f"{name} with"]
        whole = Timing(tuple(layout.whole))
        overheads[name] = whole.median / (args.interval * without.median)
        columns[name] = [
            _ms(statistics.median(layout.recordings)),
            f"**{_ms(statistics.median(layout.events))}** (median of {len(layout.events)})",
            f"{_ms(whole.median)} (runs: {', '.join(f'{s * 1e3:.1f}' for s in whole.samples)})",
            f"{_ms(without.median)} (runs: {', '.join(f'{s * 1e3:.1f}' for s in without.samples)})",
            f"**{overheads[name]:.2%}**",
            f"{with_.ratio(without).median - 1:+.2%}",
            f"{layout.probe_bytes / 2**20:.2f} MiB",
        ]
    labels = [
        "recording, every step (median)",
        "one logging event",
        f"whole cost per window of {args.interval} steps: recordings and one event (median)",
        "training step without the monitor (median)",
        f"overhead: whole cost / ({args.interval} steps without)",
        "measured directly: step with / step without - 1 (noisy)",
        "probe memory",
    ]
    rows = [[label, *(columns[name][i] for name in names)] for i, label in enumerate(labels)]
    title = (
        f"ResNet-18 (10 classes, 11.2 M parameters), RAdam, batch {args.batch} of 32x32, "
        f"{args.interval} timed steps per run after {args.warmup}, {args.repeats} rounds, "
        "TensorBoard logger, default monitor; the probe history starts full (the most expensive "
        "bootstrap):"
    )
    parts = [title, markdown_table(["figure", *(LAYOUTS[n] for n in names)], rows)]
    verdicts = [verdict("overhead, one group (wall)", overheads["one"], TARGET_OVERHEAD, True)]
    if alone is not None:
        many, one = layouts["per-tensor"], layouts["one"]
        event = statistics.median(many.events) / statistics.median(one.events)
        recording = statistics.median(many.recordings) / statistics.median(one.recordings)
        verdicts += [
            verdict("62 groups' event / one group's", event, TARGET_GROUPS),
            verdict("62 groups' recording / one group's", recording, TARGET_GROUPS),
            f"overhead, 62 groups (wall): {overheads['per-tensor']:.2%}",
            "for comparison, the 62 groups monitored alone (`pool_groups=False`): an event of "
            f"{_ms(statistics.median(alone.events))}, a recording of "
            f"{_ms(statistics.median(alone.recordings))}, a probe of "
            f"{alone.probe_bytes() / 2**20:.2f} MiB",
        ]
    run.finish([*parts, "\n".join(f"- {v}" for v in verdicts)])


if __name__ == "__main__":
    main()
