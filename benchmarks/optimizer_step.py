"""Benchmark of one ``optimizer.step()``: lightning_ranger.RAdam against torch and the memory bound.

What is measured
    The wall-clock time of one ``optimizer.step()`` on ResNet-18's parameter shapes
    (``torchvision.models.resnet18()``, no weights downloaded: 62 tensors, 11.7M parameters), in
    float32, bfloat16 and float16 (``--dtypes``), for

    - ``lightning_ranger.RAdam`` with its default implementation (fused on CPU and CUDA; in 16-bit
      the fused kernel computes in float32 and rounds once),
    - ``torch.optim.RAdam(foreach=True)``,
    - ``torch.optim.Adam(fused=True)``, the baseline: a single-pass step at the same dtype,
    - ``lightning_ranger.RAdam(foreach=True)``, for information (in 16-bit it computes the update
      in float32 copies, the float32-opmath cost of a multi-tensor path).

    With ``--compile`` each RAdam also runs as ``torch.compile(optimizer.step)``, timed beside its
    eager step (``lightning_ranger.RAdam``'s fused step runs eagerly under compile, as torch's fused
    Adam does; the compilation happens during the warm-up and is not timed).

    Every optimizer gets its own parameters of the same shapes, with a random ``.grad`` set once.
    Each is warmed up (``--warmup`` steps, at least 8, so that RAdam is past its un-rectified first
    5 steps and takes the rectified path that is timed), then the candidates are timed round-robin,
    one step each per round with the starting candidate rotating, over ``--rounds`` rounds, and
    the median of each is reported (machines are noisy; interleaving spreads the noise evenly),
    with quartiles and the minimum. Ratios are of medians; beside the main ratios the median of the
    same-round ratios is printed too, which is steadier when other work comes and goes. The CPU
    time other processes took during the run is printed last.

How the bound is computed
    An Adam-like step must at least read ``p, g, m, v`` and write ``p, m, v``: 7 transfers of the
    parameters' dtype (28 bytes per parameter in float32, 14 in 16-bit). The machine's bandwidth is
    measured in the same run, interleaved with the optimizers as one more candidate:
    ``a.add_(b)`` on two large float32 tensors (3 transfers per element: read a, read b, write a),
    bandwidth = 12 * numel / median time. Bound = 7 * itemsize * n_params / bandwidth. "x bound" =
    median step time / bound (1.0 would be at the memory limit).

Printed against the baseline (the script never fails on them): this RAdam / torch fused Adam at the
same dtype (target <= 1.3x), torch's foreach RAdam / this RAdam, and with ``--compile`` compiled /
eager per optimizer.

How to run
    python benchmarks/optimizer_step.py [--dtypes float32 bfloat16 float16] [--compile]
                                        [--sizes] [--device cuda]

    ``--sizes`` sweeps 1M, 3M, 10M, 30M and 100M parameters instead of ResNet-18 (one size built
    at a time, then freed; float32 unless ``--dtypes`` says otherwise). On 2 quiet CPU cores the
    default run takes about a minute, ``--compile`` adds the compilations (about a minute) and
    ``--sizes`` takes a few minutes (about 8 GB of memory at 100M parameters); other processes slow
    all of them and disturb the timings, so the script reports how busy the other cores were.
"""

from __future__ import annotations

import argparse
import functools
import gc
import itertools
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torchvision
from torch import Tensor
from torch.optim.optimizer import _default_to_fused_or_foreach

from lightning_ranger import RAdam

TRANSFERS_PER_PARAM = 7  # read p, g, m, v; write p, m, v
DEFAULT_SIZES = (1_000_000, 3_000_000, 10_000_000, 30_000_000, 100_000_000)
TARGET_VS_FUSED_ADAM = 1.3  # this RAdam / torch fused Adam at the same dtype: target at most this
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

OURS = "RAdam (ours, default)"
OURS_FOREACH = "RAdam (ours, foreach)"
TORCH_RADAM = "torch RAdam (foreach)"
TORCH_ADAM = "torch Adam (fused)"
BANDWIDTH = "add_ bandwidth"

COMPILED = " compiled"  # suffix of a candidate's compiled twin

OptimizerFactory = Callable[[list[Tensor]], torch.optim.Optimizer]

CANDIDATES: dict[str, OptimizerFactory] = {
    OURS: lambda ps: RAdam(ps, lr=1e-4),
    TORCH_RADAM: lambda ps: torch.optim.RAdam(ps, lr=1e-4, foreach=True),
    TORCH_ADAM: lambda ps: torch.optim.Adam(ps, lr=1e-4, fused=True),
    OURS_FOREACH: lambda ps: RAdam(ps, lr=1e-4, foreach=True),
}
#: The candidates that ``--compile`` also times as ``torch.compile(optimizer.step)``.
COMPILABLE = (OURS, OURS_FOREACH, TORCH_RADAM)


