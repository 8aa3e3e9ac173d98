"""Rectified Adam (Liu et al., ICLR 2020, Algorithm 2), the optimizer class.

As in ``torch.optim``, the class validates its options and gathers each param group's tensors;
the functional :func:`radam` step does the math, in one of three implementations (fused, foreach,
per-tensor).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from typing import Any, TypeAlias

import torch
from torch import Tensor
from torch.optim.optimizer import Optimizer

from lightning_ranger.optim._radam_functional import choose_implementation, radam
from lightning_ranger.optim._radam_options import check_options, check_param_group
from lightning_ranger.optim.rectification import DEFAULT_RECTIFY_THRESHOLD

__all__ = ["RAdam", "radam", "validate_options"]

ParamsT: TypeAlias = Iterable[Tensor] | Iterable[dict[str, Any]] | Iterable[tuple[str, Tensor]]


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
        rectify_threshold: float = DEFAULT_RECTIFY_THRESHOLD,
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
        check_options(defaults)
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a param group, filled with the defaults and validated like the constructor's.

        Raises:
            TypeError: if an option of the group has the wrong type; the optimizer is unchanged.
            ValueError: if an option is outside its range; the optimizer is unchanged.

        """
        super().add_param_group(param_group)
        try:
            check_param_group(self.param_groups[-1])
        except (TypeError, ValueError):
            self.param_groups.pop()
            raise

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            # Groups from torch.optim.RAdam or older versions: fill in torch's behaviour.
            group.setdefault("rectify_threshold", DEFAULT_RECTIFY_THRESHOLD)
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
            choose_implementation(group["params"], group["foreach"], group["fused"])[0]
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


#: RAdam's options and their defaults, as its constructor declares them.
_DEFAULTS = {
    name: parameter.default
    for name, parameter in inspect.signature(RAdam.__init__).parameters.items()
    if parameter.default is not inspect.Parameter.empty
}


def validate_options(**options: object) -> None:
    """Check :class:`RAdam`'s options, given by keyword (its defaults for those not given), as the
    constructor does.

    Raises:
        TypeError: for an unknown option, or an option of the wrong type, naming it and what it
            accepts.
        ValueError: if an option is outside its accepted range, naming it and the range, or if
            ``fused`` and ``foreach`` are both ``True``.

    Example::

        >>> validate_options(lr=1e-2, betas=(0.9, 0.99))
        >>> validate_options(rectify_threshold=3.0)
        Traceback (most recent call last):
            ...
        ValueError: `rectify_threshold` must be a float >= 4 (r_t is undefined below 4), got 3.0

    """
    unknown = sorted(options.keys() - _DEFAULTS.keys())
    if unknown:
        raise TypeError(f"not options of RAdam: {unknown}; RAdam takes {sorted(_DEFAULTS)}")
    check_options({**_DEFAULTS, **options})


def _host_step(step: float | Tensor) -> Tensor:
    """The step count as torch's non-fused optimizers keep it: a float32 scalar on the CPU."""
    value = step.item() if isinstance(step, Tensor) else float(step)
    return torch.tensor(value, dtype=torch.float32)
