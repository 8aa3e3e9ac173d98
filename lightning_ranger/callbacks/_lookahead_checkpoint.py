r"""How :class:`~lightning_ranger.callbacks.lookahead.Lookahead` writes its weights into Lightning
checkpoints and reads them back.

A single-file checkpoint (single device, DDP, or ``ModelParallelStrategy`` with
``save_distributed_checkpoint=False``) written while Lookahead is active holds:

- ``checkpoint["state_dict"]``: the module's state with the **slow** weights in place of the
  tracked parameters, under every key of a tensor that several modules share (tied weights), and
  in float32 for float16/bfloat16 parameters (``load_state_dict`` casts them), so
  ``Model.load_from_checkpoint(path)`` gives the weights to deploy. Buffers are the module's own.
- ``checkpoint["lookahead_fast_weights"]``: ``{parameter name: fast weight}``.
- ``checkpoint["lookahead_slow_weights"]``: under ``ModelParallelStrategy`` and ``FSDPStrategy``
  (FSDP1), whose loading puts ``state_dict`` into the module before callbacks see it, the float32
  slow weights of the float16/bfloat16 parameters once more, so that a resume is exact.
- ``checkpoint["callbacks"]["Lookahead"]``: ``{"synced_at_step": int, "names": list[str],
  "restores": int}`` (the callback's ``state_dict``).

Under FSDP1 the full tensors are gathered from each rank's slices of the flat parameters (only
``state_dict_type="full"`` is supported). A sharded checkpoint (a distributed-checkpoint folder,
``ModelParallelStrategy``) keeps each rank's shards of both weights in ``state_dict`` entries,
which every rank writes: the slow weights under the parameter names, the fast ones under
``state_dict.lookahead_fast_weights.<name>``. The callback state lives in the metadata file, which
Lightning writes from rank 0 only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch import Tensor
from torch.distributed.tensor import DTensor

from lightning_ranger._namespaces import lightning_isinstance
from lightning_ranger.callbacks._slow_weights import (
    SlowWeights,
    mismatch_message,
    named_parameters,
    trainable_parameters,
)
from lightning_ranger.optim.lookahead import slow_dtype

__all__ = [
    "FAST_WEIGHTS_KEY",
    "SLOW_WEIGHTS_KEY",
    "check_checkpoint_names",
    "load_sharded",
    "save_weights",
    "weights_to_load",
]

FAST_WEIGHTS_KEY = "lookahead_fast_weights"
SLOW_WEIGHTS_KEY = "lookahead_slow_weights"
#: Strategies that load ``checkpoint["state_dict"]`` into the module and drop it before callbacks.
_LOADS_STATE_DICT_FIRST = ("strategies.FSDPStrategy", "strategies.ModelParallelStrategy")


def save_weights(
    weights: SlowWeights,
    trainer: pl.Trainer,
    pl_module: pl.LightningModule,
    checkpoint: dict[str, Any],
) -> None:
    """Put the slow weights into ``checkpoint["state_dict"]`` and the fast ones beside them."""
    state_dict = checkpoint["state_dict"]
    sharded = any(isinstance(state_dict.get(n), DTensor) for n in weights.names)
    # A full checkpoint gathers shards on every rank (a collective); only rank 0 writes it.
    slow, fast = weights.tensors(full=not sharded)
    if weights.flat_shards:
        slow, fast = _shaped_like(state_dict, slow), _shaped_like(state_dict, fast)
    state_dict.update(slow)
    for name, aliases in weights.aliases.items():  # tied weights: every key of the tensor
        for alias in aliases:
            if name in slow and alias in state_dict:
                state_dict[alias] = slow[name]
    if sharded:  # only `state_dict` entries are written by every rank
        state_dict[FAST_WEIGHTS_KEY] = fast
    else:
        checkpoint[FAST_WEIGHTS_KEY] = fast
        if lightning_isinstance(trainer.strategy, *_LOADS_STATE_DICT_FIRST):
            widened = _widened(named_parameters(pl_module), weights.names)
            checkpoint[SLOW_WEIGHTS_KEY] = {n: t for n, t in slow.items() if n in widened}


def check_checkpoint_names(pl_module: pl.LightningModule, names: Sequence[str]) -> None:
    """Check ``names``, the parameters that a checkpoint holds Lookahead weights of, against
    ``pl_module``'s parameters; a rank-zero warning names those frozen since.

    Raises:
        ValueError: if ``pl_module`` lacks a parameter of ``names``.

    """
    parameters = named_parameters(pl_module)
    if any(name not in parameters for name in names):
        mismatch = mismatch_message(names, list(trainable_parameters(pl_module)))
        raise ValueError(
            "The checkpoint holds Lookahead weights of parameters that the module does not "
            f"have (compared with the module's parameters with `requires_grad`): {mismatch}"
        )
    frozen = [name for name in names if not parameters[name].requires_grad]
    if frozen:
        rank_zero_warn(
            f"Lookahead: {len(frozen)} parameters were trainable when the checkpoint was "
            "written and have `requires_grad=False` now; they stay tracked, and the syncs "
            f"move them to their slow weights: {frozen}"
        )


def weights_to_load(
    trainer: pl.Trainer,
    pl_module: pl.LightningModule,
    checkpoint: dict[str, Any],
    names: Sequence[str],
) -> tuple[dict[str, Tensor], dict[str, Tensor]] | None:
    """The ``(slow, fast)`` weights by name that a single-file checkpoint holds, or ``None`` for
    a sharded checkpoint (:func:`load_sharded` reads those in place)."""
    if FAST_WEIGHTS_KEY not in checkpoint:
        return None
    if "state_dict" in checkpoint:
        slow = {name: checkpoint["state_dict"][name] for name in names}
    else:
        slow = _slow_weights_loaded_into(trainer, pl_module, checkpoint, names)
    return slow, checkpoint[FAST_WEIGHTS_KEY]


def load_sharded(weights: SlowWeights, checkpoint_path: Any) -> None:
    """Read this rank's slow and fast shards from a distributed-checkpoint folder, in place."""
    from torch.distributed.checkpoint import load

    slow, fast = weights.load_targets()
    with torch.no_grad():
        load({"state_dict": {**slow, FAST_WEIGHTS_KEY: fast}}, checkpoint_id=checkpoint_path)


