"""Cost of Lookahead's sync on ResNet-18's parameters, three figures from one run.

1. One sync, with the check for NaN/inf that precedes it, against its memory bound. The check
   reads the fast weights (1 transfer per parameter); the sync reads the slow and the fast weights
   and writes both (4 transfers): 5 float32 transfers per parameter, since the slow weights may
   only change once every rank's check has passed. The bound is 5 transfers at the bandwidth of
   an in-place add (``a += b``: 3 transfers) over tensors of the same shapes, measured in the same
   run. The check alone and the sync alone are reported against their own bounds (1 and 4
   transfers) too.
2. The amortized cost per optimizer step at ``k`` (one checked sync every ``k`` steps), relative
   to one :class:`~lightning_ranger.RAdam` step.
3. The overhead on a full ResNet-18 training step (forward, backward, RAdam step; batch 32, 32x32
   inputs): the time of one checked sync over that of ``k`` training steps. (Timing ``k`` steps
   with a sync against ``k`` steps without cannot resolve 1% on a CPU, where repetitions of a
   training step spread by more than that.)

The measured variants are interleaved (each repetition times each variant once, so drifts in clock
speed or machine load hit all of them alike); each figure is printed with its baseline, medians
(minima in parentheses). Nothing is asserted.

Run: ``python benchmarks/lookahead_overhead.py`` (about a minute on 2 CPU cores; ``--help``).
"""

from __future__ import annotations

import argparse

import torch
import torchvision
from _timing import add_bound, fmt_ms, interleaved, ratio, timer

from lightning_ranger import RAdam
from lightning_ranger.callbacks._slow_weights import SlowWeights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--k", type=int, default=6, help="optimizer steps per sync")
    parser.add_argument("--reps", type=int, default=30, help="repetitions of figures 1 and 2")
    parser.add_argument("--train-reps", type=int, default=10, help="repetitions of figure 3")
    parser.add_argument("--batch-size", type=int, default=32)
    default_device = "cuda" if torch.cuda.is_available() else "cpu"
    parser.add_argument("--device", default=default_device)
    args = parser.parse_args()
    device = torch.device(args.device)
    time_it = timer(device)

    torch.manual_seed(0)
    model = torchvision.models.resnet18().to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    numel = sum(p.numel() for p in params)
    optimizer = RAdam(params, lr=1e-3)
    slow = SlowWeights(model)

    # 1 and 2: one sync, the in-place add that sets the bound, one RAdam step.
    a = [torch.randn_like(p) for p in params]
    b = [torch.randn_like(p) for p in params]
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    for _ in range(6):  # past RAdam's un-rectified first steps
        optimizer.step()

    def check() -> None:
        slow.first_nonfinite(device).item()

    def checked_sync() -> None:
        check()
        slow.sync(0.5)

    t = interleaved(
        {
            "add": lambda: torch._foreach_add_(a, b),
            "check": check,
            "sync": lambda: slow.sync(0.5),
            "checked": checked_sync,
            "radam": optimizer.step,
        },
        args.reps,
        time_it,
    )
    bounds = {n: add_bound(t["add"], transfers=n) for n in (1, 4, 5)}
    bandwidth = 3 * 4 * numel / t["add"][0]
    checked_ratio = ratio(t["checked"], bounds[5])
    amortized = ratio(t["checked"], t["radam"], scale=args.k)

    # 3: training steps interleaved with syncs.
    x = torch.randn(args.batch_size, 3, 32, 32, device=device)
    y = torch.randint(0, 1000, (args.batch_size,), device=device)

    def train_step() -> None:
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    model.train()
    steps = interleaved({"train": train_step, "sync": checked_sync}, args.train_reps, time_it)
    overhead = ratio(steps["sync"], steps["train"], scale=args.k)

    print(f"ResNet-18: {len(params)} parameters, {numel / 1e6:.2f} M elements, float32")
    print(
        f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads; "
        "medians (minima) of interleaved runs"
    )
    megabytes = 4 * numel / 1e6
    print(
        f"1. one checked sync: {fmt_ms(t['checked'])}; memory bound {fmt_ms(bounds[5])} = "
        f"5 x {megabytes:.1f} MB at the in-place-add bandwidth ({bandwidth / 1e9:.2f} GB/s): "
        f"{checked_ratio[0]:.2f}x ({checked_ratio[1]:.2f}x) the bound"
    )
    for name, transfers in (("check", 1), ("sync", 4)):
        part = ratio(t[name], bounds[transfers])
        print(
            f"   {name} alone: {fmt_ms(t[name])}; bound {fmt_ms(bounds[transfers])} = "
            f"{transfers} x {megabytes:.1f} MB: {part[0]:.2f}x ({part[1]:.2f}x) the bound"
        )
    print(
        f"2. amortized at k={args.k}: {amortized[0]:.1%} ({amortized[1]:.1%}) of a RAdam step "
        f"({fmt_ms(t['radam'])})"
    )
    print(
        f"3. training step (batch {args.batch_size}, 32x32 inputs, RAdam): "
        f"{fmt_ms(steps['train'])}; one checked sync every {args.k} steps "
        f"({fmt_ms(steps['sync'])}) adds {overhead[0]:.2%} ({overhead[1]:.2%})"
    )


if __name__ == "__main__":
    main()
