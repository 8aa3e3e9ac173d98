"""Name-keyed slow copies of a module's trainable parameters, for the Lightning callback.

:class:`SlowWeights` is :class:`~lightning_ranger.optim.slow_copies.SlowCopies` (the slow weights
``phi`` beside the fast weights ``theta``, their sync, check, restore and swap, dtype- and
shard-aware) over a module's parameters, addressed by name:

- *Keyed by name*: every tensor that enters or leaves is addressed by its parameter name in
  ``module.named_parameters()``, which is stable across processes, restarts and parameter order.
  Only parameters with ``requires_grad`` are tracked; buffers (BatchNorm statistics) are not.
- *FSDP1 flat shards*: the slow copy of an FSDP1 parameter (a 1-D view of this rank's slice of the
  flat parameter) is a copy of that slice, and
  :class:`~lightning_ranger.optim._flat_shards.FlatShardLayout` says where it lies in the full
  parameter, to gather full tensors for checkpoints and to take a rank's slice of one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor
from torch.distributed.tensor import DTensor, distribute_tensor

from lightning_ranger.optim._flat_shards import FlatShardLayout
from lightning_ranger.optim.lookahead import local_tensor
from lightning_ranger.optim.resharding import reshard
from lightning_ranger.optim.slow_copies import SlowCopies

__all__ = [
    "SlowWeights",
    "mismatch_message",
    "named_parameters",
    "trainable_parameters",
]


#: The name of the submodule that FSDP1 wraps, which its state dicts leave out of the names.
_FSDP1_WRAPPED = "_fsdp_wrapped_module."


def named_parameters(module: torch.nn.Module) -> dict[str, Tensor]:
    """``module``'s parameters by name, as in its state dict (without FSDP1's wrapper modules); a
    parameter shared by several modules appears once, under its first name. FSDP2 modules are
    resharded first: after a forward without backward they register their unsharded parameters,
    which the next reshard frees, in place of the sharded ones that persist."""
    reshard(module)
    return {name.replace(_FSDP1_WRAPPED, ""): p for name, p in module.named_parameters()}


def trainable_parameters(module: torch.nn.Module) -> dict[str, Tensor]:
    """The parameters with ``requires_grad``, by name (as :func:`named_parameters`)."""
    return {name: p for name, p in named_parameters(module).items() if p.requires_grad}


def _aliases(module: torch.nn.Module, names: Sequence[str]) -> dict[str, list[str]]:
    """The other state-dict names of each parameter in ``names`` that several modules share (tied
    weights), for those that have any."""
    by_id: dict[int, list[str]] = {}
    for name, p in module.named_parameters(remove_duplicate=False):
        by_id.setdefault(id(p), []).append(name.replace(_FSDP1_WRAPPED, ""))
    tracked = set(names)
    return {
        all_names[0]: all_names[1:]
        for all_names in by_id.values()
        if len(all_names) > 1 and all_names[0] in tracked
    }


def _full(t: Tensor) -> Tensor:
    return t.full_tensor() if isinstance(t, DTensor) else t


class SlowWeights(SlowCopies):
    """Slow copies of ``module``'s trainable parameters, taken from their current values.

    The tracked parameters are those with ``requires_grad`` at construction, or the ones that
    ``names`` lists (a checkpoint's, whichever their ``requires_grad`` now), and any that
    :meth:`track_new` adds later.

    Args:
        module: the module whose parameters with ``requires_grad`` get slow copies.
        flat_shard_device: if the parameters are FSDP1 flat shards (sharded over all ranks), the
            device to communicate on; construction is then a collective. ``None``: they are whole
            tensors or DTensors.
        names: the names of the parameters to track (all of them parameters of ``module``);
            ``None``: those with ``requires_grad``.
        root: the module whose forward runs, which may wrap ``module`` (FSDP1's root unit does):
            its FSDP units are resharded before each write into the parameters. ``None``:
            ``module``.

    Raises:
        KeyError: if ``names`` holds a name that is not a parameter of ``module``.

    """

    def __init__(
        self,
        module: torch.nn.Module,
        flat_shard_device: torch.device | None = None,
        names: Sequence[str] | None = None,
        root: torch.nn.Module | None = None,
    ) -> None:
        self._module = module
        self._flat_shard_device = flat_shard_device
        if names is None:
            tracked = trainable_parameters(module)
        else:
            every = named_parameters(module)
            tracked = {name: every[name] for name in names}
        self.names: tuple[str, ...] = ()
        self._layout: FlatShardLayout | None = None
        #: The other state-dict names of tracked parameters that modules share (tied weights).
        self.aliases: dict[str, list[str]] = {}
        super().__init__([], module if root is None else root)
        self._track(tracked)

    def _track(self, parameters: Mapping[str, Tensor]) -> None:
        self.extend(list(parameters.values()))
        self.names += tuple(parameters)
        if self._flat_shard_device is not None:
            self._layout = FlatShardLayout(self.params, self._flat_shard_device)
        self.aliases = _aliases(self._module, self.names)

    def track_new(self) -> list[str]:
        """Track the parameters that have ``requires_grad`` now and are not tracked yet, from their
        current values; return their names. Under FSDP1 flat shards this is a collective when any
        parameter is new (every rank sees the same ``requires_grad``)."""
        tracked = set(self.names)
        new = {n: p for n, p in trainable_parameters(self._module).items() if n not in tracked}
        if new:
            self._track(new)
        return list(new)

    @property
    def flat_shards(self) -> bool:
        """Whether the parameters are FSDP1 flat shards (full tensors come out flattened)."""
        return self._layout is not None

    def tensors(self, full: bool) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """The ``(slow, fast)`` weights by name, whichever the module shows.

        With ``full=True``, ``DTensor`` shards and FSDP1 flat shards are gathered into full tensors
        (flattened, for flat shards): a collective that every rank must call. With ``full=False``
        they are returned as they are (the live tensors, not copies).
        """
        slow, fast = self.slow, self.fast
        if full and self._layout is not None:
            slow, fast = self._layout.gather(slow), self._layout.gather(fast)
        elif full:
            slow, fast = [_full(t) for t in slow], [_full(t) for t in fast]
        return dict(zip(self.names, slow, strict=True)), dict(zip(self.names, fast, strict=True))

    def load_targets(self) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """``(slow, fast)`` tensors by name to load a sharded checkpoint into, in place.

        The slow tensors are the slow weights themselves; the fast ones are the module's parameters
        (its FSDP units resharded, since the caller writes into them).
        """
        if self.shows_slow:
            raise RuntimeError("Cannot load fast weights while the module holds the slow ones")
        self._reshard()
        slow = dict(zip(self.names, self.slow, strict=True))
        fast = {n: p.detach() for n, p in zip(self.names, self.params, strict=True)}
        return slow, fast

    @torch.no_grad()
    def load(self, slow: Mapping[str, Tensor], fast: Mapping[str, Tensor]) -> None:
        """Copy slow and fast weights in by name: full tensors, ``DTensor`` shards of the same
        placement, or (flat shards) this rank's slices. The module must show its fast weights.
        The slow weights are copied first, so ``slow`` may be the module's own parameters."""
        targets = self.load_targets()
        for source, target in zip((slow, fast), targets, strict=True):
            for i, (name, dst) in enumerate(target.items()):
                src = source[name]
                if self._layout is not None and src.shape != dst.shape:  # a full tensor
                    src = self._layout.local_slice(i, src)
                _copy_into(dst, src)


def _copy_into(dst: Tensor, src: Tensor) -> None:
    if isinstance(dst, DTensor) and not isinstance(src, DTensor):
        # A full tensor (from a single-file checkpoint): every rank holds it, so each one takes its
        # own shard locally (no communication).
        src = distribute_tensor(
            src.to(device=dst.device, dtype=dst.dtype),
            dst.device_mesh,
            dst.placements,
            src_data_rank=None,
        )
    local_tensor(dst).copy_(local_tensor(src))


def mismatch_message(checkpoint: Sequence[str], module: Sequence[str]) -> str | None:
    """How the parameter names of a checkpoint and of a module differ, or ``None`` if they match.

    Args:
        checkpoint: the names that the checkpoint holds weights for.
        module: the names of the module's parameters that are compared with them.
    """
    not_in_module = [n for n in checkpoint if n not in module]
    not_in_checkpoint = [n for n in module if n not in checkpoint]
    if not not_in_module and not not_in_checkpoint:
        return None
    return (
        f"in the checkpoint but not in the module: {not_in_module}; "
        f"in the module but not in the checkpoint: {not_in_checkpoint}"
    )
