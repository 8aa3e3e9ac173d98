"""Independent references, nothing shared with the package's code paths: Algorithm 2 of RAdam in
float64 (elementwise, from the paper), Algorithm 1 of Lookahead and Gradient Centralization as
plain PyTorch loops."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from typing import Any

import torch
from torch import Tensor, nn

from helpers.data import batches_of, make_data
from helpers.models import TinyNet, make_optimizer, poison
from lightning_ranger import RAdam


def rho_and_r(step: int, beta2: float) -> tuple[float, float | None]:
    rho_inf = 2.0 / (1.0 - beta2) - 1.0
    rho_t = rho_inf - 2.0 * step * beta2**step / (1.0 - beta2**step)
    if rho_t <= 4.0:
        return rho_t, None
    r_t = math.sqrt(
        (rho_t - 4.0) * (rho_t - 2.0) * rho_inf / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t)
    )
    return rho_t, r_t


#: The hyperparameters under RAdam's keyword names, with the defaults of the authors' code and of
#: torch.optim.RAdam (written out here rather than read from the package, to stay independent).
_RADAM_DEFAULTS: dict[str, Any] = {
    "lr": 1e-3,
    "betas": (0.9, 0.999),
    "eps": 1e-8,
    "weight_decay": 0.0,
    "decoupled_weight_decay": False,
    "rectify_threshold": 5.0,
    "degenerate_to_sgd": True,
    "maximize": False,
}


class ReferenceRAdam:
    """Algorithm 2 on float64 copies of ``params``; ``step(grads)`` takes one gradient per param.
    ``options`` are RAdam's keyword arguments (``_RADAM_DEFAULTS`` for those left out)."""

    def __init__(self, params: list[torch.Tensor], **options: Any) -> None:
        unknown = options.keys() - _RADAM_DEFAULTS.keys()
        assert not unknown, f"not an option of Algorithm 2: {sorted(unknown)}"
        hyper = {**_RADAM_DEFAULTS, **options}
        self.params = [_as_real64(p) for p in params]
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]
        self.t = 0
        self.lr, (self.beta1, self.beta2), self.eps = hyper["lr"], hyper["betas"], hyper["eps"]
        self.wd, self.decoupled = hyper["weight_decay"], hyper["decoupled_weight_decay"]
        self.threshold, self.sgd = hyper["rectify_threshold"], hyper["degenerate_to_sgd"]
        self.maximize = hyper["maximize"]

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


def reference_radam(params, grad_seq, **options):
    reference = ReferenceRAdam(params, **options)
    for grads in grad_seq:
        reference.step(grads)
    return reference.params


