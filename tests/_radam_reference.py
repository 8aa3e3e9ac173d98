"""An independent float64 implementation of RAdam's Algorithm 2 (Liu et al., 2020), written
from the paper for the tests: elementwise, no fused or foreach tricks, nothing shared with the
package."""

from __future__ import annotations

import math

import torch


def rho_and_r(step: int, beta2: float) -> tuple[float, float | None]:
    rho_inf = 2.0 / (1.0 - beta2) - 1.0
    rho_t = rho_inf - 2.0 * step * beta2**step / (1.0 - beta2**step)
    if rho_t <= 4.0:
        return rho_t, None
    r_t = math.sqrt(
        (rho_t - 4.0) * (rho_t - 2.0) * rho_inf / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t)
    )
    return rho_t, r_t


class ReferenceRAdam:
    """Algorithm 2 on float64 copies of ``params``; ``step(grads)`` takes one gradient per param."""

    def __init__(
        self,
        params: list[torch.Tensor],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        decoupled_weight_decay: bool = False,
        rectify_threshold: float = 5.0,
        degenerate_to_sgd: bool = True,
        maximize: bool = False,
    ) -> None:
        self.params = [_as_real64(p) for p in params]
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]
        self.t = 0
        self.lr, (self.beta1, self.beta2), self.eps = lr, betas, eps
        self.wd, self.decoupled = weight_decay, decoupled_weight_decay
        self.threshold, self.sgd, self.maximize = rectify_threshold, degenerate_to_sgd, maximize

    def step(self, grads: list[torch.Tensor]) -> None:
        self.t += 1
        t, b1, b2 = self.t, self.beta1, self.beta2
        rho_t, r_t = rho_and_r(t, b2)
        for i, g in enumerate(grads):
            g = _as_real64(g)
            theta = self.params[i]
            if self.maximize:
                g = -g
            if self.wd:
                if self.decoupled:
                    theta = theta * (1.0 - self.lr * self.wd)
                else:
                    g = g + self.wd * theta
            self.m[i] = b1 * self.m[i] + (1.0 - b1) * g
            self.v[i] = b2 * self.v[i] + (1.0 - b2) * g * g
            m_hat = self.m[i] / (1.0 - b1**t)
            if rho_t > self.threshold:
                assert r_t is not None
                l_t = math.sqrt(1.0 - b2**t) / (torch.sqrt(self.v[i]) + self.eps)
                theta = theta - self.lr * r_t * m_hat * l_t
            elif self.sgd:
                theta = theta - self.lr * m_hat
            self.params[i] = theta


def _as_real64(t: torch.Tensor) -> torch.Tensor:
    t = t.detach()
    if t.is_complex():
        t = torch.view_as_real(t)
    return t.to(torch.float64).clone()
