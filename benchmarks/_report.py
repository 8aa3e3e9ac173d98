"""Reporting for the benchmarks: the command line they share, the machine and its load, the
verdict against a target, and the results as a markdown table that the docs include.

A script parses its arguments with :func:`argument_parser`, starts a :class:`Run` before it
measures, and ends with :meth:`Run.finish`, which prints the results and writes them to
``benchmarks/results/<name>_<device>.md`` under a line that says where, when and under which
load they were measured.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import torch
from _timing import Ratio

__all__ = [
    "RESULTS",
    "Load",
    "Run",
    "argument_parser",
    "machine",
    "markdown_table",
    "ms",
    "ratio_cell",
    "verdict",
]

#: Where the scripts write their tables, which docs/benchmarks.md includes.
RESULTS = Path(__file__).resolve().parent / "results"

#: Cores kept busy by other processes above which the timings are disturbed.
DISTURBING_LOAD = 0.1


def argument_parser(doc: str) -> argparse.ArgumentParser:
    """A parser with the options every benchmark takes (``--device``, ``--threads``,
    ``--results``), described by the first paragraph of the script's docstring ``doc``."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="torch device (default: cuda if available, else cpu)",
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)"
    )
    parser.add_argument(
        "--results",
        type=Path,
        default=RESULTS,
        help="folder for the markdown table (default: benchmarks/results)",
    )
    return parser


def machine(device: torch.device) -> str:
    """The device's name: the GPU's, or the CPU model with its core count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            models = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        name = models[0] if models else name
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} cores"


def _busy_cpu_seconds() -> float | None:
    """CPU seconds the whole machine has spent busy since boot (Linux), else ``None``."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds() -> float:
    user, system = os.times()[:2]
    return user + system


class Load:
    """The machine's load from construction to :meth:`summary`: the load averages at both ends
    and how many cores other processes kept busy in between, so that a run on a busy machine
    says so."""

    def __init__(self) -> None:
        self.start_average = os.getloadavg()[0]
        self.start_wall = time.perf_counter()
        self.start_busy = _busy_cpu_seconds()
        self.start_own = _own_cpu_seconds()

    def others(self) -> float | None:
        """Cores that other processes (or VM steal) kept busy on average so far."""
        busy = _busy_cpu_seconds()
        if busy is None or self.start_busy is None:
            return None
        wall = time.perf_counter() - self.start_wall
        own = _own_cpu_seconds() - self.start_own
        return max(0.0, (busy - self.start_busy) - own) / wall

    def summary(self) -> str:
        text = f"load average {self.start_average:.2f} at start, {os.getloadavg()[0]:.2f} at end"
        others = self.others()
        if others is not None:
            state = "disturbed" if others > DISTURBING_LOAD else "quiet"
            text += (
                f"; other processes kept {others:.2f} of {os.cpu_count()} cores busy: {state} "
                f"(timings are disturbed above {DISTURBING_LOAD})"
            )
        return text


def verdict(label: str, value: float, target: float, percent: bool = False) -> str:
    """``label: value (target <= target): met`` (or ``not met``), as ratios (``1.01x``) or, with
    ``percent``, as percentages of ``value`` and ``target`` given as fractions."""

    def shown(x: float) -> str:
        return f"{x:.2%}" if percent else f"{x:.2f}x"

    met = "met" if value <= target else "not met"
    return f"{label}: {shown(value)} (target <= {shown(target)}): {met}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A markdown table, its first column aligned left and the others (figures) right.

    Raises:
        ValueError: if a row has not as many cells as ``header``.
    """
    for row in rows:
        if len(row) != len(header):
            raise ValueError(f"a row has {len(row)} cells, the header {len(header)}: {row}")
    rule = ["---"] + ["---:"] * (len(header) - 1)
    return "\n".join("| " + " | ".join(cells) + " |" for cells in (header, rule, *rows))


class Run:
    """One run of a benchmark script, from the parsed arguments to the written results.

    Construction applies ``--threads`` and starts the :class:`Load` record, so construct it
    before measuring.

    Args:
        args: the parsed arguments of :func:`argument_parser`.
        script: the script's ``__file__``.
        argv: the arguments it was given (``None``: ``sys.argv[1:]``), quoted in the results.
    """

    def __init__(
        self, args: argparse.Namespace, script: str, argv: Sequence[str] | None = None
    ) -> None:
        if args.threads is not None:
            torch.set_num_threads(args.threads)
        self.device = torch.device(args.device)
        self.results = Path(args.results)
        self.name = Path(script).stem
        given = " ".join(sys.argv[1:] if argv is None else argv)
        self.command = f"python benchmarks/{self.name}.py {given}".strip()
        self.threads = torch.get_num_threads()
        self.started = datetime.now(timezone.utc)
        self.load = Load()

    def context(self) -> str:
        """Where, when and with what the run was made, and the load it met."""
        threads = torch.get_num_threads()
        shown = f"{self.threads}" if threads == self.threads else f"{self.threads} -> {threads}"
        return (
            f"`{self.command}` on {self.started:%Y-%m-%d %H:%M} UTC: {machine(self.device)}, "
            f"torch {torch.__version__}, {shown} threads; {self.load.summary()}."
        )

    def finish(self, parts: Sequence[str], variant: str = "") -> Path:
        """Print the results and write them to ``<results>/<name><variant>_<device>.md``.

        Args:
            parts: the markdown blocks (tables, lists of verdicts), in order.
            variant: a suffix of the file name for a run of another kind (``"_sizes"``).

        Returns:
            The path written.
        """
        text = "\n\n".join([f"Measured with {self.context()}", *parts]) + "\n"
        print(text)
        self.results.mkdir(parents=True, exist_ok=True)
        path = self.results / f"{self.name}{variant}_{self.device.type}.md"
        path.write_text(text)
        print(f"written to {path}")
        return path


def ms(seconds: float) -> str:
    """Seconds as milliseconds, for a table cell."""
    return f"{seconds * 1e3:.2f}"


def ratio_cell(ratio: Ratio, percent: bool = False) -> str:
    """A ratio of medians with the ratio of minima in parentheses, for a table cell: ``1.02x
    (0.98x)``, or with ``percent`` ``2.12% (1.95%)``."""
    if percent:
        return f"{ratio.median:.2%} ({ratio.minimum:.2%})"
    return f"{ratio.median:.2f}x ({ratio.minimum:.2f}x)"
