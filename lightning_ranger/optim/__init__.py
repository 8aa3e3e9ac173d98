"""The plain-PyTorch core: RAdam, Lookahead and Ranger as optimizers, the rectification formulas
and their tracker, lr schedules, Lookahead's slow-weight sync, Gradient Centralization and the
adaptive-lr statistics. Nothing here imports Lightning, so these work in any training loop; the
callbacks are thin Lightning hooks around them."""

from lightning_ranger.optim.centralization import centralize_gradients
from lightning_ranger.optim.lookahead import first_nonfinite, lookahead_sync_
from lightning_ranger.optim.lookahead_optimizer import Lookahead
from lightning_ranger.optim.radam import RAdam, radam
from lightning_ranger.optim.ranger import Ranger
from lightning_ranger.optim.rectification import rectification, rho_inf
from lightning_ranger.optim.rectification_tracker import RectificationTracker

__all__ = [
    "Lookahead",
    "RAdam",
    "Ranger",
    "RectificationTracker",
    "centralize_gradients",
    "first_nonfinite",
    "lookahead_sync_",
    "radam",
    "rectification",
    "rho_inf",
]
