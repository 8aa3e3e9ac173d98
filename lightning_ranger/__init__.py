"""lightning-ranger: Rectified Adam, Lookahead and Ranger for PyTorch Lightning."""

from lightning_ranger.mixin import RangerConfig, RangerMixin
from lightning_ranger.optim import RAdam, rectification, rho_inf

__all__ = ["RAdam", "RangerConfig", "RangerMixin", "rectification", "rho_inf"]
__version__ = "0.1.0"
