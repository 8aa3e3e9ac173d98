"""Cost of one Gradient Centralization pass on ResNet-18, as a share of a training step.

The figure that matters is the share: the time of
:func:`~lightning_ranger.callbacks.gradient_centralization.centralize_gradients` on ResNet-18's
gradients (its conv and fc weights, what the callback centralizes by default) against one training
step of the same model measured in the same run (forward, backward and a ``RAdam`` step on a batch
of ``--batch`` 3x32x32 images, CIFAR-10's size). For scale, the run also reports each variant
against the memory bound of one pass (2 float32 transfers per element at the bandwidth of an
in-place ``a += b`` over tensors of the same shapes). Implementations timed:

- ``blocked``: ``centralize_gradients`` as the callback calls it: each gradient as a
  ``(channels, elements)`` matrix, in blocks of whole rows of about ``CPU_BLOCK_NUMEL`` elements on
  the CPU, a row sum and one ``sub_`` per block, so that the subtraction finds the block in cache.
  ``blocked/2`` and ``blocked*2``: half and twice the block (on other devices all three are
  ``whole``).
- ``whole``: the same path, one block per tensor (``cpu_block_numel=None``).
- ``foreach``: every row mean, then one multi-tensor ``torch._foreach_sub_``.
- ``per-tensor``: the textbook loop, ``g.sub_(g.mean(dim=(1, ..., ndim - 1), keepdim=True))``.

The variants are interleaved (each repetition times each once, so drifts in clock speed or load hit
all alike) and medians (minima) are reported.

Run: ``python benchmarks/gradient_centralization.py`` (about 30 s on 2 CPU cores; ``--help``).
"""

from __future__ import annotations

import argparse

import torch
import torchvision
from _timing import add_bound, fmt_ms, interleaved, ratio, timer
from torch import nn

from lightning_ranger import RAdam
from lightning_ranger.callbacks.gradient_centralization import (
    CPU_BLOCK_NUMEL,
    centralize_gradients,
)


def per_tensor(grads: list[torch.Tensor]) -> None:
    for g in grads:
        g.sub_(g.mean(dim=tuple(range(1, g.ndim)), keepdim=True))


def foreach(grads: list[torch.Tensor]) -> None:
    rows = [g.view(g.shape[0], -1) for g in grads]
    torch._foreach_sub_(rows, [r.mean(dim=1, keepdim=True) for r in rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=15, help="timed repetitions per variant")
    parser.add_argument("--batch", type=int, default=32, help="images per training step")
    default_device = "cuda" if torch.cuda.is_available() else "cpu"
    parser.add_argument("--device", default=default_device)
    args = parser.parse_args()
    device = torch.device(args.device)
    time_it = timer(device)

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).to(device)
    optimizer = RAdam(model.parameters(), lr=1e-3)
    x = torch.randn(args.batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (args.batch,), device=device)

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=False)
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()

    train_step()  # the gradients exist from here on
    grads = [p.grad for p in model.parameters() if p.grad is not None and p.ndim >= 2]
    numel = sum(g.numel() for g in grads)
    total = sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        a = [torch.randn_like(g) for g in grads]
        b = [torch.randn_like(g) for g in grads]
    variants = {
        "step": train_step,  # interleaved with the passes, so that load hits all alike
        "add": lambda: torch._foreach_add_(a, b),
        "blocked": lambda: centralize_gradients(grads),
        "blocked/2": lambda: centralize_gradients(grads, CPU_BLOCK_NUMEL // 2),
        "blocked*2": lambda: centralize_gradients(grads, CPU_BLOCK_NUMEL * 2),
        "whole": lambda: centralize_gradients(grads, None),
        "foreach": lambda: foreach(grads),
        "per-tensor": lambda: per_tensor(grads),
    }
    t = interleaved(variants, args.reps, time_it)
    bound = add_bound(t["add"], transfers=2)

    print(
        f"ResNet-18 (10 classes): {len(grads)} weights with ndim >= 2, {numel / 1e6:.2f} M of its "
        f"{total / 1e6:.2f} M elements, float32"
    )
    print(
        f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"medians (minima) of {args.reps} interleaved runs"
    )
    print(
        f"training step (batch {args.batch} x 3x32x32, forward + backward + RAdam): "
        f"{fmt_ms(t['step'])}"
    )
    print(f"memory bound of one pass over the gradients: {fmt_ms(bound)}")
    print("shares and ratios: of medians (of minima)")
    for name in ("blocked", "blocked/2", "blocked*2", "whole", "foreach", "per-tensor"):
        share = ratio(t[name], t["step"])
        used = "  <- the callback" if name == "blocked" else ""
        print(
            f"{name:>10}: {fmt_ms(t[name])} = {100 * share[0]:.2f}% ({100 * share[1]:.2f}%) of a "
            f"training step, "
            f"{ratio(t[name], bound)[0]:.2f}x the bound{used}"
        )


if __name__ == "__main__":
    main()
