"""Lightning callbacks: Lookahead, evaluation on slow weights, RAdam's rectification monitor and
gradient centralization."""

from lightning_ranger.callbacks.gradient_centralization import GradientCentralization
from lightning_ranger.callbacks.lookahead import Lookahead
from lightning_ranger.callbacks.rectification_monitor import RectificationMonitor
from lightning_ranger.callbacks.slow_weight_swap import SlowWeightSwap

__all__ = ["GradientCentralization", "Lookahead", "RectificationMonitor", "SlowWeightSwap"]
