"""The benchmark kit's arithmetic and text (benchmarks/_timing.py, benchmarks/_report.py), and one
smallest run of each benchmark script. No timing is asserted: only what is computed from given
times, and that each script writes its results table."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def bench() -> Iterator[Callable[[str], ModuleType]]:
    """Imports a module of benchmarks/ by name, as the scripts import each other."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        yield importlib.import_module
    finally:
        sys.path.remove(str(BENCHMARKS))


def test_timing_statistics_and_ratios(bench: Callable[[str], ModuleType]) -> None:
    timing = bench("_timing")
    t = timing.Timing((4.0, 1.0, 3.0, 2.0, 5.0))
    assert t.median == 3.0
    assert t.minimum == 1.0
    assert t.quartiles == (2.0, 4.0)  # inclusive quartiles of 1..5
    assert timing.Timing((7.0,)).quartiles == (7.0, 7.0)
    assert t.scaled(2.0).samples == (8.0, 2.0, 6.0, 4.0, 10.0)

    baseline = timing.Timing((2.0, 2.0, 1.0, 1.0, 4.0))
    # Medians 3 / 2, minima 1 / 1; per 3 baseline runs: 3 / 6 and 1 / 3.
    assert t.ratio(baseline) == (1.5, 1.0)
    assert t.ratio(baseline, per=3) == pytest.approx((0.5, 1 / 3))
    # Same-round ratios 2, 0.5, 3, 2, 1.25: median 2.
    assert t.paired(baseline) == 2.0


def test_timing_rejects_no_samples_and_unequal_rounds(bench: Callable[[str], ModuleType]) -> None:
    timing = bench("_timing")
    with pytest.raises(ValueError, match="at least one sample"):
        timing.Timing(())
    with pytest.raises(
        ValueError, match="paired ratios need as many rounds on both sides, got 2 and 1"
    ):
        timing.Timing((1.0, 2.0)).paired(timing.Timing((1.0,)))


