"""Cost of one Gradient Centralization pass on ResNet-18, as a share of a training step.

The figure that matters is the share: the time of
:func:`~lightning_ranger.optim.centralize_gradients` (what the callback calls) on ResNet-18's
gradients (its conv and fc weights, what the callback centralizes by default) against one training
step of the same model measured in the same run (forward, backward and a ``RAdam`` step on a batch
of ``--batch`` 3x32x32 images, CIFAR-10's size). For scale, the run also reports each variant
against the memory bound of one pass (2 float32 transfers per element at the bandwidth of an
in-place ``a += b`` over tensors of the same shapes). Implementations timed:

- the callback: ``centralize_gradients`` as the callback calls it: each gradient as a
  ``(channels, elements)`` matrix, in blocks of whole rows of about ``CPU_BLOCK_NUMEL`` elements on
  the CPU, a row sum and one ``sub_`` per block, so that the subtraction finds the block in cache;
  the same with half and twice the block (on other devices all three take whole tensors);
- whole tensors: the same path, one block per tensor (``cpu_block_numel=None``);
- foreach: every row mean, then one multi-tensor ``torch._foreach_sub_``;
- the textbook loop, ``g.sub_(g.mean(dim=(1, ..., ndim - 1), keepdim=True))``.

The variants and the in-place add are timed interleaved, each right after an (untimed) training
step, so that each finds the caches as the callback does; the training step is timed in rounds of
its own. Shares and ratios are of medians (of minima in parentheses).

Run: ``python benchmarks/gradient_centralization.py`` (about 30 s on 2 CPU cores; ``--help``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torchvision
from _report import Run, argument_parser, markdown_table, ms, ratio_cell
from _timing import InPlaceAdd, Timer, interleaved, memory_bound
from torch import nn

from lightning_ranger.optim import RAdam, centralize_gradients
from lightning_ranger.optim.centralization import CPU_BLOCK_NUMEL


def per_tensor(grads: list[torch.Tensor]) -> None:
    for g in grads:
        g.sub_(g.mean(dim=tuple(range(1, g.ndim)), keepdim=True))


def foreach(grads: list[torch.Tensor]) -> None:
    rows = [g.view(g.shape[0], -1) for g in grads]
    torch._foreach_sub_(rows, [r.mean(dim=1, keepdim=True) for r in rows])


def main(argv: Sequence[str] | None = None) -> None:
    parser = argument_parser(__doc__)
    parser.add_argument("--reps", type=int, default=15, help="timed rounds (default 15)")
    parser.add_argument("--batch", type=int, default=32, help="images per training step")
    args = parser.parse_args(argv)
    run = Run(args, __file__, argv)

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).to(run.device)
    optimizer = RAdam(model.parameters(), lr=1e-3)
    x = torch.randn(args.batch, 3, 32, 32, device=run.device)
    y = torch.randint(0, 10, (args.batch,), device=run.device)

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=False)
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()

    train_step()  # the gradients exist from here on
    grads = [p.grad for p in model.parameters() if p.grad is not None and p.ndim >= 2]
    add = InPlaceAdd([g.shape for g in grads], run.device)
    passes = {
        "the callback: row sums and `sub_` in blocks of `CPU_BLOCK_NUMEL`": lambda: (
            centralize_gradients(grads)
        ),
        "the same, half the block": lambda: centralize_gradients(grads, CPU_BLOCK_NUMEL // 2),
        "the same, twice the block": lambda: centralize_gradients(grads, CPU_BLOCK_NUMEL * 2),
        "whole tensors (`cpu_block_numel=None`)": lambda: centralize_gradients(grads, None),
        "foreach: all row means, then one `torch._foreach_sub_`": lambda: foreach(grads),
        "the textbook loop `g.sub_(g.mean(dim=(1, ...), keepdim=True))`": lambda: per_tensor(grads),
    }
    # Every pass, and the add that sets the bound, runs right after a training step, as the
    # callback's does (after the backward that wrote the gradients); the step in rounds of its own.
    t = interleaved({"add": add, **passes}, args.reps, Timer(run.device, after=train_step))
    t.update(interleaved({"step": train_step}, args.reps, Timer(run.device)))
    # One pass reads and writes every gradient once.
    bound = memory_bound(t["add"], add.nbytes, transfers=2, nbytes=add.nbytes)

    rows = []
    for name in passes:
        share = ratio_cell(t[name].ratio(t["step"]), percent=True)
        rows.append([name, ms(t[name].median), share, f"{t[name].ratio(bound).median:.2f}"])
    numel = sum(g.numel() for g in grads)
    total = sum(p.numel() for p in model.parameters())
    title = (
        f"ResNet-18 (10 classes): the gradients of its {len(grads)} weights with ndim >= 2, "
        f"{numel / 1e6:.2f} M of its {total / 1e6:.2f} M float32 elements; training step "
        f"(batch {args.batch} x 3x32x32, forward, backward, RAdam) {ms(t['step'].median)} ms, "
        f"one-pass memory bound {ms(bound.median)} ms; medians (minima) of {args.reps} "
        "interleaved rounds:"
    )
    header = ["pass", "median ms", "share of a training step", "x one-pass bound"]
    run.finish([title, markdown_table(header, rows)])


if __name__ == "__main__":
    main()