def reference_lookahead(
    net: nn.Module,
    optimizers: Sequence[torch.optim.Optimizer],
    batches: Sequence[tuple[Tensor, Tensor]],
    *,
    epochs: int,
    k: int,
    alpha: float,
    accumulate: int = 1,
    forward_context: Callable[[], Any] = nullcontext,
    input_dtype: torch.dtype | None = None,
    before_step: Callable[[int], None] | None = None,
    before_epoch: Callable[[int], None] | None = None,
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Lookahead (Algorithm 1) around ``optimizers`` in plain PyTorch; returns ``(fast, slow)``.

    An optimizer step happens every ``accumulate`` batches and at the last batch of an epoch (as in
    Lightning); the slow weights sync at the end of a batch once ``k`` steps were taken since the
    last sync. Slow weights of 16-bit parameters are float32. ``before_step(steps)``, if given, runs
    before each optimizer step with the number of steps taken so far (to inject a fault). A sync
    that finds a NaN or infinite fast weight resets the fast weights to the slow ones and empties
    the optimizers' state instead. ``before_epoch(epoch)``, if given, runs at each epoch's start
    (to unfreeze parameters); a parameter that has become trainable is tracked from the next sync
    on, its slow weights starting from its value there.
    """
    trainable = {n: p for n, p in net.named_parameters() if p.requires_grad}
    slow = {n: p.detach().to(_slow_dtype(p.dtype), copy=True) for n, p in trainable.items()}
    steps = synced = 0
    net.train()
    for epoch in range(epochs):
        if before_epoch is not None:
            before_epoch(epoch)
        for i, (x, y) in enumerate(batches):
            if input_dtype is not None:
                x, y = x.to(input_dtype), y.to(input_dtype)
            with forward_context():
                loss = nn.functional.mse_loss(net(x), y) / accumulate
            loss.backward()
            if (i + 1) % accumulate == 0 or i == len(batches) - 1:
                for opt in optimizers:
                    if before_step is not None:
                        before_step(steps)
                    opt.step()
                    opt.zero_grad()
                    steps += 1
            if steps - synced >= k:
                for n, p in net.named_parameters():
                    if p.requires_grad and n not in slow:
                        trainable[n] = p
                        slow[n] = p.detach().to(_slow_dtype(p.dtype), copy=True)
                finite = all(bool(torch.isfinite(p).all()) for p in trainable.values())
                with torch.no_grad():
                    for n, p in trainable.items():
                        if finite:
                            slow[n] += alpha * (p.to(slow[n].dtype) - slow[n])
                        p.copy_(slow[n])
                if not finite:
                    for opt in optimizers:
                        opt.state.clear()
                synced = steps
    fast = {n: p.detach().clone() for n, p in net.named_parameters()}
    return fast, {n: s.clone() for n, s in slow.items()}


def _slow_dtype(dtype: torch.dtype) -> torch.dtype:
    """The reference's dtype for slow weights: float32 for 16-bit parameters."""
    return torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype


def prefixed(weights: dict[str, Tensor], prefix: str = "net.") -> dict[str, Tensor]:
    """Reference names (``layers...``) as the LightningModule names them (``net.layers...``)."""
    return {f"{prefix}{name}": t for name, t in weights.items()}


def tiny_lookahead_reference(
    net: TinyNet,
    optimizer: str = "radam",
    *,
    samples: int = 20,
    epochs: int,
    k: int,
    nan_at_step: int | None = None,
    **hooks: Callable[[int], None] | None,
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """:func:`reference_lookahead` of ``net`` under ``make_optimizer(optimizer, lr=0.05)``,
    ``alpha=0.5``, on ``make_data(samples)`` in batches of 4 (by default the data and optimizer of
    :class:`Net`'s default run), keyed as the LightningModule names the parameters (``net.``
    prefix). ``hooks`` are ``before_step`` and ``before_epoch``; ``nan_at_step`` (1-based), if
    given, puts a NaN in the gradient of ``layers.out.bias`` before that optimizer step, as
    :class:`helpers.models.NaNGradientNet` does (it replaces ``before_step``)."""
    if nan_at_step is not None:

        def before_step(steps: int) -> None:
            if steps + 1 == nan_at_step:
                bias = net.layers["out"].bias
                assert bias.grad is not None
                poison(bias.grad)

        hooks["before_step"] = before_step
    fast, slow = reference_lookahead(
        net,
        [make_optimizer(optimizer, net.parameters(), 0.05)],
        batches_of(make_data(samples), 4),
        epochs=epochs,
        k=k,
        alpha=0.5,
        **hooks,
    )
    return prefixed(fast), prefixed(slow)


def tiny_lookahead_forward_weights(
    epochs_per_fit: Sequence[int], k: int
) -> list[dict[str, Tensor]]:
    """The weights that each training forward of :func:`tiny_lookahead_reference` computes with,
    over one fit per entry of ``epochs_per_fit``: each fit starts with a fresh optimizer and fresh
    slow weights from the weights where the previous one ended (its fast weights), as
    ``Trainer.fit`` does with ``Lookahead(final_weights="fast")``."""
    net = TinyNet()
    weights: list[dict[str, Tensor]] = []

    def before_step(steps: int) -> None:  # no change since the forward of this step
        weights.append(prefixed({n: p.detach().clone() for n, p in net.named_parameters()}))

    for epochs in epochs_per_fit:
        tiny_lookahead_reference(net, epochs=epochs, k=k, before_step=before_step)
    return weights


def hand_centralize(grads: list[Tensor]) -> None:
    """The formula, one tensor at a time: subtract the mean over all dims but the first (over the
    whole tensor for a 1-D one)."""
    for g in grads:
        dims = tuple(range(1, g.ndim))
        g.sub_(g.mean(dim=dims, keepdim=True) if dims else g.mean())


def centralized(g: Tensor) -> Tensor:
    out = g.clone()
    hand_centralize([out])
    return out


GC_LR = 0.05


def reference_gradient_centralization(
    net: nn.Module,
    batches: list[tuple[Tensor, Tensor]],
    *,
    epochs: int,
    accumulate: int = 1,
    min_ndim: int = 2,
    include_linear: bool = True,
    autocast: torch.dtype | None = None,
    input_dtype: torch.dtype | None = None,
    scaler: torch.amp.GradScaler | None = None,
    after_backward: Callable[[nn.Module, int], None] | None = None,
    optimizer_class: type[torch.optim.Optimizer] = RAdam,
) -> tuple[dict[str, Tensor], list[dict[str, Tensor]]]:
    """RAdam with Gradient Centralization in plain PyTorch, stepping as Lightning does (every
    ``accumulate`` batches and at an epoch's last batch, loss divided by ``accumulate``); with a
    ``scaler``, the gradients are unscaled before they are centralized. Returns the parameters
    (named as in the LightningModule) and each step's centralized gradients."""
    optimizer = optimizer_class(net.parameters(), lr=GC_LR)
    threshold = min_ndim if include_linear else max(min_ndim, 3)
    step, grads = 0, []
    net.train()
    for _ in range(epochs):
        for i, (x, y) in enumerate(batches):
            if input_dtype is not None:
                x, y = x.to(input_dtype), y.to(input_dtype)
            with torch.autocast("cpu", dtype=autocast or torch.bfloat16, enabled=bool(autocast)):
                loss = nn.functional.mse_loss(net(x), y) / accumulate
            (loss if scaler is None else scaler.scale(loss)).backward()
            if after_backward is not None:
                after_backward(net, step)
            if (i + 1) % accumulate == 0 or i == len(batches) - 1:
                if scaler is not None:
                    scaler.unscale_(optimizer)
                with torch.no_grad():
                    hand_centralize([p.grad for p in net.parameters() if p.ndim >= threshold])
                grads.append(prefixed({n: p.grad.clone() for n, p in net.named_parameters()}))
                if scaler is None:
                    optimizer.step()
                else:
                    scaler.step(optimizer)
                    scaler.update()
                optimizer.zero_grad()
                step += 1
    return prefixed({n: p.detach().clone() for n, p in net.named_parameters()}), grads
