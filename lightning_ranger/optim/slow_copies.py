r"""Lookahead's slow weights beside a list of parameters: the sync, the non-finite check, the
restore after a fault and the swap for evaluation, in plain PyTorch.

:class:`SlowCopies` is the one implementation behind the :class:`~lightning_ranger.optim.Lookahead`
optimizer wrapper and the :class:`~lightning_ranger.callbacks.lookahead.Lookahead` callback:

- *Dtype-aware*: the slow copy of a float16 or bfloat16 parameter is float32
  (:func:`~lightning_ranger.optim.lookahead.slow_dtype`); float32 and float64 keep their dtype.
- *Shard-aware*: the slow copy of a ``DTensor`` parameter (FSDP2, tensor parallelism) is a
  ``DTensor`` of the same placements, so each rank holds one shard; an FSDP1 parameter (a view of
  this rank's slice of the flat parameter) gets a copy of that slice. The arithmetic runs on the
  local shards, which is exact for these elementwise operations.
- *Written where the module computes*: FSDP keeps unsharded copies of some parameters after a
  forward without backward (:mod:`~lightning_ranger.optim.resharding`), which values written into
  the shards would not reach. Given the module whose forward runs, every write reshards it first.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import Tensor, nn

from lightning_ranger.optim.lookahead import (
    SyncBatch,
    first_nonfinite,
    local_tensor,
    slow_dtype,
    sync_batch_,
    sync_batches,
)
from lightning_ranger.optim.resharding import reshard

__all__ = ["SlowCopies"]


def _locals(tensors: Sequence[Tensor]) -> list[Tensor]:
    """The local shards, detached: views cut from parameters that require grad would carry
    autograd metadata into every in-place operation on them (3 ms more per ResNet-18 sync)."""
    return [local_tensor(t).detach() for t in tensors]


class SlowCopies:
    """Slow copies of ``params``, taken from their current values.

    The parameters show either their fast weights (their own, during training) or the slow ones
    (for evaluation, or after training); while they show the slow ones, the fast weights wait in a
    stash (one more copy, in the parameters' dtype).

    Args:
        params: the parameters (the fast weights) to keep slow copies of.
        root: the module whose forward computes with ``params``, if FSDP shards it (under FSDP1,
            the ``FullyShardedDataParallel`` wrapper of the root): its units are resharded before
            each write into the parameters. ``None``: nothing to reshard.

    Example::

        >>> layer = torch.nn.Linear(2, 1)
        >>> copies = SlowCopies(list(layer.parameters()))
        >>> with torch.no_grad():
        ...     _ = layer.bias.add_(1.0)
        >>> copies.sync(alpha=0.5)  # halfway back towards the copy taken above
        >>> torch.equal(layer.bias, copies.slow[1])
        True

    """

    def __init__(self, params: Sequence[Tensor], root: nn.Module | None = None) -> None:
        self.root = root
        self.params: list[Tensor] = []
        self.slow: list[Tensor] = []
        self._stash: list[Tensor] | None = None
        # The sync's batches of local tensors, and the storage addresses they were cut from: they
        # are cut again when a storage changes (the module moved, FSDP2 re-laid its shards). The
        # batches keep the old storages alive, so an address cannot be reused meanwhile.
        self._batches: list[SyncBatch] = []
        self._batches_storage: list[int] = []
        self.extend(params)

    @torch.no_grad()
    def extend(self, params: Sequence[Tensor]) -> None:
        """Keep slow copies of ``params`` too, from their current values."""
        if self.shows_slow:
            raise RuntimeError("Cannot take up parameters while they hold the slow weights")
        self.params += list(params)
        self.slow += [p.detach().to(dtype=slow_dtype(p.dtype), copy=True) for p in params]

    @property
    def shows_slow(self) -> bool:
        """Whether the parameters currently hold the slow weights (the fast ones are stashed)."""
        return self._stash is not None

    @property
    def fast(self) -> list[Tensor]:
        """The fast weights, whichever the parameters show (the live tensors, not copies)."""
        return self._stash if self._stash is not None else [p.detach() for p in self.params]

    def sync(self, alpha: float) -> None:
        """Lookahead's sync (:func:`~lightning_ranger.optim.lookahead.lookahead_sync_`), on the
        batches cut for the parameters' current storage."""
        if self.shows_slow:
            raise RuntimeError("Cannot sync the slow weights while the parameters hold them")
        self._reshard()
        for slow_batch, fast_batch in self._sync_batches():
            sync_batch_(slow_batch, fast_batch, alpha)

    def nonfinite(self, device: torch.device | str = "cpu") -> int | None:
        """The index in :attr:`params` of the first parameter whose fast weights hold a NaN or an
        infinity on any rank, ``None`` if none does: every rank gets the same answer, so all of
        them sync or all of them restore.

        One read of the local fast weights
        (:func:`~lightning_ranger.optim.lookahead.first_nonfinite`) and, when ``torch.distributed``
        is initialized with several ranks, one all-reduce of an int64 on ``device``, which every
        rank must join (the CPU for gloo, the rank's GPU for NCCL).
        """
        first = first_nonfinite(_locals(self.params), device)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(first, op=dist.ReduceOp.MIN)
        index = int(first.item())
        return index if index < len(self.params) else None

    @torch.no_grad()
    def restore(self) -> None:
        """Reset the fast weights to the slow ones (after a fault), leaving the slow ones as they
        are."""
        if self.shows_slow:
            raise RuntimeError("Cannot restore the fast weights while the parameters hold the slow")
        self._reshard()
        torch._foreach_copy_(_locals(self.params), _locals(self.slow))

    @torch.no_grad()
    def show_slow(self) -> bool:
        """Put the slow weights in the parameters, stash the fast ones; ``False`` if shown
        already."""
        if self.shows_slow:
            return False
        stash = [p.detach().clone() for p in self.params]
        self.restore()
        self._stash = stash
        return True

    @torch.no_grad()
    def show_fast(self) -> None:
        """Put the stashed fast weights back in the parameters (no-op if they hold them)."""
        if self._stash is None:
            return
        self._reshard()
        torch._foreach_copy_(_locals(self.params), _locals(self._stash))
        self._stash = None

    @torch.no_grad()
    def follow_parameters(self) -> None:
        """Move the slow weights (and the stash) to the parameters' devices, as after a module was
        moved, and forget the sync's batches, which hold on to the parameters' old storage."""
        self.slow = [s.to(p.device) for s, p in zip(self.slow, self.params, strict=True)]
        if self._stash is not None:
            self._stash = [t.to(p.device) for t, p in zip(self._stash, self.params, strict=True)]
        self._batches, self._batches_storage = [], []

    def _reshard(self) -> None:
        if self.root is not None:
            reshard(self.root)

    def _sync_batches(self) -> list[SyncBatch]:
        fast, slow = _locals(self.params), _locals(self.slow)
        storage = [t.data_ptr() for t in fast + slow]
        if storage != self._batches_storage:
            self._batches, self._batches_storage = sync_batches(slow, fast), storage
        return self._batches
