"""lightning-ranger: Rectified Adam, Lookahead and Ranger for PyTorch Lightning.

The names below are imported on first use (PEP 562), so that ``from lightning_ranger import
RAdam`` (or ``Ranger``) in a plain PyTorch loop does not import Lightning; ``RangerConfig`` and
``RangerMixin`` import it when they are first asked for.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lightning_ranger.mixin import RangerConfig, RangerMixin
    from lightning_ranger.optim import RAdam, Ranger, rectification, rho_inf

__all__ = ["RAdam", "Ranger", "RangerConfig", "RangerMixin", "rectification", "rho_inf"]
__version__ = "0.2.0"

#: The module that defines each public name.
_HOMES = {
    "RAdam": "lightning_ranger.optim",
    "Ranger": "lightning_ranger.optim",
    "rectification": "lightning_ranger.optim",
    "rho_inf": "lightning_ranger.optim",
    "RangerConfig": "lightning_ranger.mixin",
    "RangerMixin": "lightning_ranger.mixin",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
