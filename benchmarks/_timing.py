"""Timing for the benchmarks: a synchronizing timer, interleaved repetitions, and what follows
from them (medians, minima, quartiles, ratios, the memory bound of a pass).

Machines are noisy, so a benchmark never reports a time alone: it times its variants interleaved
(every round times each variant once, so that drifts in clock speed or load hit all of them
alike) and states each figure as a ratio against a baseline timed in the same rounds.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple, TypeVar

import torch
from torch import Tensor

__all__ = [
    "ADD_TRANSFERS",
    "InPlaceAdd",
    "Ratio",
    "Timer",
    "Timing",
    "bandwidth",
    "interleaved",
    "memory_bound",
    "nbytes",
]

#: A variant: a call to time (or to measure otherwise).
Variant = TypeVar("Variant", bound=Callable[[], object])

#: Memory transfers of ``a += b`` per element: read ``a``, read ``b``, write ``a``.
ADD_TRANSFERS = 3


class Ratio(NamedTuple):
    """A ratio of two timings: of their medians and of their minima."""

    median: float
    minimum: float


@dataclass(frozen=True)
class Timing:
    """The seconds of every repetition of one variant, in the order they ran.

    Raises:
        ValueError: if ``samples`` is empty.
    """

    samples: tuple[float, ...]

    def __post_init__(self) -> None:
        if not self.samples:
            raise ValueError("a Timing needs at least one sample")

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def minimum(self) -> float:
        return min(self.samples)

    @property
    def quartiles(self) -> tuple[float, float]:
        """The first and third quartiles (both the one sample if there is only one)."""
        if len(self.samples) == 1:
            return self.samples[0], self.samples[0]
        q1, _, q3 = statistics.quantiles(self.samples, n=4, method="inclusive")
        return q1, q3

    def scaled(self, factor: float) -> Timing:
        """Every sample times ``factor``."""
        return Timing(tuple(t * factor for t in self.samples))

    def ratio(self, baseline: Timing, per: float = 1.0) -> Ratio:
        """This timing over ``per`` times ``baseline``: of the medians and of the minima."""
        return Ratio(self.median / (per * baseline.median), self.minimum / (per * baseline.minimum))

    def paired(self, baseline: Timing) -> float:
        """The median of the ratios of samples taken in the same round, which is steadier than
        the ratio of medians when load comes and goes.

        Raises:
            ValueError: if the two timings have not as many samples.
        """
        if len(self.samples) != len(baseline.samples):
            raise ValueError(
                f"paired ratios need as many rounds on both sides, got {len(self.samples)} and "
                f"{len(baseline.samples)}"
            )
        return statistics.median(a / b for a, b in zip(self.samples, baseline.samples, strict=True))


class Timer:
    """Seconds taken by ``fn()``, waiting for ``device`` to finish its queued work before and
    after (CUDA runs asynchronously).

    Args:
        device: the device whose work is timed.
        clock: the clock to read (seconds).
        after: called, untimed, before every timed call: the work that precedes the timed pass
            where it really runs (a training step before a gradient pass, an optimizer step
            before a sync), so that every variant starts from the same caches instead of from
            whatever its predecessor in the round left.
    """

    def __init__(
        self,
        device: torch.device,
        clock: Callable[[], float] = time.perf_counter,
        after: Callable[[], object] | None = None,
    ) -> None:
        self.device = device
        self.clock = clock
        self.after = after

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def __call__(self, fn: Callable[[], object]) -> float:
        if self.after is not None:
            self.after()
        self.synchronize()
        start = self.clock()
        fn()
        self.synchronize()
        return self.clock() - start


def interleaved(
    variants: Mapping[str, Variant],
    rounds: int,
    measure: Callable[[Variant], float],
    warmup: int = 1,
) -> dict[str, Timing]:
    """Time every variant once per round, ``rounds`` times, after ``warmup`` untimed calls each.

    Each round starts one variant later than the one before (A B C, B C A, C A B, ...), so that no
    variant always runs first, right after the previous round's last. Within a round the order
    stays the same, so a variant that leaves the caches or the threads in a state that slows its
    successor shows up in that successor's time: keep unrelated variants in separate runs, or give
    every variant the same untimed predecessor (``Timer(after=...)``).

    Args:
        variants: the functions to time, by name.
        rounds: the timed rounds.
        measure: returns one sample of a variant, usually a :class:`Timer`; any other measure of
            a call (for example seconds per step that the call reports) works too.
        warmup: untimed calls of each variant before the first round.

    Returns:
        The timing of every variant, by name, in the order of ``variants``.
    """
    for fn in variants.values():
        for _ in range(warmup):
            fn()
    names = list(variants)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for k in range(len(names)):
            name = names[(r + k) % len(names)]
            samples[name].append(measure(variants[name]))
    return {name: Timing(tuple(samples[name])) for name in names}


class InPlaceAdd:
    """``a += b`` over random tensors of ``shapes``: the pass that measures the memory bandwidth.

    Args:
        shapes: the shapes of the tensors (those of the pass it is compared with, or one large
            tensor).
        device: where the tensors live.
        dtype: their dtype.
    """

    def __init__(
        self,
        shapes: Sequence[Sequence[int]],
        device: torch.device,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        generator = torch.Generator(device=device).manual_seed(1)

        def operand() -> list[Tensor]:
            return [
                torch.randn(*shape, generator=generator, device=device, dtype=dtype)
                for shape in shapes
            ]

        self.a, self.b = operand(), operand()
        #: The bytes of one operand.
        self.nbytes = nbytes(self.a)

    def __call__(self) -> None:
        torch._foreach_add_(self.a, self.b)


def bandwidth(add: Timing, add_nbytes: int) -> float:
    """Bytes per second moved by the median run of an in-place add with ``add_nbytes`` bytes per
    operand."""
    return ADD_TRANSFERS * add_nbytes / add.median


def memory_bound(add: Timing, add_nbytes: int, transfers: int, nbytes: int) -> Timing:
    """The time a pass that moves ``transfers`` tensors of ``nbytes`` bytes would take at the
    bandwidth of each run of the in-place add (``add_nbytes`` bytes per operand)."""
    return add.scaled(transfers * nbytes / (ADD_TRANSFERS * add_nbytes))


def nbytes(tensors: Sequence[Tensor]) -> int:
    """The bytes that ``tensors`` hold together."""
    return sum(t.numel() * t.element_size() for t in tensors)
