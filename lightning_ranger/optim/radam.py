"""Rectified Adam (Liu et al., ICLR 2020, Algorithm 2): the optimizer class and its functional step.

The class validates arguments and gathers tensors; :func:`radam` does the math and dispatches to
one of three implementations, as ``torch.optim`` does:

- *fused*: one pass over ``p, g, m, v`` with torch's fused Adam kernel. In the rectified phase the
  RAdam update ``lr * r_t * m_hat * sqrt(1 - beta2^t) / (sqrt(v_t) + eps)`` is exactly Adam's
  update without bias correction, ``lr' * m_t / (sqrt(v_t) + eps)``, with
  ``lr' = lr * r_t * sqrt(1 - beta2^t) / (1 - beta1^t)``; the kernel is handed an infinite step
  count so that its own bias corrections are exactly 1. The few un-rectified first steps use the
  multi-tensor implementation.
- *foreach*: multi-tensor ``torch._foreach_*`` operations, per device and dtype.
- *per-tensor*: a plain loop, for tensor types and devices the others do not take.

Every path computes the update of float16 and bfloat16 tensors in float32 and rounds it once, as
torch's fused kernels do. In eager mode the step-dependent scalars (``r_t``, the bias corrections,
the step sizes) are Python numbers; under ``torch.compile`` they are tensors computed from the step
counts inside the graph, so that one graph serves every step.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias, cast

import torch
from torch import Tensor
from torch.optim.optimizer import Optimizer, _default_to_fused_or_foreach

from lightning_ranger._utils import group_indices, is_real
from lightning_ranger.optim.rectification import MIN_RECTIFY_THRESHOLD, rectification_tensor

__all__ = ["RAdam", "radam", "validate_options"]

ParamsT: TypeAlias = Iterable[Tensor] | Iterable[dict[str, Any]] | Iterable[tuple[str, Tensor]]


def _check_lr(lr: object) -> None:
    if isinstance(lr, Tensor):
        if lr.numel() != 1:
            raise ValueError(f"`lr` as a Tensor must have exactly 1 element, got shape {lr.shape}")
        value = lr.item()
    elif is_real(lr):
        value = lr
    else:
        raise TypeError(f"`lr` must be a float or a 1-element Tensor, got {lr!r}")
    if not value >= 0.0:  # also rejects NaN
        raise ValueError(f"`lr` must be >= 0, got {value}")


def _check_range(name: str, value: object, low: float, high: float, high_open: bool) -> None:
    accepted = f"[{low}, {high})" if high_open else f"[{low}, {high}]"
    if not is_real(value):
        raise TypeError(f"`{name}` must be a float in {accepted}, got {value!r}")
    ok = low <= value < high if high_open else low <= value <= high
    if not ok:
        raise ValueError(f"`{name}` must be in {accepted}, got {value}")


def _check_flag(name: str, value: object, optional: bool = False) -> None:
    if not (isinstance(value, bool) or (optional and value is None)):
        accepted = "a bool or None" if optional else "a bool"
        raise TypeError(f"`{name}` must be {accepted}, got {value!r}")


def validate_options(
    *,
    lr: object = 1e-3,
    betas: object = (0.9, 0.999),
    eps: object = 1e-8,
    weight_decay: object = 0.0,
    decoupled_weight_decay: object = False,
    rectify_threshold: object = 5.0,
    degenerate_to_sgd: object = True,
    maximize: object = False,
    foreach: object = None,
    fused: object = None,
) -> None:
    """Check :class:`RAdam`'s options (defaults for those not given).

    Raises:
        TypeError: if an option has the wrong type, naming it.
        ValueError: if an option is outside its accepted range, naming it and the range.

    """
    _check_lr(lr)
    if not isinstance(betas, Sequence) or len(betas) != 2:
        raise TypeError(f"`betas` must be a pair of floats in [0, 1), got {betas!r}")
    for i, beta in enumerate(betas):
        _check_range(f"betas[{i}]", beta, 0.0, 1.0, high_open=True)
    _check_range("eps", eps, 0.0, math.inf, high_open=False)
    _check_range("weight_decay", weight_decay, 0.0, math.inf, high_open=False)
    _check_range("rectify_threshold", rectify_threshold, MIN_RECTIFY_THRESHOLD, math.inf, False)
    _check_flag("decoupled_weight_decay", decoupled_weight_decay)
    _check_flag("degenerate_to_sgd", degenerate_to_sgd)
    _check_flag("maximize", maximize)
    _check_flag("foreach", foreach, optional=True)
    _check_flag("fused", fused, optional=True)
    if fused and foreach:
        raise ValueError("`fused=True` and `foreach=True` cannot be set together; choose one")


#: The options of a param group, as :func:`validate_options` names them.
_OPTIONS = tuple(inspect.signature(validate_options).parameters)


def _validate_group(group: dict[str, Any]) -> None:
    """Check one param group's options; raises a ``ValueError``/``TypeError`` naming the option."""
    validate_options(**{key: group[key] for key in _OPTIONS})
    if group["fused"]:
        for p in group["params"]:
            if not (p.is_floating_point() or p.is_complex()):
                raise ValueError(f"`fused=True` needs floating point parameters, got {p.dtype}")
            if p.is_meta:  # deferred initialisation: checked again when the optimizer steps
                continue
            if not _default_to_fused_or_foreach([_real(p)], False, use_fused=True)[0]:
                raise ValueError(
                    f"`fused=True` is not supported for a {type(p).__name__} on device "
                    f"{p.device.type!r}; pass `fused=None` to choose an implementation by device"
                )


