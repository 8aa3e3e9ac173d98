"""One ``optimizer.step()`` of lightning_ranger.RAdam against torch's and against the memory bound.

What is compared
    The time of one step on ResNet-18's parameter shapes (``torchvision.models.resnet18()``,
    nothing downloaded: 62 tensors, 11.7M parameters) in float32, bfloat16 and float16
    (``--dtypes``), of

    - ``lightning_ranger.RAdam`` with its default implementation (fused on CPU and CUDA; in 16-bit
      the fused kernel computes in float32 and rounds once),
    - ``torch.optim.RAdam(foreach=True)``,
    - ``torch.optim.Adam(fused=True)``, the baseline: a single-pass step at the same dtype,
    - ``lightning_ranger.RAdam(foreach=True)``, for information (in 16-bit it computes in float32
      copies, the float32-opmath cost of a multi-tensor path),

    and with ``--compile`` each RAdam as ``torch.compile(optimizer.step)`` too (compiled during the
    warm-up; the fused step runs eagerly under compile, as torch's fused Adam does).

    Every optimizer gets its own parameters of the same shapes with a random ``.grad``, takes
    ``--warmup`` untimed steps (at least 8, past RAdam's un-rectified first 5 steps), then the
    candidates are timed interleaved over ``--rounds`` rounds. Ratios are of medians; in brackets
    the median of same-round ratios.

The memory bound
    An Adam-like step reads ``p, g, m, v`` and writes ``p, m, v``: 7 transfers of the parameters'
    dtype. The bandwidth comes from ``a += b`` on two large float32 tensors, timed as one more
    interleaved candidate.

Target: this RAdam / fused Adam at the same dtype <= 1.3x (printed, never asserted).

How to run
    python benchmarks/optimizer_step.py [--dtypes float32 bfloat16 float16] [--compile]
                                        [--sizes [N ...]] [--device cuda]

    ``--sizes`` sweeps 1M to 100M parameters instead (one size at a time; about 8 GB at 100M).
    The results go to ``benchmarks/results/optimizer_step[_sizes][_compile]_<device>.md``. On 2
    quiet CPU cores the default run takes about 40 s, ``--compile`` adds about a minute,
    ``--sizes`` takes about a minute.
"""

from __future__ import annotations

import argparse
import gc
import itertools
from collections.abc import Callable, Sequence

import torch
import torchvision
from _report import Run, argument_parser, markdown_table, ms, verdict
from _timing import InPlaceAdd, Timer, Timing, bandwidth, interleaved, memory_bound
from torch import Tensor
from torch.optim.optimizer import _default_to_fused_or_foreach

from lightning_ranger.optim import RAdam

TRANSFERS_PER_PARAM = 7  # read p, g, m, v; write p, m, v
DEFAULT_SIZES = (1_000_000, 3_000_000, 10_000_000, 30_000_000, 100_000_000)
TARGET_VS_FUSED_ADAM = 1.3
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

OURS = "`lightning_ranger.RAdam` (default)"
OURS_FOREACH = "`lightning_ranger.RAdam(foreach=True)`"
TORCH_RADAM = "`torch.optim.RAdam(foreach=True)`"
TORCH_ADAM = "`torch.optim.Adam(fused=True)`"
ADD = "a += b"
COMPILED = ", compiled"  # suffix of a candidate's torch.compile twin

OptimizerFactory = Callable[[list[Tensor]], torch.optim.Optimizer]

CANDIDATES: dict[str, OptimizerFactory] = {
    OURS: lambda ps: RAdam(ps, lr=1e-4),
    TORCH_ADAM: lambda ps: torch.optim.Adam(ps, lr=1e-4, fused=True),
    OURS_FOREACH: lambda ps: RAdam(ps, lr=1e-4, foreach=True),
    TORCH_RADAM: lambda ps: torch.optim.RAdam(ps, lr=1e-4, foreach=True),
}
#: The candidates that ``--compile`` also times as ``torch.compile(optimizer.step)``.
COMPILABLE = (OURS, OURS_FOREACH, TORCH_RADAM)


def resnet18_shapes() -> list[torch.Size]:
    """Parameter shapes of ``torchvision.models.resnet18()`` (random init, nothing downloaded)."""
    return [p.shape for p in torchvision.models.resnet18().parameters()]


def resnet_like_shapes(n_params: int) -> list[torch.Size]:
    """``n_params`` parameters cut like ResNet-18: its tensor sizes in model order, repeated as
    often as needed, the last one truncated so that the total is exactly ``n_params``."""
    shapes: list[torch.Size] = []
    left = n_params
    for numel in itertools.cycle(s.numel() for s in resnet18_shapes()):
        if left == 0:
            break
        take = min(numel, left)
        shapes.append(torch.Size([take]))
        left -= take
    return shapes


