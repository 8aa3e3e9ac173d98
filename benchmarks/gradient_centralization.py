"""Cost of one Gradient Centralization pass on ResNet-18's parameters, against its memory bound.

The pass reads each centralized gradient and writes it once: 2 float32 transfers per element of the
parameters with ``ndim >= 2`` (ResNet-18's conv and fc weights). The bound is 2 transfers at the
bandwidth of an in-place add (``a += b``: 3 transfers) over tensors of the same shapes, measured in
the same run. Implementations timed:

- ``kernel``: :func:`~lightning_ranger.callbacks.gradient_centralization.centralize_gradients` as
  the callback calls it. On the CPU, with the package's C kernel built, each row is summed and then
  subtracted from while it is in the L1 cache: one pass over memory. (Elsewhere, this is ``whole``.)
- ``eager``: the same function's PyTorch path (``cpu_kernel=False``): each gradient as a
  ``(channels, elements)`` matrix, in blocks of whole rows of about ``CPU_BLOCK_NUMEL`` elements, a
  row sum and one ``sub_`` per block, so that the subtraction finds the block in cache. ``eager/2``
  and ``eager*2``: half and twice the block (blocks are for the CPU: on other devices all three
  are ``whole``).
- ``whole``: the PyTorch path, one block per tensor (``cpu_block_numel=None``).
- ``foreach``: every row mean, then one multi-tensor ``torch._foreach_sub_``.
- ``per-tensor``: the textbook loop, ``g.sub_(g.mean(dim=(1, ..., ndim - 1), keepdim=True))``.

For scale, the run also times two passes over the same gradients, a read-only one (``g.sum()``)
and an in-place one (``g.mul_(1)``): the in-place pass is what a single fused pass can approach,
their sum what two passes over memory cost.

The variants are interleaved (each repetition times each once, so drifts in clock speed or load hit
all alike) and medians (minima) are reported. The bar (one pass within 1.3x its bound) is
reported, never asserted.

Run: ``python benchmarks/gradient_centralization.py`` (15 to 40 s on 2 CPU cores; ``--help``).
"""

from __future__ import annotations

import argparse

import torch
import torchvision
from _timing import add_bound, fmt_ms, interleaved, ratio, timer

from lightning_ranger.callbacks.gradient_centralization import (
    CPU_BLOCK_NUMEL,
    CPU_KERNEL_BUILT,
    centralize_gradients,
)

BAR = 1.3


def per_tensor(grads: list[torch.Tensor]) -> None:
    for g in grads:
        g.sub_(g.mean(dim=tuple(range(1, g.ndim)), keepdim=True))


def foreach(grads: list[torch.Tensor]) -> None:
    rows = [g.view(g.shape[0], -1) for g in grads]
    torch._foreach_sub_(rows, [r.mean(dim=1, keepdim=True) for r in rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=30, help="timed repetitions per variant")
    default_device = "cuda" if torch.cuda.is_available() else "cpu"
    parser.add_argument("--device", default=default_device)
    args = parser.parse_args()
    device = torch.device(args.device)
    time_it = timer(device)

    torch.manual_seed(0)
    model = torchvision.models.resnet18()
    shapes = [p.shape for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    numel = sum(s.numel() for s in shapes)
    total = sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        grads = [torch.randn(s, device=device) for s in shapes]
        a = [torch.randn(s, device=device) for s in shapes]
        b = [torch.randn(s, device=device) for s in shapes]

        t = interleaved(
            {
                "add": lambda: torch._foreach_add_(a, b),
                "kernel": lambda: centralize_gradients(grads),
                "eager": lambda: centralize_gradients(grads, cpu_kernel=False),
                "eager/2": lambda: centralize_gradients(grads, CPU_BLOCK_NUMEL // 2, False),
                "eager*2": lambda: centralize_gradients(grads, CPU_BLOCK_NUMEL * 2, False),
                "whole": lambda: centralize_gradients(grads, None, False),
                "foreach": lambda: foreach(grads),
                "per-tensor": lambda: per_tensor(grads),
                "read": lambda: [g.sum() for g in grads],
                "in-place": lambda: torch._foreach_mul_(grads, 1.0),
            },
            args.reps,
            time_it,
        )
    bound = add_bound(t["add"], transfers=2)
    bandwidth = 3 * 4 * numel / t["add"][0]

    print(
        f"ResNet-18: {len(shapes)} weights with ndim >= 2, {numel / 1e6:.2f} M of its "
        f"{total / 1e6:.2f} M elements, float32"
    )
    kernel = "built" if CPU_KERNEL_BUILT else "NOT built (the eager path runs instead)"
    print(
        f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"CPU kernel {kernel}; medians (minima) of {args.reps} interleaved runs"
    )
    print(
        f"memory bound: 2 x {4 * numel / 1e6:.1f} MB at the in-place-add bandwidth "
        f"({bandwidth / 1e9:.2f} GB/s) = {fmt_ms(bound)}"
    )
    floor = (t["read"][0] + t["in-place"][0], t["read"][1] + t["in-place"][1])
    print(
        f"one in-place pass {fmt_ms(t['in-place'])} = {ratio(t['in-place'], bound)[0]:.2f}x the "
        f"bound; a read pass {fmt_ms(t['read'])} + the in-place pass = "
        f"{ratio(floor, bound)[0]:.2f}x ({ratio(floor, bound)[1]:.2f}x)"
    )
    for name in ("kernel", "eager", "eager/2", "eager*2", "whole", "foreach", "per-tensor"):
        r = ratio(t[name], bound)
        verdict = "met" if r[0] <= BAR else "NOT met"
        used = "  <- the callback" if name == "kernel" else ""
        print(
            f"{name:>10}: {fmt_ms(t[name])} = {r[0]:.2f}x ({r[1]:.2f}x) the bound; "
            f"bar <= {BAR}x {verdict}{used}"
        )


if __name__ == "__main__":
    main()
