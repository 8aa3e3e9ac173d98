"""Small deterministic data: the regression set and token sequences of the Lightning tests, the
parameter and gradient sequences of RAdam's numerics, and gradients of many layouts."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

IN, OUT = 4, 2
VOCAB, LENGTH = 11, 6


def make_data(n: int, seed: int = 1234) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, IN, generator=g)
    y = torch.stack([x[:, 0] * x[:, 1], torch.sin(x[:, 2]) - x[:, 3]], dim=1)
    return TensorDataset(x, y + 0.1 * torch.randn(n, OUT, generator=g))


def tokens_loader(n: int, seed: int) -> DataLoader:
    """``n`` random sequences of ``LENGTH + 1`` tokens, in batches of 4 (8 for 8 or fewer)."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, VOCAB, (n, LENGTH + 1), generator=g)
    return DataLoader(TensorDataset(tokens), batch_size=4 if n > 8 else 8)


def batches_of(dataset: TensorDataset, batch_size: int) -> list[tuple[Tensor, Tensor]]:
    return [(x, y) for x, y in DataLoader(dataset, batch_size=batch_size, shuffle=False)]


#: The options that select each of RAdam's implementations.
IMPLEMENTATIONS = {
    "fused": {"fused": True},
    "foreach": {"foreach": True},
    "per-tensor": {"foreach": False, "fused": False},
}
SHAPES = [(7, 5), (13,), (), (3, 2, 4)]


def random_params(dtype=torch.float64, seed=0, shapes=SHAPES):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen, dtype=torch.float64).to(dtype) for s in shapes]


def gradient_sequence(params, steps, seed=1):
    """A fixed gradient sequence, with a scale that changes over time like a real run's."""
    gen = torch.Generator().manual_seed(seed)
    return [
        [torch.randn(p.shape, generator=gen, dtype=torch.float64) * (1 + t % 3) for p in params]
        for t in range(steps)
    ]


def gradients_of_many_layouts(dtype: torch.dtype) -> list[Tensor]:
    """Gradients of many shapes and layouts (values of order 1 plus an offset per channel)."""
    g = torch.Generator().manual_seed(0)

    def make(*shape: int) -> Tensor:
        offset = torch.randn(shape[0], *([1] * (len(shape) - 1)), generator=g, dtype=dtype)
        return torch.randn(*shape, generator=g, dtype=dtype) + 3 * offset

    return [
        make(8, 3, 3, 3),  # conv2d
        make(6, 4, 5),  # conv1d
        make(2, 3, 2, 2, 2),  # conv3d
        make(5, 7),  # linear
        make(600, 700),  # larger than a block
        make(16, 4, 3, 3).to(memory_format=torch.channels_last),
        make(7, 5).t(),  # dim 0 is not outermost in memory
        make(9, 20)[:, ::2],  # not dense
        make(1, 10),
        make(10, 1),  # each channel a single element: zeroed
        make(11),  # 1-D: the whole mean
        make(22)[::2],
        torch.empty(0, 3, dtype=dtype),
    ]
