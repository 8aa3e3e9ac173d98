"""Which parameters get weight decay: the param groups that the mixin's optimizer is built on."""

from __future__ import annotations

from typing import Any

from torch import nn

__all__ = ["NORMALIZATION_LAYERS", "no_decay_parameters", "param_groups"]

NORMALIZATION_LAYERS: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,  # BatchNorm* and InstanceNorm*
    nn.LayerNorm,
    nn.GroupNorm,
    nn.RMSNorm,
)


def no_decay_parameters(module: nn.Module) -> set[nn.Parameter]:
    """Biases, other 1-D (and 0-D) parameters, and every parameter of a normalization layer:
    decaying them towards 0 fights the scale and shift they exist to learn.

    Example::

        >>> net = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
        >>> sorted(n for n, p in net.named_parameters() if p in no_decay_parameters(net))
        ['0.bias', '1.bias', '1.weight']

    """
    found = {p for p in module.parameters() if p.ndim <= 1}
    for layer in module.modules():
        if isinstance(layer, NORMALIZATION_LAYERS):
            found.update(layer.parameters(recurse=False))
    return found


def param_groups(
    module: nn.Module, *, weight_decay: float, no_decay_norm_and_bias: bool
) -> list[dict[str, Any]]:
    """All of ``module.parameters()`` in one group, or, when ``weight_decay > 0`` and
    ``no_decay_norm_and_bias``, in a group named ``"decay"`` and a group named ``"no_decay"``
    with ``weight_decay=0`` (:func:`no_decay_parameters`); an empty group is left out.

    The group names are what :class:`~lightning_ranger.callbacks.RectificationMonitor` names its
    metrics after.

    Example::

        >>> net = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
        >>> groups = param_groups(net, weight_decay=0.1, no_decay_norm_and_bias=True)
        >>> [(g["name"], len(g["params"])) for g in groups]
        [('decay', 1), ('no_decay', 3)]

    """
    params = list(module.parameters())
    if not (no_decay_norm_and_bias and weight_decay > 0):
        return [{"params": params}]
    exempt = no_decay_parameters(module)
    groups: list[dict[str, Any]] = [
        {"params": [p for p in params if p not in exempt], "name": "decay"},
        {"params": [p for p in params if p in exempt], "name": "no_decay", "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]