def candidate_names(compile_steps: bool) -> list[str]:
    """Every timed candidate, compiled twins after their eager originals."""
    names = list(CANDIDATES)
    if compile_steps:
        names += [name + COMPILED for name in COMPILABLE]
    return names


@dataclass(frozen=True)
class Result:
    """Median step times (seconds) of every candidate, and the derived memory bound."""

    n_params: int
    n_tensors: int
    dtype: torch.dtype
    median_s: dict[str, float]
    quartiles_s: dict[str, tuple[float, float]]
    min_s: dict[str, float]
    samples_s: dict[str, list[float]]  # per round, in round order
    bandwidth: float  # bytes per second, from a.add_(b)

    def paired_ratio(self, num: str, den: str) -> float:
        """Median over rounds of ``num``'s time / ``den``'s time in the same round (robust to
        load that comes and goes, which the ratio of medians is not)."""
        pairs = zip(self.samples_s[num], self.samples_s[den], strict=True)
        return statistics.median(a / b for a, b in pairs)

    @property
    def bound_s(self) -> float:
        return TRANSFERS_PER_PARAM * self.dtype.itemsize * self.n_params / self.bandwidth


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


def random_tensors(
    shapes: Sequence[torch.Size],
    device: torch.device,
    seed: int,
    dtype: torch.dtype = torch.float32,
) -> tuple[list[Tensor], list[Tensor]]:
    """Random normal values and gradients of ``shapes`` in ``dtype``, made on ``device``."""
    gen = torch.Generator(device=device).manual_seed(seed)
    values = [torch.randn(shape, generator=gen, device=device).to(dtype) for shape in shapes]
    grads = [torch.randn(shape, generator=gen, device=device).to(dtype) for shape in shapes]
    return values, grads


def make_params(values: Sequence[Tensor], grads: Sequence[Tensor]) -> list[Tensor]:
    """Fresh parameters (copies of ``values``) with copies of ``grads`` as their ``.grad``."""
    params = []
    for value, grad in zip(values, grads, strict=True):
        p = value.clone().requires_grad_()
        p.grad = grad.clone()
        params.append(p)
    return params


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds taken by ``fn()``, synchronizing the accelerator before and after."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def measure(
    shapes: Sequence[torch.Size],
    device: torch.device,
    rounds: int,
    warmup: int,
    bandwidth_numel: int,
    dtype: torch.dtype = torch.float32,
    compile_steps: bool = False,
) -> Result:
    """Time every candidate and ``a.add_(b)``, interleaved round-robin; return the medians."""
    n_params = sum(s.numel() for s in shapes)
    # Every optimizer gets its own copies of the same random values and gradients.
    values, grads = random_tensors(shapes, device, seed=0, dtype=dtype)
    steps: dict[str, Callable[[], object]] = {}
    optimizers = []
    for name in candidate_names(compile_steps):
        optimizer = CANDIDATES[name.removesuffix(COMPILED)](make_params(values, grads))
        optimizers.append(optimizer)
        steps[name] = torch.compile(optimizer.step) if name.endswith(COMPILED) else optimizer.step
    del values, grads
    (a,), (b,) = random_tensors([torch.Size([bandwidth_numel])], device, seed=1)
    steps[BANDWIDTH] = functools.partial(a.add_, b)  # a += b: read a, read b, write a

    for step in steps.values():
        for _ in range(warmup):
            step()
    sync(device)

    names = list(steps)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for k in range(len(names)):  # rotate the starting candidate every round
            name = names[(r + k) % len(names)]
            samples[name].append(timed(steps[name], device))

    median_s = {name: statistics.median(ts) for name, ts in samples.items()}
    min_s = {name: min(ts) for name, ts in samples.items() if name != BANDWIDTH}
    quartiles_s = {}
    for name, ts in samples.items():
        q = statistics.quantiles(ts, n=4, method="inclusive") if len(ts) > 1 else [ts[0]] * 3
        quartiles_s[name] = (q[0], q[2])
    bandwidth = 3 * 4 * bandwidth_numel / median_s.pop(BANDWIDTH)
    quartiles_s.pop(BANDWIDTH)
    del optimizers, steps, a, b
    if compile_steps:
        torch._dynamo.reset()  # frees the compiled steps and the tensors they hold
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return Result(n_params, len(shapes), dtype, median_s, quartiles_s, min_s, samples, bandwidth)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def print_context(device: torch.device, args: argparse.Namespace) -> None:
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}")
    print(f"device: {device} ({device_name(device)})")
    print(f"threads: {torch.get_num_threads()} (CPU cores seen: {os.cpu_count()})")
    probe = [torch.zeros(1, device=device)]
    fused, foreach = _default_to_fused_or_foreach(probe, False, use_fused=True)
    path = "fused" if fused else "foreach" if foreach else "per-tensor"
    print(f"{OURS} selects the {path} path for floating point tensors on {device.type}")
    print(
        f"rounds: {args.rounds}, warmup steps: {args.warmup}, "
        f"add_ bandwidth tensors: 2 x {args.bandwidth_numel:,} float32"
    )
    if args.compile:
        print("--compile: torch.compile(optimizer.step), compiled during the warm-up")
    print()


