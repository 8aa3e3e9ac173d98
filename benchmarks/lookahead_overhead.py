"""Cost of Lookahead's sync on ResNet-18's parameters, four figures from one run.

The sync and its check are the plain-PyTorch functions of :mod:`lightning_ranger.optim.lookahead`:
``lookahead_sync_(slow, fast, alpha)`` as a plain loop calls it, the same sync with its batches cut
once (``sync_batches``, then ``sync_batch_`` on each batch at every sync) and
``first_nonfinite(fast)``, the check for NaN/inf that precedes it. The checked sync is
:class:`~lightning_ranger.optim.slow_copies.SlowCopies`' ``nonfinite`` then ``sync``: what the
Lookahead callback and the :class:`~lightning_ranger.optim.Lookahead` optimizer wrapper both run.

1. One checked sync against its memory bound. The check reads the fast weights (1 transfer per
   parameter); the sync reads the slow and the fast weights and writes both (4 transfers): 5
   float32 transfers per parameter, since the slow weights may only change once every rank's
   check has passed. The bound is 5 transfers at the bandwidth of an in-place add (``a += b``: 3
   transfers) over tensors of the same shapes, measured in the same run. The check alone and the
   syncs alone are reported against their own bounds (1 and 4 transfers) too.
2. The amortized cost per optimizer step at ``k`` (one checked sync every ``k`` steps), relative
   to one :class:`~lightning_ranger.RAdam` step.
3. The overhead on a full ResNet-18 training step (forward, backward, RAdam step; batch 32, 32x32
   inputs): the time of one checked sync over that of ``k`` training steps. (Timing ``k`` steps
   with a sync against ``k`` steps without cannot resolve 1% on a CPU, where repetitions of a
   training step spread by more than that.)
4. The wrapper's steps side by side with the inner optimizer's: ``k`` steps of
   ``Lookahead(RAdam(...), k)`` (one of them syncs) against ``k`` steps of the same ``RAdam``, and
   one wrapper step that does not sync against one inner step (the wrapper's own bookkeeping).

The variants and the in-place add are timed interleaved, each right after an (untimed) optimizer
step, as the callback's sync runs, so that each finds the caches alike; every figure is a ratio of
medians (of minima in parentheses) against its baseline. Target: a checked sync within 1.3x its
memory bound (printed, never asserted).

Run: ``python benchmarks/lookahead_overhead.py`` (about 10 s on 2 quiet CPU cores; ``--help``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torchvision
from _report import Run, argument_parser, markdown_table, ms, ratio_cell, verdict
from _timing import InPlaceAdd, Timer, bandwidth, interleaved, memory_bound

from lightning_ranger.optim import Lookahead, RAdam, first_nonfinite, lookahead_sync_
from lightning_ranger.optim.lookahead import sync_batch_, sync_batches
from lightning_ranger.optim.slow_copies import SlowCopies

TARGET_VS_BOUND = 1.3
ALPHA = 0.5


def main(argv: Sequence[str] | None = None) -> None:
    parser = argument_parser(__doc__)
    parser.add_argument("--k", type=int, default=6, help="optimizer steps per sync")
    parser.add_argument("--reps", type=int, default=30, help="rounds of figures 1 and 2")
    parser.add_argument("--train-reps", type=int, default=10, help="rounds of figure 3")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args(argv)
    run = Run(args, __file__, argv)
    device = run.device

    torch.manual_seed(0)
    model = torchvision.models.resnet18().to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = RAdam(params, lr=1e-3)
    fast = [p.detach() for p in params]
    slow = [p.detach().clone() for p in params]
    batches = sync_batches(slow, fast)
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    for _ in range(6):  # past RAdam's un-rectified first steps
        optimizer.step()

    def check() -> None:
        first_nonfinite(fast, device).item()

    def sync_cut_once() -> None:
        for slow_batch, fast_batch in batches:
            sync_batch_(slow_batch, fast_batch, ALPHA)

    copies = SlowCopies(params)

    def checked_sync() -> None:
        copies.nonfinite(device)
        copies.sync(ALPHA)

    # 1 and 2: the check, the sync, both, the in-place add that sets the bound, a RAdam step.
    add = InPlaceAdd([p.shape for p in params], device)
    checked = "checked sync (`SlowCopies`: the callback's and the wrapper's)"
    passes = {
        "check (`first_nonfinite`)": check,
        "sync (`lookahead_sync_`)": lambda: lookahead_sync_(slow, fast, ALPHA),
        "sync cut once (`sync_batches` once, `sync_batch_` each time)": sync_cut_once,
        checked: checked_sync,
    }
    # Every pass, and the add that sets the bounds, runs right after an (untimed) optimizer step,
    # as the callback's sync does; the RAdam step in rounds of its own.
    t = interleaved({"add": add, **passes}, args.reps, Timer(device, after=optimizer.step))
    t.update(interleaved({"radam": optimizer.step}, args.reps, Timer(device)))
    transfers = dict(zip(passes, (1, 4, 4, 5), strict=True))
    bounds = {
        name: memory_bound(t["add"], add.nbytes, transfers[name], add.nbytes) for name in passes
    }

    # 3: training steps interleaved with checked syncs.
    x = torch.randn(args.batch_size, 3, 32, 32, device=device)
    y = torch.randint(0, 1000, (args.batch_size,), device=device)

    def train_step() -> None:
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    model.train()
    steps = interleaved({"train": train_step, "sync": checked_sync}, args.train_reps, Timer(device))

    # 4: the wrapper's steps against the inner optimizer's (the same parameters and gradients).
    inner = RAdam(params, lr=1e-3)
    wrapper = Lookahead(RAdam(params, lr=1e-3), k=args.k, alpha=ALPHA)
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    for _ in range(6):
        inner.step()
        wrapper.step()

    def k_steps(optimizer: torch.optim.Optimizer) -> None:
        for _ in range(args.k):
            optimizer.step()

    def past_the_sync() -> None:
        """Untimed: step the wrapper over its syncing step, so that no timed single step syncs."""
        if (wrapper.steps + 1) % args.k == 0:
            wrapper.step()

    wrapped = interleaved(
        {"inner": lambda: k_steps(inner), "wrapper": lambda: k_steps(wrapper)},
        args.reps,
        Timer(device),
    )
    single = interleaved(
        {"inner": inner.step, "wrapper": wrapper.step},
        args.reps,
        Timer(device, after=past_the_sync),
    )

    rows = [
        [
            f"{name} vs its {transfers[name]}-transfer bound",
            f"{ms(t[name].median)} vs {ms(bounds[name].median)}",
            ratio_cell(t[name].ratio(bounds[name])),
        ]
        for name in passes
    ]
    rows.append(
        [
            f"one checked sync every {args.k} steps, share of a RAdam step",
            f"{ms(t[checked].median)} / ({args.k} x {ms(t['radam'].median)})",
            ratio_cell(t[checked].ratio(t["radam"], per=args.k), percent=True),
        ]
    )
    rows.append(
        [
            f"one checked sync every {args.k} steps, share of a training step (batch "
            f"{args.batch_size}, 32x32)",
            f"{ms(steps['sync'].median)} / ({args.k} x {ms(steps['train'].median)})",
            ratio_cell(steps["sync"].ratio(steps["train"], per=args.k), percent=True),
        ]
    )
    rows.append(
        [
            f"{args.k} steps of `Lookahead(RAdam)` (one syncs) vs {args.k} `RAdam` steps",
            f"{ms(wrapped['wrapper'].median)} vs {ms(wrapped['inner'].median)}",
            ratio_cell(wrapped["wrapper"].ratio(wrapped["inner"])),
        ]
    )
    rows.append(
        [
            "one `Lookahead(RAdam)` step that does not sync vs one `RAdam` step",
            f"{ms(single['wrapper'].median)} vs {ms(single['inner'].median)}",
            ratio_cell(single["wrapper"].ratio(single["inner"])),
        ]
    )
    numel = sum(p.numel() for p in params)
    bytes_per_s = bandwidth(t["add"], add.nbytes)
    title = (
        f"ResNet-18: {len(params)} parameters, {numel / 1e6:.2f} M float32 elements; bounds at "
        f"the in-place-add bandwidth ({bytes_per_s / 1e9:.1f} GB/s); medians (minima) of "
        f"{args.reps} interleaved rounds ({args.train_reps} for the training step):"
    )
    vs_bound = t[checked].ratio(bounds[checked]).median
    met = verdict("checked sync / its memory bound", vs_bound, TARGET_VS_BOUND)
    run.finish([title, markdown_table(["figure", "ms", "ratio"], rows), f"- {met}"])


if __name__ == "__main__":
    main()
