"""Lightning callbacks: Lookahead, evaluation on slow weights, and RAdam's rectification monitor."""

from lightning_ranger.callbacks.lookahead import Lookahead
from lightning_ranger.callbacks.rectification_monitor import RectificationMonitor
from lightning_ranger.callbacks.slow_weight_swap import SlowWeightSwap

__all__ = ["Lookahead", "RectificationMonitor", "SlowWeightSwap"]