def _busy_cpu_seconds() -> float | None:
    """Seconds of CPU time the whole machine has spent busy since boot (Linux), else ``None``."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


class OtherLoad:
    """How many cores other processes kept busy between construction and :meth:`report`.

    Other work on the machine shows up in the timings; this says how much there was.
    """

    def __init__(self) -> None:
        self.wall = time.perf_counter()
        self.busy = _busy_cpu_seconds()
        self.own = sum(os.times()[:2])

    def report(self) -> str:
        busy = _busy_cpu_seconds()
        if busy is None or self.busy is None:
            return "CPU use of other processes: unknown (no /proc/stat)"
        wall = time.perf_counter() - self.wall
        others = max(0.0, (busy - self.busy) - (sum(os.times()[:2]) - self.own)) / wall
        return (
            f"other processes (or VM steal) kept {others:.2f} of {os.cpu_count()} cores busy on "
            f"average during this run ({wall:.0f} s); above ~0.1 the timings are disturbed"
        )


def print_table(result: Result) -> None:
    adam = result.median_s[TORCH_ADAM]
    bound = result.bound_s
    header = (
        f"{'step':<34}{'median ms':>11}{'q1-q3 ms':>17}{'min ms':>9}{'x fused Adam':>14}"
        f"{'x bound':>9}"
    )
    print(header)
    print("-" * len(header))
    for name in result.median_s:
        med = result.median_s[name]
        q1, q3 = result.quartiles_s[name]
        spread = f"{q1 * 1e3:.2f}-{q3 * 1e3:.2f}"
        print(
            f"{name:<34}{med * 1e3:>11.2f}{spread:>17}{result.min_s[name] * 1e3:>9.2f}"
            f"{med / adam:>13.2f}x{med / bound:>8.2f}x"
        )
    itemsize = result.dtype.itemsize
    bw = f"({TRANSFERS_PER_PARAM * itemsize} B/param at {result.bandwidth / 1e9:.1f} GB/s)"
    print(f"{'memory bound':<34}{bound * 1e3:>11.2f}  {bw}")
    print("ratios are of medians; q1-q3: quartiles over the rounds")
    print()
    print_ratios(result)


def print_ratios(result: Result) -> None:
    """The ratios against the baselines of the same run, with the same-round (paired) ratios."""
    med = result.median_s
    dtype = str(result.dtype).removeprefix("torch.")
    vs_adam = med[OURS] / med[TORCH_ADAM]
    print(
        f"this RAdam / torch fused Adam ({dtype}) = {vs_adam:.2f}x "
        f"(target <= {TARGET_VS_FUSED_ADAM}x)"
        f"   [paired: {result.paired_ratio(OURS, TORCH_ADAM):.2f}x]"
    )
    print(
        f"torch foreach RAdam / this RAdam ({dtype}) = {med[TORCH_RADAM] / med[OURS]:.2f}x"
        f"   [paired: {result.paired_ratio(TORCH_RADAM, OURS):.2f}x]"
    )
    for name in COMPILABLE:
        if name + COMPILED in med:
            print(
                f"{name}: compiled / eager = {med[name + COMPILED] / med[name]:.2f}x"
                f"   [paired: {result.paired_ratio(name + COMPILED, name):.2f}x]"
            )
    print("[paired] = median of same-round ratios, for comparison")


def print_sizes_header(compile_steps: bool) -> None:
    cols = [
        f"{'dtype':>9}",
        f"{'params':>8}",
        f"{'tensors':>8}",
        f"{'rounds':>7}",
        f"{'ours':>9}",
        f"{'ours fe':>9}",
        f"{'torchRAdam':>11}",
        f"{'fusedAdam':>10}",
        f"{'bound':>9}",
        f"{'GB/s':>6}",
        f"{'ours/Adam':>10}",
        f"{'tRAdam/ours':>12}",
        f"{'ours/bound':>11}",
    ]
    if compile_steps:
        cols.append(f"{'fe comp/eager':>14}")
    header = "".join(cols)
    print("times in ms (median); ours fe = RAdam (ours, foreach)")
    print(header)
    print("-" * len(header))


def print_size_row(result: Result, rounds: int) -> None:
    med = result.median_s
    row = (
        f"{str(result.dtype).removeprefix('torch.'):>9}"
        f"{human(result.n_params):>8}{result.n_tensors:>8}{rounds:>7}"
        f"{med[OURS] * 1e3:>9.2f}{med[OURS_FOREACH] * 1e3:>9.2f}"
        f"{med[TORCH_RADAM] * 1e3:>11.2f}{med[TORCH_ADAM] * 1e3:>10.2f}"
        f"{result.bound_s * 1e3:>9.2f}{result.bandwidth / 1e9:>6.1f}"
        f"{med[OURS] / med[TORCH_ADAM]:>9.2f}x{med[TORCH_RADAM] / med[OURS]:>11.2f}x"
        f"{med[OURS] / result.bound_s:>10.2f}x"
    )
    if OURS_FOREACH + COMPILED in med:
        row += f"{med[OURS_FOREACH + COMPILED] / med[OURS_FOREACH]:>13.2f}x"
    print(row, flush=True)


def human(n: int) -> str:
    for unit, scale in (("G", 10**9), ("M", 10**6), ("K", 10**3)):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return str(n)


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
    parser = argparse.ArgumentParser(
        description=(
            "Median time of one optimizer.step() of lightning_ranger.RAdam, torch.optim.RAdam "
            "(foreach), torch.optim.Adam (fused) and lightning_ranger.RAdam (foreach), against "
            "the memory bound of 7 transfers per parameter at the a.add_(b) bandwidth measured "
            "in the same run; default on ResNet-18's parameter shapes (11.7M) in float32, "
            "bfloat16 and float16."
        )
    )
    parser.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="torch device (default: cuda if available, else cpu)",
    )
    parser.add_argument(
        "--sizes",
        nargs="*",
        type=parse_size,
        metavar="N",
        help=(
            "instead of ResNet-18, sweep parameter counts (default 1M 3M 10M 30M 100M; K/M/G "
            "suffixes accepted). Each size is cut like ResNet-18: its 62 tensor sizes in model "
            "order (9.4K to 2.4M elements, mean 189K), repeated, the last tensor truncated. "
            "Rounds shrink with size (--rounds at <= 11.7M, then fewer, at least --min-rounds)"
        ),
    )
    parser.add_argument(
        "--dtypes",
        nargs="+",
        choices=list(DTYPES),
        default=None,
        help="parameter dtypes (default: float32 bfloat16 float16; with --sizes: float32)",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="also time each RAdam as torch.compile(optimizer.step), beside its eager step",
    )
    parser.add_argument(
        "--rounds", type=int, default=60, help="interleaved timing rounds (default 60)"
    )
    parser.add_argument(
        "--min-rounds",
        type=int,
        default=9,
        help="fewest rounds for the largest --sizes (default 9)",
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=8,
        help="untimed steps per candidate first; at least 8, past RAdam's un-rectified steps",
    )
    parser.add_argument(
        "--bandwidth-numel",
        type=int,
        default=None,
        help="elements of each float32 tensor in a.add_(b) (default 2**25 on CPU, 2**27 on CUDA)",
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)"
    )
    args = parser.parse_args(argv)
    if args.warmup < 8:
        parser.error("--warmup must be >= 8 so RAdam is past its un-rectified first 5 steps")
    if args.rounds < 1 or args.min_rounds < 1:
        parser.error("--rounds and --min-rounds must be >= 1")
    if args.bandwidth_numel is None:
        args.bandwidth_numel = 2**27 if args.device.startswith("cuda") else 2**25
    if args.dtypes is None:
        args.dtypes = ["float32"] if args.sizes is not None else list(DTYPES)
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print_context(device, args)
    load = OtherLoad()

    dtypes = [DTYPES[name] for name in args.dtypes]
    if args.sizes is None:
        shapes = resnet18_shapes()
        n = sum(s.numel() for s in shapes)
        for dtype in dtypes:
            print(f"ResNet-18 parameter shapes: {len(shapes)} tensors, {n:,} {dtype} parameters")
            result = measure(
                shapes, device, args.rounds, args.warmup, args.bandwidth_numel, dtype, args.compile
            )
            print_table(result)
            print()
        print(load.report())
        return

    sizes = args.sizes or list(DEFAULT_SIZES)
    reference = sum(s.numel() for s in resnet18_shapes())
    print_sizes_header(args.compile)
    for dtype in dtypes:
        for n in sizes:
            rounds = max(args.min_rounds, min(args.rounds, round(args.rounds * reference / n)))
            result = measure(
                resnet_like_shapes(n),
                device,
                rounds,
                args.warmup,
                args.bandwidth_numel,
                dtype,
                args.compile,
            )
            print_size_row(result, rounds)
    print()
    print(
        f"ours/Adam: this RAdam / torch fused Adam, same dtype (target <= {TARGET_VS_FUSED_ADAM}x)"
    )
    print(load.report())


if __name__ == "__main__":
    main()
