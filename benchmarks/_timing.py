"""Timing helpers shared by the benchmarks: a synchronizing timer, interleaved repetitions with
medians and minima, and ratios. Run the benchmarks as scripts (``python benchmarks/NAME.py``)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

__all__ = ["add_bound", "fmt_ms", "interleaved", "ratio", "timer"]


def timer(device: torch.device) -> Callable[[Callable[[], object]], float]:
    """A function that times ``fn()`` in seconds, synchronizing CUDA before and after."""

    def time_it(fn: Callable[[], object]) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    return time_it


def interleaved(
    variants: dict[str, Callable[[], object]], reps: int, time_it: Callable[..., float]
) -> dict[str, tuple[float, float]]:
    """``(median, minimum)`` seconds per variant; every repetition runs each variant once, after
    one warm-up run of each."""
    for fn in variants.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(reps):
        for name, fn in variants.items():
            times[name].append(time_it(fn))
    return {name: (statistics.median(ts), min(ts)) for name, ts in times.items()}


def ratio(
    a: tuple[float, float], b: tuple[float, float], scale: float = 1.0
) -> tuple[float, float]:
    """``a / (scale * b)`` for the medians and for the minima."""
    return a[0] / (scale * b[0]), a[1] / (scale * b[1])


def fmt_ms(t: tuple[float, float]) -> str:
    """``(median, minimum)`` seconds as milliseconds."""
    return f"{t[0] * 1e3:.2f} ms (min {t[1] * 1e3:.2f})"


def add_bound(add: tuple[float, float], transfers: int) -> tuple[float, float]:
    """The memory bound of a pass that moves ``transfers`` tensors, from the time of an in-place
    ``a += b`` over tensors of the same shapes (3 transfers): ``(median, minimum)`` seconds."""
    return add[0] * transfers / 3, add[1] * transfers / 3
