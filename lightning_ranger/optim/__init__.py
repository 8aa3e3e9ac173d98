"""Plain-PyTorch optimizers and formulas; nothing here imports Lightning."""

from lightning_ranger.optim.radam import RAdam, radam
from lightning_ranger.optim.rectification import rectification, rho_inf

__all__ = ["RAdam", "radam", "rectification", "rho_inf"]
