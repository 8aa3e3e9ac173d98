"""The monitor's dashboard as a browser loads it: a TensorBoard server on a folder of monitored
runs, asked through its HTTP API what its *Custom Scalars* page asks (the layout, then each
chart line's regex against each run): every line of every chart finds logged series on the
first load, and the logarithm charts span what the linear ones squeeze."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from helpers.monitor import TWO_GROUPS, Regressor, trainer
from lightning.pytorch.loggers import TensorBoardLogger

from lightning_ranger.callbacks import RectificationMonitor

RUNS = ("radam", "adam")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Two monitored runs (two param groups each, 24 steps) in one folder, served by TensorBoard."""
    root = tmp_path_factory.mktemp("dashboard")
    for name in RUNS:
        logger = TensorBoardLogger(root, name=name, version="", default_hp_metric=False)
        monitor = RectificationMonitor(logging_interval=1, probe_size=64)
        fit = trainer(root / name, 24, [monitor], logger=logger)
        fit.fit(Regressor(optimizer=name, groups=TWO_GROUPS))
    port = _free_port()
    command = [sys.executable, "-m", "tensorboard.main", "--logdir", str(root)]
    process = subprocess.Popen(
        [*command, "--host", "127.0.0.1", "--port", str(port), "--reload_interval", "1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:  # up, and done reading both runs
            try:
                runs = _get(url, "/data/runs")
                if sorted(runs) == sorted(RUNS) and _layout(url):
                    break
            except (urllib.error.URLError, ConnectionError):
                pass
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError("TensorBoard did not serve the runs")
            time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def _get(url: str, path: str, **query: str) -> Any:
    suffix = f"?{urllib.parse.urlencode(query)}" if query else ""
    with urllib.request.urlopen(f"{url}{path}{suffix}", timeout=30) as response:
        return json.loads(response.read())


def _layout(url: str) -> dict[str, list[str]]:
    """Chart title -> the regexes of its lines, as the Custom Scalars page reads them."""
    layout = _get(url, "/data/plugin/custom_scalars/layout")
    charts = [c for category in layout.get("category", []) for c in category["chart"]]
    return {c["title"]: c["multiline"]["tag"] for c in charts}


def _series(url: str, run: str, regex: str) -> dict[str, list[float]]:
    """What a chart line shows for ``run``: the values of every series its regex matches."""
    body = _get(url, "/data/plugin/custom_scalars/scalars", run=run, tag=regex)
    assert body["regex_valid"], regex
    return {tag: [event[2] for event in events] for tag, events in body["tag_to_events"].items()}


def test_every_chart_line_finds_its_series_in_every_run(server: str) -> None:
    charts = _layout(server)
    # Per param group: rho_t, r_t, the log10 variance ratios and the log10 quantiles.
    assert len(charts) == 2 * 4
    for title, regexes in charts.items():
        for run in RUNS:
            for regex in regexes:
                series = _series(server, run, regex)
                assert len(series) == 1, (title, run, regex, sorted(series))
                (values,) = series.values()
                assert values, (title, run, regex)


def test_the_log10_charts_span_what_linear_axes_squeeze(server: str) -> None:
    """On linear axes the first variance ratios dwarf the rest, and p95 dwarfs p05; in log10 the
    series keep the same order within a few units."""
    charts = _layout(server)
    ratio = _series(
        server, "adam", charts["log10 adaptive_lr_var_ratio/pg1 vs 1/r_t^2 vs rectified"][0]
    )
    (log_ratio,) = ratio.values()
    (linear,) = _series(server, "adam", "rectification/adaptive_lr_var_ratio/pg1$").values()
    assert max(linear) / min(linear) > 10
    assert max(log_ratio) - min(log_ratio) < 5
    quantiles = charts["log10 adaptive_lr quantiles/pg1"]
    p05, p95 = (
        next(iter(_series(server, "adam", q).values())) for q in (quantiles[0], quantiles[2])
    )
    assert all(low < high for low, high in zip(p05, p95, strict=True))
