"""The functional RAdam step: the math of :class:`~lightning_ranger.optim.radam.RAdam` as a plain
function over lists of tensors, which chooses one of the three implementations as ``torch.optim``
does (see ``_radam_kernels``)."""

from __future__ import annotations

from torch import Tensor
from torch.optim.optimizer import _default_to_fused_or_foreach

from lightning_ranger.optim._radam_kernels import (
    RAdamTensors,
    fused_radam,
    multi_tensor_radam,
    single_tensor_radam,
)
from lightning_ranger.optim._radam_options import StepOptions
from lightning_ranger.optim._radam_step_sizes import increment_steps

__all__ = ["choose_implementation", "radam"]


def choose_implementation(
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
    """Functional RAdam step over lists of tensors; see :class:`~lightning_ranger.optim.radam.RAdam`
    for the math and the options.

    ``state_steps`` are float32 scalar tensors (on the CPU in eager mode); they are incremented
    here. Complex tensors are optimized as pairs of real numbers; float16 and bfloat16 tensors are
    updated in float32 and rounded once. In eager mode the step-dependent scalars (``r_t``, the
    bias corrections, the step sizes) are Python numbers. Under ``torch.compile`` the foreach and
    per-tensor implementations trace one element-wise step whose step-dependent scalars are
    tensors of the graph; the fused one runs outside the graph, as ``torch.optim.Adam(fused=True)``
    does.

    Example::

        >>> import torch
        >>> from lightning_ranger.optim.rectification import DEFAULT_RECTIFY_THRESHOLD
        >>> param, grad = torch.ones(2), torch.full((2,), 0.5)
        >>> exp_avg, exp_avg_sq = torch.zeros(2), torch.zeros(2)
        >>> step = torch.tensor(0.0)
        >>> radam([param], [grad], [exp_avg], [exp_avg_sq], [step], lr=0.1, beta1=0.9,
        ...       beta2=0.999, eps=1e-8, weight_decay=0.0, decoupled_weight_decay=False,
        ...       rectify_threshold=DEFAULT_RECTIFY_THRESHOLD, degenerate_to_sgd=True,
        ...       maximize=False)
        >>> step.item(), param.tolist()  # step 1 is not rectified: an SGD step with momentum
        (1.0, [0.949999988079071, 0.949999988079071])

    """
    fused, foreach = choose_implementation(params, foreach, fused)
    tensors = RAdamTensors(params, grads, exp_avgs, exp_avg_sqs)
    if any(p.is_complex() for p in params):
        tensors = tensors.as_real()
    options = StepOptions(
        lr=lr,
        beta1=beta1,
        beta2=beta2,
        eps=eps,
        weight_decay=weight_decay,
        decoupled_weight_decay=decoupled_weight_decay,
        rectify_threshold=rectify_threshold,
        degenerate_to_sgd=degenerate_to_sgd,
        maximize=maximize,
    )
    if fused:
        fused_radam(tensors, state_steps, options)
        return
    sizes = increment_steps(state_steps, options)
    implementation = multi_tensor_radam if foreach else single_tensor_radam
    implementation(tensors, sizes, options)