def test_interleaved_rotates_the_order_and_times_each_call_with_the_clock(
    bench: Callable[[str], ModuleType],
) -> None:
    timing = bench("_timing")
    now = [0.0]
    calls: list[str] = []

    def variant(name: str, cost: float) -> Callable[[], None]:
        def call() -> None:
            calls.append(name)
            now[0] += cost

        return call

    timer = timing.Timer(torch.device("cpu"), clock=lambda: now[0])
    variants = {"a": variant("a", 1.0), "b": variant("b", 2.0), "c": variant("c", 4.0)}
    t = timing.interleaved(variants, rounds=3, measure=timer, warmup=2)

    warmup = ["a", "a", "b", "b", "c", "c"]
    assert calls == [*warmup, "a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert list(t) == ["a", "b", "c"]
    assert {name: timed.samples for name, timed in t.items()} == {
        "a": (1.0, 1.0, 1.0),
        "b": (2.0, 2.0, 2.0),
        "c": (4.0, 4.0, 4.0),
    }


def test_timer_runs_its_predecessor_untimed_before_every_call(
    bench: Callable[[str], ModuleType],
) -> None:
    timing = bench("_timing")
    now = [0.0]
    calls: list[str] = []

    def advance(name: str, cost: float) -> Callable[[], None]:
        def call() -> None:
            calls.append(name)
            now[0] += cost

        return call

    timer = timing.Timer(torch.device("cpu"), clock=lambda: now[0], after=advance("step", 10.0))
    variants = {"a": advance("a", 1.0), "b": advance("b", 2.0)}
    t = timing.interleaved(variants, rounds=2, measure=timer, warmup=0)
    assert calls == ["step", "a", "step", "b", "step", "b", "step", "a"]
    assert {name: timed.samples for name, timed in t.items()} == {"a": (1.0, 1.0), "b": (2.0, 2.0)}


def test_interleaved_takes_any_measure_of_a_call(bench: Callable[[str], ModuleType]) -> None:
    timing = bench("_timing")
    reported = iter([0.5, 0.25, 0.75])
    t = timing.interleaved({"run": lambda: next(reported)}, 3, lambda run: run(), warmup=0)
    assert t["run"].samples == (0.5, 0.25, 0.75)


def test_bandwidth_and_memory_bound(bench: Callable[[str], ModuleType]) -> None:
    timing = bench("_timing")
    # a += b over 100-byte operands moves 300 bytes: in 3 s and 6 s.
    add = timing.Timing((3.0, 6.0, 3.0))
    assert timing.bandwidth(add, add_nbytes=100) == 100.0  # 300 bytes / median 3 s
    # 7 transfers of 200 bytes = 1400 bytes at 100 and 50 bytes/s.
    bound = timing.memory_bound(add, add_nbytes=100, transfers=7, nbytes=200)
    assert bound.samples == pytest.approx((14.0, 28.0, 14.0))


def test_in_place_add_adds_and_counts_its_bytes(bench: Callable[[str], ModuleType]) -> None:
    timing = bench("_timing")
    add = timing.InPlaceAdd([(3, 4), (5,)], torch.device("cpu"), dtype=torch.float64)
    assert add.nbytes == (12 + 5) * 8 == timing.nbytes(add.b)
    before = [a.clone() for a in add.a]
    add()
    for a, a0, b in zip(add.a, before, add.b, strict=True):
        torch.testing.assert_close(a, a0 + b, rtol=0, atol=0)


def test_verdict_text(bench: Callable[[str], ModuleType]) -> None:
    report = bench("_report")
    assert (
        report.verdict("RAdam / fused Adam", 1.014, 1.2)
        == "RAdam / fused Adam: 1.01x (target <= 1.20x): met"
    )
    assert (
        report.verdict("sync / bound", 1.5, 1.3) == "sync / bound: 1.50x (target <= 1.30x): not met"
    )
    assert (
        report.verdict("overhead", 0.0022, 0.01, percent=True)
        == "overhead: 0.22% (target <= 1.00%): met"
    )
    assert report.verdict("at the target", 1.3, 1.3).endswith(": met")


def test_ratio_cell_and_ms(bench: Callable[[str], ModuleType]) -> None:
    report, timing = bench("_report"), bench("_timing")
    assert report.ratio_cell(timing.Ratio(1.234, 0.987)) == "1.23x (0.99x)"
    assert report.ratio_cell(timing.Ratio(0.02214, 0.0195), percent=True) == "2.21% (1.95%)"
    assert report.ms(0.012345) == "12.35"


def test_markdown_table(bench: Callable[[str], ModuleType]) -> None:
    report = bench("_report")
    table = report.markdown_table(["step", "ms", "x Adam"], [["RAdam", "7.89", "0.97"]])
    assert table == "| step | ms | x Adam |\n| --- | ---: | ---: |\n| RAdam | 7.89 | 0.97 |"
    with pytest.raises(ValueError, match="a row has 2 cells, the header 3"):
        report.markdown_table(["a", "b", "c"], [["1", "2"]])


def test_run_writes_its_results_under_a_line_naming_machine_torch_threads_and_load(
    bench: Callable[[str], ModuleType], tmp_path: Path
) -> None:
    report = bench("_report")
    args = report.argument_parser("Doc.").parse_args(
        ["--device", "cpu", "--results", str(tmp_path)]
    )
    run = report.Run(args, "benchmarks/some_bench.py", ["--device", "cpu", "--reps", "3"])
    path = run.finish(["| a |\n| --- |\n| 1 |", "- verdict"], variant="_sizes")

    assert path == tmp_path / "some_bench_sizes_cpu.md"
    first, *rest = path.read_text().split("\n\n")
    assert first.startswith(
        "Measured with `python benchmarks/some_bench.py --device cpu --reps 3` on "
    )
    assert f"torch {torch.__version__}, {torch.get_num_threads()} threads" in first
    assert "load average" in first
    assert rest == ["| a |\n| --- |\n| 1 |", "- verdict\n"]


def test_optimizer_step_sizes_parse_and_cut_like_resnet18(
    bench: Callable[[str], ModuleType],
) -> None:
    optimizer_step = bench("optimizer_step")
    assert optimizer_step.parse_size("3M") == 3_000_000
    assert optimizer_step.parse_size("1.5k") == 1_500
    assert optimizer_step.parse_size("42") == 42
    with pytest.raises(Exception, match="a size must be >= 1 parameter"):
        optimizer_step.parse_size("0")
    shapes = optimizer_step.resnet_like_shapes(3_000_000)
    assert sum(s.numel() for s in shapes) == 3_000_000
    assert shapes[0].numel() == optimizer_step.resnet18_shapes()[0].numel()


SMALLEST_RUNS = {
    "optimizer_step": ["--dtypes", "float32", "--rounds", "1", "--bandwidth-numel", "4096"],
    "lookahead_overhead": ["--reps", "1", "--train-reps", "1", "--batch-size", "2"],
    "gradient_centralization": ["--reps", "1", "--batch", "2"],
    "monitor_overhead": [
        *("--repeats", "1", "--warmup", "0", "--event-steps", "1"),
        *("--interval", "1", "--batch", "2", "--groups", "per-tensor"),
    ],
}

#: The start of each script's verdict against its target.
VERDICTS = {
    "optimizer_step": "RAdam / fused Adam (float32): ",
    "lookahead_overhead": "checked sync / its memory bound: ",
    "monitor_overhead": "overhead, one group (wall): ",
}


@pytest.mark.parametrize("script", sorted(SMALLEST_RUNS))
def test_each_script_writes_its_table(
    bench: Callable[[str], ModuleType],
    script: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    module = bench(script)
    if script == "optimizer_step":
        # Its first steps on ResNet-18's 11.7M parameters take seconds; the table is the same.
        small = [torch.Size([64, 3, 3, 3]), torch.Size([64]), torch.Size([10, 64])]
        monkeypatch.setattr(module, "resnet18_shapes", lambda: small)
    argv = [*SMALLEST_RUNS[script], "--device", "cpu", "--results", str(tmp_path)]
    module.main(argv)
    text = (tmp_path / f"{script}_cpu.md").read_text()
    assert text.startswith(f"Measured with `python benchmarks/{script}.py {' '.join(argv)}` on ")
    assert "\n| --- | ---: |" in text
    if script in VERDICTS:
        assert f"\n- {VERDICTS[script]}" in text


def test_optimizer_step_sweep_writes_its_own_table(
    bench: Callable[[str], ModuleType], tmp_path: Path
) -> None:
    argv = ["--sizes", "10K", "20K", "--rounds", "1", "--results", str(tmp_path)]
    bench("optimizer_step").main([*argv, "--device", "cpu", "--bandwidth-numel", "4096"])
    text = (tmp_path / "optimizer_step_sizes_cpu.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| float32 |")]
    assert [row.split(" | ")[1] for row in rows] == ["0.01M", "0.02M"]
    assert "- RAdam / fused Adam (float32, 0.01M): " in text
