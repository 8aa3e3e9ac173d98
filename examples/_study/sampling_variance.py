"""Claim 1 in the paper's own terms: the variance of Adam's adaptive learning rate over the random
draw of the minibatches, measured at fixed weights.

The paper's claim is about the variance of ``l_t`` for one parameter over the *gradient samples*
it was computed from (RectificationMonitor estimates it online, from the gradients of one run):
with ``v_t`` estimated from few gradients (``t`` small), ``l_t`` is a heavy-tailed random
variable, and ``r_t`` is derived so that ``r_t^2 Var[l_t]`` equals the variance reached once
``v_t`` has seen many gradients. This module measures that at fixed (initial) weights: it computes
a pool of minibatch gradients, draws ``replicas`` independent sequences of ``t`` of them, runs
Adam's ``v_t`` recursion on each, and takes the variance over the sequences, per parameter.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from lightning_ranger import rectification
from lightning_ranger.optim.schedules import LRSchedule


@dataclass(frozen=True)
class SamplingVariance:
    """Per step ``t = 1..len(adam)``: the median over parameters of ``Var[l_t] / Var[l_T]`` for
    Adam (``T`` the last step), and of the applied factors: ``r_t^2`` times it for RAdam (0 while
    ``rho_t`` is not above the threshold: SGD steps), the squared warmup factor times it for
    Adam + warmup. ``parameters`` is how many parameters the medians cover (a random subset of
    those whose gradient is nonzero in every minibatch of the pool)."""

    adam: list[float]
    radam: list[float]
    warmup: list[float]
    parameters: int
    replicas: int


def minibatch_gradients(
    model: nn.Module, dataset: TensorDataset, batch_size: int, pool: int, generator: torch.Generator
) -> Tensor:
    """``[pool, parameters]``: the cross-entropy gradient of ``pool`` random minibatches."""
    x, y = dataset.tensors
    params = list(model.parameters())
    grads = []
    for _ in range(pool):
        index = torch.randint(len(y), (batch_size,), generator=generator)
        loss = nn.functional.cross_entropy(model(x[index]), y[index])
        grads.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)]))
    return torch.stack(grads)


def sampling_variance(
    grads: Tensor,
    beta2: float,
    steps: int,
    warmup_steps: int,
    threshold: float = 5.0,
    replicas: int = 64,
    max_parameters: int = 4096,
    seed: int = 0,
) -> SamplingVariance:
    """Run ``v_t = beta2 v_{t-1} + (1 - beta2) g_t^2`` on ``replicas`` sequences of gradients
    drawn with replacement from ``grads`` and measure ``l_t = sqrt(1 - beta2^t) / sqrt(v_t)`` (the
    paper's ``psi``, without ``eps``) over the sequences.

    Args:
        grads: ``[pool, parameters]`` minibatch gradients at fixed weights.
        beta2: Adam's ``beta2``.
        steps: last step ``T``; choose it several times ``2 / (1 - beta2)`` so that ``Var[l_T]``
            is close to the limit.
        warmup_steps: the linear warmup compared (step ``t`` runs at ``(t - 1) / W`` of lr).
        threshold: RAdam's ``rectify_threshold``.
        replicas: independent sequences.
        max_parameters: measure a random subset of at most this many parameters.
        seed: seed of the draws and of the subset.

    """
    generator = torch.Generator().manual_seed(seed)
    live = (grads != 0).all(dim=0).nonzero().squeeze(1)
    live = live[torch.randperm(len(live), generator=generator)[:max_parameters]]
    grads = grads[:, live].double()
    draws = torch.randint(len(grads), (steps, replicas), generator=generator)
    v = grads.new_zeros(replicas, grads.shape[1])
    variances = []
    for t in range(1, steps + 1):
        v.mul_(beta2).addcmul_(grads[draws[t - 1]], grads[draws[t - 1]], value=1.0 - beta2)
        l_t = (1.0 - beta2**t) ** 0.5 / v.sqrt()
        variances.append(l_t.var(dim=0))
    limit = variances[-1]
    adam = [float((var / limit).median()) for var in variances]
    schedule = LRSchedule("constant", warmup_steps=warmup_steps)
    rectified = [rectification(t, beta2) for t in range(1, steps + 1)]
    return SamplingVariance(
        adam=adam,
        radam=[
            r**2 * a if rho > threshold else 0.0
            for (rho, r), a in zip(rectified, adam, strict=True)
        ],
        warmup=[schedule(t - 1) ** 2 * a for t, a in enumerate(adam, start=1)],
        parameters=len(live),
        replicas=replicas,
    )
