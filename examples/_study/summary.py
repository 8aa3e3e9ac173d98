"""Mean and spread of a metric over seeds, per optimizer and learning rate, and its tables."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Cell:
    """The values of one (optimizer, lr) over seeds; ``std`` is the sample standard deviation
    (0 for a single seed)."""

    values: tuple[float, ...]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> float:
        return statistics.stdev(self.values) if len(self.values) > 1 else 0.0


Grid = Mapping[tuple[str, float], Cell]


def aggregate(points: Iterable[tuple[str, float, float]]) -> dict[tuple[str, float], Cell]:
    """``(recipe, lr, value)`` triples -> one :class:`Cell` per ``(recipe, lr)``."""
    values: defaultdict[tuple[str, float], list[float]] = defaultdict(list)
    for recipe, lr, value in points:
        values[recipe, lr].append(value)
    return {key: Cell(tuple(v)) for key, v in values.items()}


def markdown_table(
    grid: Grid,
    recipes: Sequence[str],
    lrs: Sequence[float],
    labels: Mapping[str, str],
    digits: int = 1,
    lower_is_better: bool = False,
) -> str:
    """A Markdown table, one row per recipe and one column per lr: ``mean ± std``; the best mean
    of each row (the highest, or the lowest with ``lower_is_better``) in bold. A missing cell is
    ``-``."""
    pick = min if lower_is_better else max
    header = "| optimizer | " + " | ".join(f"lr {lr:g}" for lr in lrs) + " |"
    rule = "| --- |" + " ---: |" * len(lrs)
    rows = [header, rule]
    for recipe in recipes:
        best = pick((grid[recipe, lr].mean for lr in lrs if (recipe, lr) in grid), default=math.nan)
        cells = []
        for lr in lrs:
            cell = grid.get((recipe, lr))
            if cell is None:
                cells.append("-")
                continue
            text = f"{cell.mean:.{digits}f} ± {cell.std:.{digits}f}"
            cells.append(f"**{text}**" if cell.mean == best else text)
        rows.append(f"| {labels.get(recipe, recipe)} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def near_best(grid: Grid, recipe: str, lrs: Sequence[float], tolerance: float) -> list[float]:
    """The lrs at which ``recipe``'s mean is within ``tolerance`` of its best mean over ``lrs``."""
    means = {lr: grid[recipe, lr].mean for lr in lrs if (recipe, lr) in grid}
    if not means:
        return []
    best = max(means.values())
    return [lr for lr, mean in means.items() if mean >= best - tolerance]
