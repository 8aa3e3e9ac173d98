"""The paper's Adam-2k ablation: Adam that only accumulates ``v_t`` for its first steps."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.optim import Adam
from torch.optim.optimizer import ParamsT


class FrozenStartAdam(Adam):
    r"""``torch.optim.Adam`` whose first ``freeze_steps`` steps only update ``v_t``.

    Liu et al. (2020, section 3.2) ask whether Adam needs warmup because its adaptive learning rate
    ``1 / sqrt(v_t)`` is estimated from too few gradients at the start. Their *Adam-2k* computes
    ``v_t`` alone for the first 2000 iterations, with the parameters and the momentum ``m_t``
    frozen (at their initial values, ``m_t = 0``), and then runs plain Adam. This class does that
    for any number of steps: while a parameter's ``step`` is below ``freeze_steps``, a step does
    ``v_t = beta2 v_{t-1} + (1 - beta2) g_t^2`` and ``step += 1`` and nothing else; later steps are
    ``Adam.step``. The step count goes on from the frozen steps, so ``v_t``'s bias correction counts
    every gradient it has seen; ``m_t`` starts from 0 after the freeze and its bias correction
    ``1 - beta1^t`` is then close to 1 (a short ramp of about ``1 / (1 - beta1)`` steps, the
    behaviour of "plain Adam" resumed with the counters it had).

    The state keeps torch's keys and layout (``step`` a float32 CPU scalar, ``exp_avg``,
    ``exp_avg_sq``), so the state dict is an ``Adam`` state dict.

    Args:
        params: parameters or param groups, as for ``Adam``.
        lr: learning rate after the freeze.
        betas: ``(beta1, beta2)``, as for ``Adam``.
        eps: as for ``Adam``.
        freeze_steps: number of ``v_t``-only steps, ``>= 0``.

    Raises:
        ValueError: if ``freeze_steps`` is negative or not an int, and for ``Adam``'s own checks.

    Example::

        >>> p = torch.nn.Parameter(torch.ones(2))
        >>> opt = FrozenStartAdam([p], lr=0.1, freeze_steps=1)
        >>> p.grad = torch.ones(2); opt.step()
        >>> p.tolist(), opt.state[p]["exp_avg"].tolist()
        ([1.0, 1.0], [0.0, 0.0])
        >>> opt.step(); [round(x, 4) for x in p.tolist()]
        [0.9474, 0.9474]

    """

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        freeze_steps: int = 2000,
    ) -> None:
        if isinstance(freeze_steps, bool) or not isinstance(freeze_steps, int) or freeze_steps < 0:
            raise ValueError(f"`freeze_steps` must be an int >= 0, got {freeze_steps!r}")
        # One code path (per tensor) for both phases, so the state is laid out as in `_freeze_step`.
        super().__init__(params, lr=lr, betas=betas, eps=eps, foreach=False, fused=False)
        self.freeze_steps = freeze_steps

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One ``v_t``-only step while any parameter with a gradient is still frozen, else Adam's.

        Args:
            closure: re-evaluates the model and returns the loss, as for ``Adam``.

        """
        if not self._frozen():
            return super().step(closure)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta2 = group["betas"][1]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:  # the layout of Adam's lazy initialization (not fused/capturable)
                    state["step"] = torch.tensor(0.0, dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"].mul_(beta2).addcmul_(p.grad, p.grad, value=1.0 - beta2)
                state["step"] += 1
        return loss

    def _frozen(self) -> bool:
        return any(
            p.grad is not None and float(self.state[p].get("step", 0)) < self.freeze_steps
            for group in self.param_groups
            for p in group["params"]
        )