def _real(t: Tensor) -> Tensor:
    return torch.view_as_real(t) if t.is_complex() else t


class RAdam(Optimizer):
    r"""Rectified Adam, Algorithm 2 of `On the Variance of the Adaptive Learning Rate and Beyond
    <https://arxiv.org/abs/1908.03265>`_ (Liu et al., ICLR 2020).

    Adam's adaptive learning rate has a large variance in the first steps, which is why Adam needs
    a warmup. RAdam estimates the length of the approximated simple moving average ``rho_t`` and,
    while the variance is tractable (``rho_t > rectify_threshold``), multiplies Adam's step by the
    rectification term ``r_t`` (see :func:`lightning_ranger.rectification`):

    .. code-block:: text

        m_t = beta1 m_{t-1} + (1 - beta1) g_t            v_t = beta2 v_{t-1} + (1 - beta2) g_t^2
        m_hat = m_t / (1 - beta1^t)
        rho_t > threshold:  p -= lr * r_t * m_hat * sqrt(1 - beta2^t) / (sqrt(v_t) + eps)
        otherwise:          p -= lr * m_hat   (degenerate_to_sgd=True: SGD with momentum)
                            no update          (degenerate_to_sgd=False; m_t and v_t still move)

    The paper states the condition as ``rho_t > 4``; the authors' code and ``torch.optim.RAdam``
    use 5, the default here. ``r_t`` is undefined below 4, so thresholds below 4 are refused. With
    ``beta2=0.999`` the first rectified step is step 5 with threshold 4 and step 6 with 5; with
    ``beta2 <= 0.6`` (``rho_inf <= 4``) no step is ever rectified.

    State keys (``step``, ``exp_avg``, ``exp_avg_sq``) are torch's, so a ``state_dict`` of
    ``torch.optim.RAdam`` loads into this optimizer and back (groups without ``rectify_threshold``
    or ``degenerate_to_sgd`` get torch's behaviour: 5.0 and ``True``).

    float16 and bfloat16 parameters are updated in float32 and rounded once on every path, so
    the three implementations agree and ``eps`` never underflows. Parameters on the meta device
    (deferred initialisation) are accepted at construction; ``step()`` refuses them until they are
    materialized. ``torch.compile(optimizer.step)`` compiles one graph for the foreach and
    per-tensor implementations, across the rectification threshold; a fused step runs eagerly
    under compile, as ``torch.optim.Adam(fused=True)``'s does.

    Args:
        params: parameters or param groups (dicts, which may override every option below).
        lr: learning rate, a float or a 1-element tensor, ``>= 0``.
        betas: decay rates of the first and second moments, each in ``[0, 1)``.
        eps: added to ``sqrt(v_t)`` in the denominator, ``>= 0``.
        weight_decay: ``>= 0``. L2 (added to the gradient) by default.
        decoupled_weight_decay: if ``True``, parameters are multiplied by ``1 - lr * weight_decay``
            before the step instead (AdamW style), on every step, also un-rectified ones.
        rectify_threshold: rectify while ``rho_t`` is above this, ``>= 4``.
        degenerate_to_sgd: before rectification, take an SGD-with-momentum step (``True``) or no
            step (``False``).
        maximize: maximize the objective instead of minimizing it.
        foreach: use the multi-tensor implementation; ``None`` chooses as torch does.
        fused: use the fused single-pass implementation; ``None`` uses it wherever torch's fused
            Adam kernel supports the device and dtype (CPU, CUDA, MPS, XPU; floating point).

    Raises:
        TypeError: if an option has the wrong type (``lr`` not a number or tensor, a flag not bool).
        ValueError: if an option is outside its range, or ``fused=True`` cannot be honoured (for
            the parameters' type or device; meta parameters are checked when they step).

    Example::

        import torch
        from lightning_ranger import RAdam

        model = torch.nn.Linear(10, 1)
        optimizer = RAdam(model.parameters(), lr=1e-3, weight_decay=0.01)
        loss = model(torch.randn(8, 10)).pow(2).mean()
        loss.backward()
        optimizer.step()

    """

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        decoupled_weight_decay: bool = False,
        rectify_threshold: float = 5.0,
        degenerate_to_sgd: bool = True,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
    ) -> None:
        defaults = {
            "lr": lr,
            "betas": betas,
            "eps": eps,
            "weight_decay": weight_decay,
            "decoupled_weight_decay": decoupled_weight_decay,
            "rectify_threshold": rectify_threshold,
            "degenerate_to_sgd": degenerate_to_sgd,
            "maximize": maximize,
            "foreach": foreach,
            "fused": fused,
        }
        # Validate the defaults even when every group overrides them, so bad values never hide.
        validate_options(**defaults)
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a param group, filled with the defaults and validated like the constructor's.

        Raises:
            TypeError: if an option of the group has the wrong type; the optimizer is unchanged.
            ValueError: if an option is outside its range; the optimizer is unchanged.

        """
        super().add_param_group(param_group)
        try:
            _validate_group(self.param_groups[-1])
        except (TypeError, ValueError):
            self.param_groups.pop()
            raise

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            # Groups from torch.optim.RAdam or older versions: fill in torch's behaviour.
            group.setdefault("rectify_threshold", 5.0)
            group.setdefault("degenerate_to_sgd", True)
            group.setdefault("decoupled_weight_decay", False)
            group.setdefault("maximize", False)
            group.setdefault("foreach", None)
            group.setdefault("fused", None)
            for p in group["params"]:
                p_state = self.state.get(p, {})
                if "step" in p_state:
                    p_state["step"] = _host_step(p_state["step"])

    def _init_group(
        self,
        group: dict[str, Any],
        params: list[Tensor],
        grads: list[Tensor],
        exp_avgs: list[Tensor],
        exp_avg_sqs: list[Tensor],
        state_steps: list[Tensor],
    ) -> None:
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError("RAdam does not support sparse gradients")
            if p.is_meta:
                raise RuntimeError(
                    "RAdam cannot step parameters on the meta device, which hold no values; "
                    "materialize them first (e.g. `module.to_empty(device=...)`, then initialize)"
                )
            state = self.state[p]
            # torch.compile keeps step counts on the parameter's device (torch._dynamo moves
            # them there); eager steps keep them on the host, like torch's non-fused optimizers.
            compiling = torch.compiler.is_compiling()
            if len(state) == 0:
                step_device = p.device if compiling else torch.device("cpu")
                state["step"] = torch.zeros((), dtype=torch.float32, device=step_device)
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            elif state["step"].device.type != "cpu" and not compiling:
                # Loaded from a fused/capturable optimizer: the step count lives on the host here.
                state["step"] = _host_step(state["step"])
            params.append(p)
            grads.append(p.grad)
            exp_avgs.append(state["exp_avg"])
            exp_avg_sqs.append(state["exp_avg_sq"])
            state_steps.append(state["step"])

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        """Perform one optimization step.

        Under ``torch.compile`` a step with a fused param group runs eagerly (torch's fused kernels
        cannot be traced, as for ``torch.optim.Adam(fused=True)``); other steps trace into one
        graph whose step-dependent scalars are tensors, so it is not recompiled as steps go by.

        Args:
            closure: a callable that re-evaluates the model and returns the loss (optional).

        Raises:
            RuntimeError: for sparse gradients, or parameters still on the meta device.

        """
        if torch.compiler.is_compiling() and any(
            _implementation(group["params"], group["foreach"], group["fused"])[0]
            for group in self.param_groups
        ):
            return self._eager_step(closure)
        return self._step(closure)

    def _step(self, closure: Any) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params: list[Tensor] = []
            grads: list[Tensor] = []
            exp_avgs: list[Tensor] = []
            exp_avg_sqs: list[Tensor] = []
            state_steps: list[Tensor] = []
            self._init_group(group, params, grads, exp_avgs, exp_avg_sqs, state_steps)
            if not params:
                continue
            beta1, beta2 = group["betas"]
            radam(
                params,
                grads,
                exp_avgs,
                exp_avg_sqs,
                state_steps,
                lr=group["lr"],
                beta1=beta1,
                beta2=beta2,
                eps=group["eps"],
                weight_decay=group["weight_decay"],
                decoupled_weight_decay=group["decoupled_weight_decay"],
                rectify_threshold=group["rectify_threshold"],
                degenerate_to_sgd=group["degenerate_to_sgd"],
                maximize=group["maximize"],
                foreach=group["foreach"],
                fused=group["fused"],
            )
        return loss

    _eager_step = torch.compiler.disable(_step)


def _implementation(
    params: list[Tensor], foreach: bool | None, fused: bool | None
) -> tuple[bool, bool]:
    """``(fused, foreach)`` as chosen for ``params``: the given flags, ``None`` choosing as torch
    does (fused wherever torch's fused kernels take every tensor)."""
    if fused is None and foreach is None:
        return _default_to_fused_or_foreach(params, False, use_fused=True)
    if fused is None:
        return False, bool(foreach)
    if foreach is None:
        return fused, False if fused else _default_to_fused_or_foreach(params, False)[1]
    return fused, foreach


def _host_step(step: float | Tensor) -> Tensor:
    """The step count as torch's non-fused optimizers keep it: a float32 scalar on the CPU."""
    value = step.item() if isinstance(step, Tensor) else float(step)
    return torch.tensor(value, dtype=torch.float32)


#: Dtypes whose update every implementation computes in float32 and rounds once per tensor, as
#: torch's fused kernels do (``eps=1e-8`` alone underflows to 0 in float16).
_LOW_PRECISION = (torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class _Update:
    """How one parameter moves at this step: ``p -= adaptive_scale * m / (sqrt(v) + eps)`` where
    ``rectified``, else ``p -= momentum_scale * m`` (``momentum_scale == 0``: no move).

    Python numbers in eager mode; 0-dim tensors computed from the step counts while compiling, so
    that a compiled step takes them from its graph instead of baking them in.
    """

    rectified: bool | Tensor
    adaptive_scale: float | Tensor
    momentum_scale: float | Tensor


@dataclass(frozen=True)
class _Schedule:
    """A param group's options that set the step size at each step."""

    lr: float | Tensor
    beta1: float
    beta2: float
    rectify_threshold: float
    degenerate_to_sgd: bool

    @property
    def shape(self) -> tuple[float, float, float, bool]:
        """Everything but ``lr``: what the step size factors depend on besides the step."""
        return (self.beta1, self.beta2, self.rectify_threshold, self.degenerate_to_sgd)


def _step_factors(
    step: Tensor, beta1: float, beta2: float, rectify_threshold: float, degenerate_to_sgd: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """``(rectified, adaptive, momentum)`` for a float64 tensor of step counts, element-wise: the
    step sizes are ``lr * adaptive`` where ``rectified`` and ``lr * momentum`` elsewhere."""
    inverse_bias_correction1 = 1.0 / (1.0 - torch.pow(beta1, step))
    rho_t, r_t = rectification_tensor(step, beta2)
    rectified = rho_t > rectify_threshold
    zero = torch.zeros_like(step)
    sqrt_bias_correction2 = (1.0 - torch.pow(beta2, step)).sqrt()
    adaptive = torch.where(rectified, inverse_bias_correction1 * r_t * sqrt_bias_correction2, zero)
    momentum = torch.where(rectified, zero, inverse_bias_correction1) if degenerate_to_sgd else zero
    return rectified, adaptive, momentum


#: Eager steps read the factors of 64 consecutive steps computed at once (see ``_factor_block``).
_BLOCK = 64


@functools.lru_cache(maxsize=64)
def _factor_block(
    block: int, beta1: float, beta2: float, rectify_threshold: float, degenerate_to_sgd: bool
) -> list[tuple[bool, float, float]]:
    """:func:`_step_factors` of steps ``64 * block + 1`` to ``64 * (block + 1)``, as Python values:
    one vectorized computation serves 64 eager steps."""
    steps = torch.arange(block * _BLOCK + 1, (block + 1) * _BLOCK + 1, dtype=torch.float64)
    factors = _step_factors(steps, beta1, beta2, rectify_threshold, degenerate_to_sgd)
    return list(zip(*(f.tolist() for f in factors), strict=True))


def _eager_factors(
    step: float, shape: tuple[float, float, float, bool]
) -> tuple[bool, float, float]:
    """:func:`_step_factors` of one step count, as Python values."""
    if step.is_integer() and step >= 1:
        block, k = divmod(int(step) - 1, _BLOCK)
        return _factor_block(block, *shape)[k]
    rectified, adaptive, momentum = _step_factors(torch.tensor(step, dtype=torch.float64), *shape)
    return bool(rectified), adaptive.item(), momentum.item()


def _updates(state_steps: list[Tensor], schedule: _Schedule) -> list[_Update]:
    """Count one more step for every parameter and return how each one moves."""
    lr = schedule.lr
    if torch.compiler.is_compiling():
        # Step counts stay tensors (graph inputs): one graph serves every step.
        torch._foreach_add_(state_steps, 1)
        by_index: dict[int, _Update] = {}
        for indices in group_indices(state_steps).values():
            stacked = torch.stack([state_steps[i] for i in indices]).to(torch.float64)
            rectified, adaptive, momentum = _step_factors(stacked, *schedule.shape)
            for k, i in enumerate(indices):
                by_index[i] = _Update(rectified[k], lr * adaptive[k], lr * momentum[k])
        return [by_index[i] for i in range(len(state_steps))]
    torch._foreach_add_(state_steps, 1.0)
    steps = [s.item() for s in state_steps]
    lr_value = lr.item() if isinstance(lr, Tensor) else float(lr)
    # Parameters almost always share one step count: compute each distinct update once.
    update_of = {}
    for step in set(steps):
        is_rectified, adaptive_factor, momentum_factor = _eager_factors(step, schedule.shape)
        update_of[step] = _Update(
            is_rectified, lr_value * adaptive_factor, lr_value * momentum_factor
        )
    return [update_of[step] for step in steps]


def radam(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    state_steps: list[Tensor],
    *,
    lr: float | Tensor,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    decoupled_weight_decay: bool,
    rectify_threshold: float,
    degenerate_to_sgd: bool,
    maximize: bool,
    foreach: bool | None = None,
    fused: bool | None = None,
) -> None:
    """Functional RAdam step over lists of tensors; see :class:`RAdam` for the math.

    ``state_steps`` are float32 scalar tensors (on the CPU in eager mode); they are incremented
    here. Complex tensors are optimized as pairs of real numbers; float16 and bfloat16 tensors are
    updated in float32 and rounded once. Under ``torch.compile`` the foreach and per-tensor
    implementations trace one element-wise step whose step-dependent scalars are tensors of the
    graph; the fused one runs outside the graph, as ``torch.optim.Adam(fused=True)`` does.
    """
    fused, foreach = _implementation(params, foreach, fused)
    if any(p.is_complex() for p in params):
        params, grads, exp_avgs, exp_avg_sqs = (
            [_real(t) for t in ts] for ts in (params, grads, exp_avgs, exp_avg_sqs)
        )
    schedule = _Schedule(lr, beta1, beta2, rectify_threshold, degenerate_to_sgd)
    if fused:
        _fused_radam(
            params,
            grads,
            exp_avgs,
            exp_avg_sqs,
            state_steps,
            schedule,
            eps=eps,
            weight_decay=weight_decay,
            decoupled_weight_decay=decoupled_weight_decay,
            maximize=maximize,
        )
        return
    updates = _updates(state_steps, schedule)
    if not torch.compiler.is_compiling():
        lr = lr.item() if isinstance(lr, Tensor) else lr
    impl = _multi_tensor_radam if foreach else _single_tensor_radam
    impl(
        params,
        grads,
        exp_avgs,
        exp_avg_sqs,
        updates,
        beta1=beta1,
        beta2=beta2,
        eps=eps,
        l2_weight_decay=0.0 if decoupled_weight_decay else weight_decay,
        decoupled_decay=lr * weight_decay if decoupled_weight_decay else 0.0,
        maximize=maximize,
    )


def _is_set(value: float | Tensor) -> bool:
    """Whether a scale may be non-zero: a tensor (compiled; unknown until run) or a float != 0."""
    return isinstance(value, Tensor) or value != 0.0


def _traced_rate(update: _Update, denom: Tensor) -> Tensor:
    """What multiplies ``m`` in ``p -= rate * m`` while compiling, when the update's fields are
    tensors: both branches are computed and ``torch.where`` selects one in the graph."""
    # The scales in the dtype of the arithmetic, as the eager kernels take Python numbers in it.
    adaptive_scale, momentum_scale = (
        cast(Tensor, scale).to(denom.dtype)
        for scale in (update.adaptive_scale, update.momentum_scale)
    )
    return torch.where(cast(Tensor, update.rectified), adaptive_scale / denom, momentum_scale)


def _opmath(tensors: list[Tensor]) -> list[Tensor]:
    """float32 copies of float16/bfloat16 tensors; other tensors as they are."""
    return [t.float() if t.dtype in _LOW_PRECISION else t for t in tensors]


def _moments_and_decay(
    param: Tensor,
    grad: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    *,
    beta1: float,
    beta2: float,
    l2_weight_decay: float,
    decoupled_decay: float | Tensor,
    maximize: bool,
) -> None:
    """The part of the step that does not depend on rectification, for one tensor, in place."""
    if maximize:
        grad = -grad
    if _is_set(decoupled_decay):
        param.mul_(1.0 - decoupled_decay)
    if l2_weight_decay != 0.0:
        grad = grad.add(param, alpha=l2_weight_decay)
    exp_avg.lerp_(grad, 1.0 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)


def _single_tensor_radam(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    updates: list[_Update],
    *,
    beta1: float,
    beta2: float,
    eps: float,
    l2_weight_decay: float,
    decoupled_decay: float | Tensor,
    maximize: bool,
) -> None:
    for originals, update in zip(
        zip(params, grads, exp_avgs, exp_avg_sqs, strict=True), updates, strict=True
    ):
        param, grad, exp_avg, exp_avg_sq = _opmath(list(originals))
        _moments_and_decay(
            param,
            grad,
            exp_avg,
            exp_avg_sq,
            beta1=beta1,
            beta2=beta2,
            l2_weight_decay=l2_weight_decay,
            decoupled_decay=decoupled_decay,
            maximize=maximize,
        )
        if isinstance(update.rectified, Tensor):  # compiling: both branches, selected in-graph
            denom = exp_avg_sq.sqrt().add_(eps)
            rate = torch.where(
                update.rectified, update.adaptive_scale / denom, update.momentum_scale
            )
            param.sub_(exp_avg * rate)
        elif update.rectified:
            param.addcdiv_(
                exp_avg, exp_avg_sq.sqrt().add_(eps), value=-float(update.adaptive_scale)
            )
        elif _is_set(update.momentum_scale):
            param.add_(exp_avg, alpha=-float(update.momentum_scale))
        if param is not originals[0]:  # float16/bfloat16: round the float32 results once
            param_in, _, exp_avg_in, exp_avg_sq_in = originals
            for original, computed in zip(
                (param_in, exp_avg_in, exp_avg_sq_in), (param, exp_avg, exp_avg_sq), strict=True
            ):
                original.copy_(computed)


def _multi_tensor_radam(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    updates: list[_Update],
    *,
    beta1: float,
    beta2: float,
    eps: float,
    l2_weight_decay: float,
    decoupled_decay: float | Tensor,
    maximize: bool,
) -> None:
    for (_, dtype, _), indices in group_indices(params).items():
        originals = [[ts[i] for i in indices] for ts in (params, exp_avgs, exp_avg_sqs)]
        p, m, v = (_opmath(ts) for ts in originals)
        g: list[Tensor] | tuple[Tensor, ...] = _opmath([grads[i] for i in indices])
        low_precision = dtype in _LOW_PRECISION  # g is then a fresh float32 copy
        if maximize:
            g = torch._foreach_neg(g)
        if _is_set(decoupled_decay):
            torch._foreach_mul_(p, 1.0 - decoupled_decay)
        if l2_weight_decay != 0.0:
            if maximize or low_precision:  # g is already a fresh list of temporaries
                torch._foreach_add_(g, p, alpha=l2_weight_decay)
            else:
                g = torch._foreach_add(g, p, alpha=l2_weight_decay)
        torch._foreach_lerp_(m, g, 1.0 - beta1)
        torch._foreach_mul_(v, beta2)
        torch._foreach_addcmul_(v, g, g, 1.0 - beta2)
        del g

        ups = [updates[i] for i in indices]
        if isinstance(ups[0].rectified, Tensor):  # compiling: both branches, selected in-graph
            denom = torch._foreach_sqrt(v)
            torch._foreach_add_(denom, eps)
            rates = [_traced_rate(u, d) for u, d in zip(ups, denom, strict=True)]
            torch._foreach_mul_(rates, m)
            torch._foreach_sub_(p, rates)
            ups = []
        adaptive = [j for j, u in enumerate(ups) if u.rectified]
        if adaptive:
            denom = torch._foreach_sqrt([v[j] for j in adaptive])
            torch._foreach_add_(denom, eps)
            torch._foreach_addcdiv_(
                [p[j] for j in adaptive],
                [m[j] for j in adaptive],
                denom,
                [-float(ups[j].adaptive_scale) for j in adaptive],
            )
        momentum = [j for j, u in enumerate(ups) if not u.rectified and _is_set(u.momentum_scale)]
        if momentum:
            steps = torch._foreach_mul(
                [m[j] for j in momentum], [-float(ups[j].momentum_scale) for j in momentum]
            )
            torch._foreach_add_([p[j] for j in momentum], steps)
        if low_precision:  # one copy per tensor: DTensors (FSDP2) have no _foreach_copy_
            for originals_of_kind, computed_of_kind in zip(originals, (p, m, v), strict=True):
                for original, computed in zip(originals_of_kind, computed_of_kind, strict=True):
                    original.copy_(computed)


@torch.compiler.disable
def _fused_radam(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    state_steps: list[Tensor],
    schedule: _Schedule,
    *,
    eps: float,
    weight_decay: float,
    decoupled_weight_decay: bool,
    maximize: bool,
) -> None:
    """The fused step: torch's fused Adam kernel for the rectified parameters, foreach for the
    rest. Its kernels cannot be traced, so ``torch.compile`` runs it eagerly (a graph break), as
    it does ``torch.optim.Adam(fused=True)``'s."""
    updates = _updates(state_steps, schedule)
    lr = schedule.lr.item() if isinstance(schedule.lr, Tensor) else schedule.lr
    l2_weight_decay = 0.0 if decoupled_weight_decay else weight_decay
    decoupled_decay = lr * weight_decay if decoupled_weight_decay else 0.0
    rest: list[int] = []
    for (device, _, update), indices in group_indices(params, key=updates).items():
        if not update.rectified:
            rest.extend(indices)
            continue
        # An infinite step count makes the kernel's bias corrections 1 - beta^inf == 1 exactly;
        # RAdam's bias corrections and r_t are folded into the learning rate instead.
        no_bias_correction = torch.full((), math.inf, dtype=torch.float32, device=device)
        kernel_lr = float(update.adaptive_scale)
        if decoupled_decay != 0.0:
            # The kernel multiplies by 1 - lr' * wd'; with wd' = lr * wd / lr' that is 1 - lr * wd.
            kernel, kernel_weight_decay = torch._fused_adamw_, decoupled_decay / kernel_lr
        else:
            kernel, kernel_weight_decay = torch._fused_adam_, l2_weight_decay
        kernel(
            [params[i] for i in indices],
            [grads[i] for i in indices],
            [exp_avgs[i] for i in indices],
            [exp_avg_sqs[i] for i in indices],
            [],
            [no_bias_correction] * len(indices),
            lr=kernel_lr,
            beta1=schedule.beta1,
            beta2=schedule.beta2,
            weight_decay=kernel_weight_decay,
            eps=eps,
            amsgrad=False,
            maximize=maximize,
        )
    if rest:
        _multi_tensor_radam(
            [params[i] for i in rest],
            [grads[i] for i in rest],
            [exp_avgs[i] for i in rest],
            [exp_avg_sqs[i] for i in rest],
            [updates[i] for i in rest],
            beta1=schedule.beta1,
            beta2=schedule.beta2,
            eps=eps,
            l2_weight_decay=l2_weight_decay,
            decoupled_decay=decoupled_decay,
            maximize=maximize,
        )