def make_params(
    shapes: Sequence[torch.Size], device: torch.device, dtype: torch.dtype
) -> list[Tensor]:
    """Parameters of ``shapes`` with gradients, the same random values for every call."""
    generator = torch.Generator(device=device).manual_seed(0)
    params = []
    for shape in shapes:
        p = torch.randn(shape, generator=generator, device=device).to(dtype).requires_grad_()
        p.grad = torch.randn(shape, generator=generator, device=device).to(dtype)
        params.append(p)
    return params


def measure(
    shapes: Sequence[torch.Size], dtype: torch.dtype, args: argparse.Namespace, rounds: int
) -> tuple[dict[str, Timing], Timing, float]:
    """Every candidate's step timed interleaved with the in-place add; returns their timings,
    the memory bound of a step (from each run of the add) and the bandwidth (bytes/s)."""
    device = torch.device(args.device)
    names = list(CANDIDATES) + ([name + COMPILED for name in COMPILABLE] if args.compile else [])
    steps: dict[str, Callable[[], object]] = {}
    for name in names:
        optimizer = CANDIDATES[name.removesuffix(COMPILED)](make_params(shapes, device, dtype))
        steps[name] = torch.compile(optimizer.step) if name.endswith(COMPILED) else optimizer.step
    add = InPlaceAdd([(args.bandwidth_numel,)], device)
    steps[ADD] = add
    timings = interleaved(steps, rounds, Timer(device), warmup=args.warmup)
    add_timing = timings.pop(ADD)
    params_nbytes = sum(s.numel() for s in shapes) * dtype.itemsize
    bound = memory_bound(add_timing, add.nbytes, TRANSFERS_PER_PARAM, params_nbytes)
    bytes_per_s = bandwidth(add_timing, add.nbytes)
    del steps, add
    if args.compile:
        torch._dynamo.reset()  # frees the compiled steps and the tensors they hold
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return timings, bound, bytes_per_s


def verdicts(t: dict[str, Timing], label: str) -> list[str]:
    """The verdict against the target, torch's RAdam against ours and, with ``--compile``, each
    compiled step against its eager one."""
    ours = t[OURS].ratio(t[TORCH_ADAM]).median
    lines = [verdict(f"RAdam / fused Adam ({label})", ours, TARGET_VS_FUSED_ADAM)]
    lines.append(
        f"torch's foreach RAdam / this RAdam ({label}): {t[TORCH_RADAM].ratio(t[OURS]).median:.2f}x"
    )
    lines += [
        f"{candidate} compiled / eager ({label}): "
        f"{t[candidate + COMPILED].ratio(t[candidate]).median:.2f}x"
        for candidate in COMPILABLE
        if candidate + COMPILED in t
    ]
    return lines


def resnet18_report(args: argparse.Namespace) -> list[str]:
    """One table of every dtype's steps on ResNet-18's shapes, and the verdicts."""
    shapes = resnet18_shapes()
    rows, lines = [], []
    for name in args.dtypes:
        t, bound, bytes_per_s = measure(shapes, DTYPES[name], args, args.rounds)
        adam = t[TORCH_ADAM]
        for candidate, timing in t.items():
            q1, q3 = timing.quartiles
            vs_adam = f"{timing.ratio(adam).median:.2f} [{timing.paired(adam):.2f}]"
            emphasis = "**" if candidate == OURS else ""
            cells = [ms(timing.median), f"{ms(q1)}-{ms(q3)}", ms(timing.minimum)]
            cells += [f"{emphasis}{vs_adam}{emphasis}", f"{timing.ratio(bound).median:.2f}"]
            rows.append([candidate, name, *cells])
        at = f"{TRANSFERS_PER_PARAM} transfers at {bytes_per_s / 1e9:.1f} GB/s"
        cells = [ms(bound.median), "", "", f"{bound.ratio(adam).median:.2f}", "1.00"]
        rows.append([f"memory bound ({at})", name, *cells])
        lines += verdicts(t, name)
    n = sum(s.numel() for s in shapes)
    header = ["`optimizer.step()`", "dtype", "median ms", "q1-q3 ms", "min ms"]
    header += ["x fused Adam [paired]", "x bound"]
    title = (
        f"ResNet-18 parameter shapes ({len(shapes)} tensors, {n:,} parameters), "
        f"{args.rounds} interleaved rounds after {args.warmup} warm-up steps:"
    )
    return [title, markdown_table(header, rows), "\n".join(f"- {line}" for line in lines)]