def _shaped_like(state_dict: dict[str, Any], flat: dict[str, Tensor]) -> dict[str, Tensor]:
    """FSDP1's gathered, flattened weights in the shapes (and on the device) of Lightning's full
    state dict, which only rank 0 holds (the others write nothing and get nothing)."""
    return {
        n: t.view(state_dict[n].shape).to(state_dict[n].device)
        for n, t in flat.items()
        if n in state_dict
    }


def _widened(parameters: dict[str, Tensor], names: Sequence[str]) -> list[str]:
    """Those of ``names`` whose slow copies are wider than their parameters (16-bit ones)."""
    return [n for n in names if slow_dtype(parameters[n].dtype) != parameters[n].dtype]


def _slow_weights_loaded_into(
    trainer: pl.Trainer,
    pl_module: pl.LightningModule,
    checkpoint: dict[str, Any],
    names: Sequence[str],
) -> dict[str, Tensor]:
    """The slow weights, from the module that the strategy loaded ``checkpoint["state_dict"]``
    into before dropping it from ``checkpoint`` (``ModelParallelStrategy`` and FSDP1, single-file
    checkpoints), and for 16-bit parameters from ``checkpoint["lookahead_slow_weights"]``.
    :meth:`SlowWeights.load` reads them before it overwrites the parameters with the fast ones."""
    parameters = named_parameters(pl_module)
    slow = {n: parameters[n].detach() for n in names}
    slow.update(checkpoint.get(SLOW_WEIGHTS_KEY, {}))
    rounded = [
        n for n in _widened(parameters, names) if n not in checkpoint.get(SLOW_WEIGHTS_KEY, {})
    ]
    if rounded:  # written before checkpoints held them
        rank_zero_warn(
            f"`{type(trainer.strategy).__name__}` loaded the float32 slow weights of "
            f"{len(rounded)} parameters from the single-file checkpoint into 16-bit parameters, "
            f"and the checkpoint has no `{SLOW_WEIGHTS_KEY}`: the resumed run is close to an "
            "uninterrupted one, not equal."
        )
    return slow
