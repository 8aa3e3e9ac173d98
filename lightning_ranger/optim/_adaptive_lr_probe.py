"""The probe: a fixed random set of coordinates of a param group whose gradients are kept, so that
the variance of the adaptive lr over the draw of the minibatches can be bootstrapped from them.

The coordinates are chosen among the *global* parameters, so that every rank and every strategy
probes the same ones; each rank then keeps the ones its shard holds. Plain PyTorch.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
from torch import Tensor
from torch.distributed.tensor import DTensor
from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

__all__ = ["Probe", "ProbeHistory", "dtensor_weight", "locate", "probe_indices"]


def probe_indices(numels: Sequence[int], size: int, seed: int = 0) -> list[Tensor]:
    """A uniform random probe of ``min(size, sum(numels))`` distinct coordinates of a list of
    parameters, as sorted flat indices into each (global, row-major flattened) parameter.

    The choice depends only on ``numels``, ``size`` and ``seed``: every rank and every strategy
    picks the same coordinates of the global parameters.

    Args:
        numels: the global number of elements of each parameter, in the param group's order.
        size: how many coordinates to pick.
        seed: the seed of the choice.

    Example::

        >>> [t.tolist() for t in probe_indices([3, 2], 5)]
        [[0, 1, 2], [0, 1]]

    """
    total = sum(numels)
    generator = torch.Generator().manual_seed(seed)
    if size >= total:
        chosen = torch.arange(total)
    else:  # rejection of repeats: O(size) memory, whatever the size of the parameters
        chosen = torch.empty(0, dtype=torch.int64)
        while chosen.numel() < size:
            draws = torch.randint(total, (2 * size,), generator=generator)
            merged = torch.cat([chosen, draws])
            unique, first = _first_occurrences(merged)
            chosen = merged[first[: min(size, unique)]]
        chosen = chosen.sort().values
    bounds = torch.tensor([0, *numels]).cumsum(0).tolist()
    return [chosen[(chosen >= lo) & (chosen < hi)] - lo for lo, hi in itertools.pairwise(bounds)]


def _first_occurrences(values: Tensor) -> tuple[int, Tensor]:
    """Number of distinct ``values`` and the positions of their first occurrences, in order."""
    unique, inverse = torch.unique(values, return_inverse=True)
    first = torch.full((unique.numel(),), values.numel(), dtype=torch.int64)
    first.scatter_reduce_(0, inverse, torch.arange(values.numel()), reduce="amin")
    return unique.numel(), first.sort().values


def locate(
    indices: Tensor, shape: Sequence[int], local_shape: Sequence[int], offset: Sequence[int]
) -> tuple[Tensor, Tensor]:
    """Which of the flat ``indices`` into a parameter of ``shape`` lie in the block of
    ``local_shape`` at ``offset`` that one rank holds (a DTensor shard; an FSDP1 slice, with 1-D
    shapes), and their flat indices into that block.

    Returns:
        ``(held, local)``: the positions in ``indices`` of the held ones, and their local indices.

    Example::

        >>> held, local = locate(torch.tensor([1, 5, 7]), (4, 2), (2, 2), (2, 0))  # rows 2-3
        >>> held.tolist(), local.tolist()
        ([1, 2], [1, 3])

    """
    if not shape:  # a 0-dimensional parameter: one element
        shape, local_shape, offset = (1,), (1,), (0,)
    coordinates = torch.stack(torch.unravel_index(indices, tuple(shape)), dim=-1)
    start = torch.tensor(list(offset), dtype=torch.int64)
    inside = (coordinates >= start) & (coordinates < start + torch.tensor(list(local_shape)))
    held = inside.all(dim=-1).nonzero().reshape(-1)
    strides = torch.tensor([math.prod(local_shape[d + 1 :]) for d in range(len(shape))])
    local = ((coordinates[held] - start) * strides).sum(dim=-1)
    return held, local


def dtensor_weight(tensor: DTensor, world_size: int) -> float:
    """``shards / world_size``: how much one rank's values of ``tensor`` count in a sum over the
    ``world_size`` ranks, so that a shard replicated over part of the mesh is counted once."""
    mesh, placements = tensor.device_mesh, tensor.placements
    shards = math.prod(mesh.size(d) for d, p in enumerate(placements) if p.is_shard())
    return shards / world_size


class ProbeHistory:
    """The gradients of the last ``capacity`` optimizer steps at the probe coordinates one rank
    holds, and which of them have been nonzero and finite at every step so far.

    Recording a step is one copy: the recorded gradients are checked in one go when
    :attr:`alive` is read or before an unchecked row is overwritten.

    Args:
        size: how many probe coordinates this rank holds.
        capacity: how many steps to keep (the oldest is overwritten).
        device: where to keep them.

    """

    def __init__(self, size: int, capacity: int, device: torch.device) -> None:
        self.values = torch.zeros(capacity, size, dtype=torch.float32, device=device)
        self._alive = torch.ones(size, dtype=torch.bool, device=device)
        self.recorded = 0
        self._checked = 0  # the steps recorded before this one are folded into `_alive`

    @property
    def pool(self) -> Tensor:
        """``[min(recorded, capacity), size]``: the kept gradients (in no particular order)."""
        return self.values[: min(self.recorded, self.values.shape[0])]

    @property
    def alive(self) -> Tensor:
        """``[size]``: whether each coordinate's gradient has been nonzero and finite at every
        recorded step."""
        self._check_pending()
        return self._alive

    def _check_pending(self) -> None:
        """Fold the steps recorded since the last check into :attr:`alive`."""
        if self.recorded > self._checked:
            rows = torch.arange(self._checked, self.recorded, device=self.values.device)
            recent = self.values[rows % self.values.shape[0]]
            self._alive &= (torch.isfinite(recent) & (recent != 0)).all(dim=0)
            self._checked = self.recorded

    def next_row(self) -> Tensor:
        """The row that the next step's gradients go to (checked first if it holds an unchecked
        step): fill it, then :meth:`record` the step."""
        capacity = self.values.shape[0]
        if self.recorded - self._checked >= capacity:
            self._check_pending()
        return self.values[self.recorded % capacity]

    def record(self, gradients: Tensor | None = None) -> None:
        """Keep one step's gradients: ``gradients`` (``[size]``, any float dtype), as they are,
        or, with ``None``, those written into :meth:`next_row`."""
        if gradients is not None:
            self.next_row().copy_(gradients)
        self.recorded += 1

    def restore(self, values: Tensor, alive: Tensor, recorded: int) -> None:
        """Take the kept gradients, liveness and count of a saved history."""
        self.values.copy_(values)
        self._alive.copy_(alive)
        self.recorded = self._checked = recorded

    def nbytes(self) -> int:
        return self.values.nbytes + self._alive.nbytes


class Probe:
    """The probe of one param group as one rank holds it, and its gradient history.

    The ``size`` coordinates are drawn from the group's global parameters
    (:func:`probe_indices`); this rank reads those it holds: all of them for whole parameters
    (one process, DDP), those of its shards for DTensors (FSDP2), those of its slices for FSDP1's
    flat shards (given by ``flat_slices``).

    Args:
        params: the group's parameters, as this rank holds them.
        size: how many coordinates to probe (fewer if the group has fewer).
        capacity: how many optimizer steps of gradients to keep.
        world_size: the number of ranks, for the weight of DTensor shards.
        flat_slices: for FSDP1 flat shards, ``(global numel, offset of this rank's slice)`` of
            each parameter; ``None`` for whole or DTensor parameters.

    Attributes:
        size: the number of probe coordinates over all ranks.
        reads: ``(param, local flat indices)`` of every parameter where this rank holds some.
        positions: where this rank's coordinates are among the ``size`` of the probe.
        weight: how much this rank's values count in the sum over ranks (1 for a whole tensor or
            an FSDP1 slice, ``shards / world_size`` for a DTensor).
        history: the kept gradients of this rank's coordinates.
        last_step: the optimizer step of the last recorded gradients.

    """

    def __init__(
        self,
        params: Sequence[Tensor],
        size: int,
        capacity: int,
        world_size: int,
        flat_slices: Sequence[tuple[int, int]] | None = None,
    ) -> None:
        self.weight = 1.0
        blocks: list[tuple[tuple[int, ...], ...]] = []  # (global shape, local shape, offset)
        for i, param in enumerate(params):
            if flat_slices is not None:
                numel, offset = flat_slices[i]
                blocks.append(((numel,), (param.numel(),), (offset,)))
            elif isinstance(param, DTensor):
                mesh, placements = param.device_mesh, param.placements
                shape, offset_nd = compute_local_shape_and_global_offset(
                    param.shape, mesh, placements
                )
                self.weight = dtensor_weight(param, world_size)
                blocks.append((tuple(param.shape), tuple(shape), tuple(offset_nd)))
            else:
                blocks.append((tuple(param.shape), tuple(param.shape), (0,) * param.dim()))
        indices = probe_indices([math.prod(block[0]) for block in blocks], size)
        self.reads: list[tuple[Tensor, Tensor]] = []
        positions, start = [], 0
        for param, block, chosen in zip(params, blocks, indices, strict=True):
            held, local = locate(chosen, *block)
            if held.numel():
                self.reads.append((param, local.to(param.device)))
                positions.append(held + start)
            start += chosen.numel()
        device = params[0].device if params else torch.device("cpu")
        held_positions = torch.cat(positions) if positions else torch.zeros(0, dtype=torch.int64)
        self.size = start
        self.positions = held_positions.to(device)
        self.history = ProbeHistory(held_positions.numel(), capacity, device)
        self.last_step = 0.0

    def gradients(self) -> Tensor:
        """This rank's probe coordinates of the current ``.grad`` (NaN where there is none)."""
        out = torch.empty(self.positions.numel(), dtype=torch.float32, device=self.positions.device)
        self._gather(out)
        return out

    def _gather(self, out: Tensor) -> None:
        """Write this rank's probe coordinates of the current ``.grad`` into ``out`` (float32)."""
        start = 0
        for param, index in self.reads:
            part = out[start : start + index.numel()]
            start += index.numel()
            grad = param.grad
            if grad is None:
                part.fill_(math.nan)
                continue
            local = grad.to_local() if isinstance(grad, DTensor) else grad
            if local.dtype == out.dtype:  # flat, row-major indices, whatever the strides
                torch.take(local, index, out=part)
            else:
                part.copy_(torch.take(local, index))

    def record(self, step: float) -> None:
        """Keep the current gradients if ``step`` is a new optimizer step."""
        if step > self.last_step:
            self._gather(self.history.next_row())
            self.history.record()
            self.last_step = step