def sizes_report(args: argparse.Namespace) -> list[str]:
    """One row per dtype and parameter count, and the verdicts."""
    reference = sum(s.numel() for s in resnet18_shapes())
    rows, lines = [], []
    for name in args.dtypes:
        for n in args.sizes or DEFAULT_SIZES:
            rounds = max(args.min_rounds, min(args.rounds, round(args.rounds * reference / n)))
            shapes = resnet_like_shapes(n)
            t, bound, bytes_per_s = measure(shapes, DTYPES[name], args, rounds)
            ours, adam = t[OURS], t[TORCH_ADAM]
            rows.append(
                [name, f"{n / 1e6:g}M", str(len(shapes)), str(rounds)]
                + [ms(t[c].median) for c in (OURS, OURS_FOREACH, TORCH_RADAM, TORCH_ADAM)]
                + [ms(bound.median), f"{bytes_per_s / 1e9:.1f}", f"{ours.ratio(adam).median:.2f}"]
                + [f"{t[TORCH_RADAM].ratio(ours).median:.2f}", f"{ours.ratio(bound).median:.2f}"]
            )
            lines += verdicts(t, f"{name}, {n / 1e6:g}M")
    header = ["dtype", "params", "tensors", "rounds", "ours ms", "ours foreach ms"]
    header += ["torch RAdam ms", "fused Adam ms", "bound ms", "GB/s", "ours / Adam"]
    header += ["torch RAdam / ours", "ours / bound"]
    title = (
        "Parameters cut like ResNet-18 (its tensor sizes in model order, repeated); ours: "
        "`lightning_ranger.RAdam` (default), torch RAdam: `torch.optim.RAdam(foreach=True)`, "
        "fused Adam: `torch.optim.Adam(fused=True)`; medians:"
    )
    return [title, markdown_table(header, rows), "\n".join(f"- {line}" for line in lines)]


def parse_size(text: str) -> int:
    """``"3M"``, ``"500K"``, ``"1.5G"`` or a plain integer, as a parameter count."""
    scales = {"K": 10**3, "M": 10**6, "G": 10**9}
    text = text.strip().upper()
    scale = scales.get(text[-1:], 1)
    value = round(float(text[:-1]) * scale) if scale > 1 else int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"a size must be >= 1 parameter, got {text!r}")
    return value


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argument_parser(__doc__)
    parser.add_argument(
        "--sizes",
        nargs="*",
        type=parse_size,
        metavar="N",
        help="sweep parameter counts instead of ResNet-18 (default 1M 3M 10M 30M 100M; K/M/G "
        "suffixes); rounds shrink with size, to at least --min-rounds",
    )
    parser.add_argument(
        "--dtypes",
        nargs="+",
        choices=list(DTYPES),
        help="parameter dtypes (default: float32 bfloat16 float16; with --sizes: float32)",
    )
    parser.add_argument(
        "--compile", action="store_true", help="also time each RAdam's torch.compile'd step"
    )
    parser.add_argument("--rounds", type=int, default=60, help="timed rounds (default 60)")
    parser.add_argument(
        "--min-rounds", type=int, default=9, help="fewest rounds for the largest --sizes"
    )
    parser.add_argument(
        "--warmup", type=int, default=8, help="untimed steps per candidate first (>= 8)"
    )
    parser.add_argument(
        "--bandwidth-numel",
        type=int,
        help="elements of each float32 tensor of a += b (default 2**25 on CPU, 2**27 on CUDA)",
    )
    args = parser.parse_args(argv)
    if args.warmup < 8:
        parser.error("--warmup must be >= 8, so that RAdam is past its un-rectified first steps")
    if args.rounds < 1 or args.min_rounds < 1:
        parser.error("--rounds and --min-rounds must be >= 1")
    if args.bandwidth_numel is None:
        args.bandwidth_numel = 2**27 if args.device.startswith("cuda") else 2**25
    if args.dtypes is None:
        args.dtypes = ["float32"] if args.sizes is not None else list(DTYPES)
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    run = Run(args, __file__, argv)
    fused, foreach = _default_to_fused_or_foreach(
        [torch.zeros(1, device=run.device)], False, use_fused=True
    )
    path = "fused" if fused else "foreach" if foreach else "per-tensor"
    print(f"{OURS} takes the {path} path on {run.device.type}; measuring...", flush=True)
    report = resnet18_report(args) if args.sizes is None else sizes_report(args)
    # Separate files, so that a sweep or a compiled run leaves the default run's table alone.
    variant = ("" if args.sizes is None else "_sizes") + ("_compile" if args.compile else "")
    run.finish(report, variant)


if __name__ == "__main__":
    main()
