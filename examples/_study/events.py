"""Read scalars and histograms back from TensorBoard event files."""

from __future__ import annotations

import math
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def load_events(run_dir: str | Path) -> EventAccumulator:
    """Every scalar and histogram event of one run's folder (no sampling)."""
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "histograms": 0})
    events.Reload()
    return events


def scalar_series(events: EventAccumulator, tag: str) -> dict[int, float]:
    """``{step: value}`` of a scalar tag; empty if the run did not log it."""
    if tag not in events.Tags()["scalars"]:
        return {}
    return {event.step: event.value for event in events.Scalars(tag)}


def histogram_share_above(events: EventAccumulator, tag: str, step: int, level: float) -> float:
    """The share of a histogram's count, at ``step``, in buckets whose right edge is above
    ``level``; NaN if the run has no such histogram."""
    if tag not in events.Tags()["histograms"]:
        return math.nan
    for event in events.Histograms(tag):
        if event.step == step:
            histogram = event.histogram_value
            above = sum(
                count
                for edge, count in zip(histogram.bucket_limit, histogram.bucket, strict=True)
                if edge > level
            )
            return above / sum(histogram.bucket)
    return math.nan
