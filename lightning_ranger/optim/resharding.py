r"""Make the next forward of a sharded module read its shards: what has to happen before anything
writes new values into the parameters of an FSDP module outside a training step.

FSDP keeps unsharded copies of some parameters after a forward that no backward follows (an
evaluation), to reuse them in the next forward without an all-gather:

- FSDP2 (``fully_shard``): the root module, and any module sharded with
  ``reshard_after_forward=False``, keeps its unsharded parameters registered on the module.
- FSDP1 (``FullyShardedDataParallel``) with ``FULL_SHARD``: the root unit keeps its unsharded flat
  parameter, which its next forward reuses. ``SHARD_GRAD_OP`` keeps every unit's.

A value written into the sharded parameters (the ``DTensor``\ s of FSDP2, the local views of
FSDP1's ``use_orig_params=True``) does not reach those copies, so the next forward would compute
with the old values. :func:`reshard` frees the copies; the next forward gathers the shards anew.
Nothing here imports Lightning.
"""

from __future__ import annotations

from torch import nn
from torch.distributed.fsdp import FSDPModule, FullyShardedDataParallel

__all__ = ["reshard"]


def reshard(module: nn.Module) -> None:
    """Free the unsharded parameters that FSDP2 and FSDP1 units in ``module`` hold from an earlier
    forward, so that the next forward all-gathers the current shards. A no-op for modules that
    FSDP does not shard, and for units that hold no unsharded parameters.

    Call it with the outermost module, the one whose ``forward`` runs (under FSDP1, the
    ``FullyShardedDataParallel`` wrapper of the root), before writing into the parameters between
    forwards; not inside a forward or backward.

    Args:
        module: the module whose FSDP units to reshard, itself included.

    Example::

        >>> import torch
        >>> net = torch.nn.Linear(2, 2)
        >>> reshard(net)  # not sharded: nothing to do

    """
    for unit in module.modules():
        if isinstance(unit, FSDPModule):
            unit.reshard()
        elif isinstance(unit, FullyShardedDataParallel):
            # FSDP1 has no public reshard; its flat-parameter handle does this after a backward.
            # Before the first forward (`_is_root` unset) nothing is unsharded.
            handle = unit._handle
            if (
                handle is not None
                and unit._is_root is not None
                and handle.uses_sharded_strategy
                and not handle.needs_unshard()
            ):
                handle.reshard(free_unsharded_flat_param=True)
