"""FSDP1's flat shards of named parameters: where each rank's slice of a parameter lies, and how to
gather the slices into full tensors.

Under ``FullyShardedDataParallel`` (FSDP1) with ``use_orig_params=True`` and its parameters sharded
over all ranks (``FULL_SHARD``), each original parameter is, outside forward and backward, a 1-D
view of this rank's part of a flat parameter: flattened, every parameter is cut into
contiguous slices, one per rank in rank order, some of them empty. So rank ``r``'s slice starts
where the slices of ranks ``0 .. r-1`` end, and the slices of all ranks, concatenated in rank order,
are the flattened parameter. Plain ``torch.distributed``; nothing here knows Lightning.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import Tensor

from lightning_ranger._utils import group_indices

__all__ = ["FlatShardLayout"]


class FlatShardLayout:
    """The slices that each rank holds of a list of flattened parameters.

    Construction all-gathers the local sizes: a collective that every rank must join, with the
    parameters in the same order.

    Args:
        local: this rank's slices, one per parameter (any shape; their ``numel`` counts).
        device: where to communicate (``cpu`` for gloo, the rank's GPU for NCCL).

    """

    def __init__(self, local: Sequence[Tensor], device: torch.device) -> None:
        self.device = device
        world = dist.get_world_size()
        mine = torch.tensor([t.numel() for t in local], dtype=torch.int64, device=device)
        everyone = [torch.empty_like(mine) for _ in range(world)]
        dist.all_gather(everyone, mine)
        #: ``sizes[r][i]``: the number of elements of parameter ``i`` on rank ``r``.
        self.sizes: list[list[int]] = [s.tolist() for s in everyone]
        rank = dist.get_rank()
        #: Where this rank's slice of each flattened parameter starts.
        self.offsets: list[int] = [
            sum(self.sizes[r][i] for r in range(rank)) for i in range(len(local))
        ]

    def local_slice(self, index: int, full: Tensor) -> Tensor:
        """This rank's slice of ``full``, the whole parameter ``index`` (any shape), flattened."""
        return full.reshape(-1).narrow(0, self.offsets[index], self.sizes[dist.get_rank()][index])

    def gather(self, local: Sequence[Tensor]) -> list[Tensor]:
        """The full flattened parameters from every rank's slices (``local``: this rank's, in the
        order of construction), on :attr:`device`: one all-gather per dtype, a collective."""
        full: list[Tensor | None] = [None] * len(local)
        for (_, dtype, _), indices in group_indices(local).items():
            lengths = [sum(self.sizes[r][i] for i in indices) for r in range(len(self.sizes))]
            buffer = torch.zeros(max(lengths), dtype=dtype, device=self.device)
            if lengths[dist.get_rank()]:
                mine = torch.cat([local[i].reshape(-1) for i in indices])
                buffer[: mine.numel()] = mine
            received = [torch.empty_like(buffer) for _ in self.sizes]
            dist.all_gather(received, buffer)
            pieces: list[list[Tensor]] = [[] for _ in indices]
            for r, chunk in enumerate(received):
                for j, piece in enumerate(
                    chunk[: lengths[r]].split([self.sizes[r][i] for i in indices])
                ):
                    pieces[j].append(piece)
            for j, i in enumerate(indices):
                full[i] = torch.cat(pieces[j])
        return [t for t in full if t is not None]
