"""Read scalars back from TensorBoard event files."""

from __future__ import annotations

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
