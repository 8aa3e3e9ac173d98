"""RAdam's three implementations of one step over lists of tensors.

- *per-tensor*: a plain loop, for tensor types and devices the others do not take.
- *multi-tensor*: ``torch._foreach_*`` operations, per device and dtype.
- *fused*: torch's fused Adam kernel, one pass over ``p, g, m, v``. In the rectified phase the
  RAdam update ``lr * r_t * m_hat * sqrt(1 - beta2^t) / (sqrt(v_t) + eps)`` is exactly Adam's
  update without bias correction, ``lr' * m_t / (sqrt(v_t) + eps)``, with
  ``lr' = lr * r_t * sqrt(1 - beta2^t) / (1 - beta1^t)``; the kernel is handed an infinite step
  count so that its own bias corrections are exactly 1. The few un-rectified first steps use the
  multi-tensor implementation.

Every path computes the update of float16 and bfloat16 tensors in float32 and rounds it once, as
torch's fused kernels do, so that the three agree and ``eps`` never underflows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple, cast

import torch
from torch import Tensor

from lightning_ranger._utils import LOW_PRECISION_DTYPES, as_real, group_indices
from lightning_ranger.optim._radam_options import StepOptions
from lightning_ranger.optim._radam_step_sizes import StepSize, increment_steps

__all__ = ["RAdamTensors", "fused_radam", "multi_tensor_radam", "single_tensor_radam"]


class RAdamTensors(NamedTuple):
    """The tensors that one step reads and updates, aligned: one entry per parameter."""

    params: list[Tensor]
    grads: list[Tensor]
    exp_avgs: list[Tensor]
    exp_avg_sqs: list[Tensor]

    def select(self, indices: Sequence[int]) -> RAdamTensors:
        """The entries at ``indices``."""
        return RAdamTensors(*([tensors[i] for i in indices] for tensors in self))

    def as_real(self) -> RAdamTensors:
        """Complex tensors viewed as pairs of reals, which the update treats as two numbers."""
        return RAdamTensors(*([as_real(t) for t in tensors] for tensors in self))


def _is_set(value: float | Tensor) -> bool:
    """Whether a scale may be non-zero: a tensor (compiled; unknown until run) or a float != 0."""
    return isinstance(value, Tensor) or value != 0.0


def _opmath(tensors: list[Tensor]) -> list[Tensor]:
    """float32 copies of float16/bfloat16 tensors; other tensors as they are."""
    return [t.float() if t.dtype in LOW_PRECISION_DTYPES else t for t in tensors]


def _round_into(originals: Sequence[Tensor], computed: Sequence[Tensor]) -> None:
    """Round float32 results into their 16-bit originals, once each (a no-op for tensors that were
    updated in place). One copy per tensor, because DTensors (FSDP2) have no ``_foreach_copy_``."""
    for original, result in zip(originals, computed, strict=True):
        if result is not original:
            original.copy_(result)


def _traced_rate(size: StepSize, denom: Tensor) -> Tensor:
    """What multiplies ``m`` in ``p -= rate * m`` while compiling, when the step size's fields are
    tensors: both branches are computed and ``torch.where`` selects one in the graph."""
    # The scales in the dtype of the arithmetic, as the eager kernels take Python numbers in it.
    adaptive_scale, momentum_scale = (
        cast(Tensor, scale).to(denom.dtype) for scale in (size.adaptive_scale, size.momentum_scale)
    )
    return torch.where(cast(Tensor, size.rectified), adaptive_scale / denom, momentum_scale)


def single_tensor_radam(tensors: RAdamTensors, sizes: list[StepSize], options: StepOptions) -> None:
    """The per-tensor implementation: one tensor at a time, with plain tensor operations."""
    decoupled_decay, l2_weight_decay = options.decoupled_decay(), options.l2_weight_decay
    for originals, size in zip(zip(*tensors, strict=True), sizes, strict=True):
        param, grad, exp_avg, exp_avg_sq = _opmath(list(originals))
        if options.maximize:
            grad = -grad
        if _is_set(decoupled_decay):
            param.mul_(1.0 - decoupled_decay)
        if l2_weight_decay != 0.0:
            grad = grad.add(param, alpha=l2_weight_decay)
        exp_avg.lerp_(grad, 1.0 - options.beta1)
        exp_avg_sq.mul_(options.beta2).addcmul_(grad, grad, value=1.0 - options.beta2)
        if isinstance(size.rectified, Tensor):
            param.sub_(exp_avg * _traced_rate(size, exp_avg_sq.sqrt().add_(options.eps)))
        elif size.rectified:
            denom = exp_avg_sq.sqrt().add_(options.eps)
            param.addcdiv_(exp_avg, denom, value=-float(size.adaptive_scale))
        elif _is_set(size.momentum_scale):
            param.add_(exp_avg, alpha=-float(size.momentum_scale))
        if param is not originals[0]:
            original_param, _, original_exp_avg, original_exp_avg_sq = originals
            _round_into(
                (original_param, original_exp_avg, original_exp_avg_sq),
                (param, exp_avg, exp_avg_sq),
            )


def _foreach_apply(
    p: list[Tensor], m: list[Tensor], v: list[Tensor], sizes: list[StepSize], eps: float
) -> None:
    """``p -= step size * ...`` for tensors of one device and dtype, with up-to-date moments."""
    if isinstance(sizes[0].rectified, Tensor):
        denom = torch._foreach_sqrt(v)
        torch._foreach_add_(denom, eps)
        rates = [_traced_rate(size, d) for size, d in zip(sizes, denom, strict=True)]
        torch._foreach_mul_(rates, m)
        torch._foreach_sub_(p, rates)
        return
    adaptive = [j for j, size in enumerate(sizes) if size.rectified]
    if adaptive:
        denom = torch._foreach_sqrt([v[j] for j in adaptive])
        torch._foreach_add_(denom, eps)
        torch._foreach_addcdiv_(
            [p[j] for j in adaptive],
            [m[j] for j in adaptive],
            denom,
            [-float(sizes[j].adaptive_scale) for j in adaptive],
        )
    momentum = [
        j for j, size in enumerate(sizes) if not size.rectified and _is_set(size.momentum_scale)
    ]
    if momentum:
        steps = torch._foreach_mul(
            [m[j] for j in momentum], [-float(sizes[j].momentum_scale) for j in momentum]
        )
        torch._foreach_add_([p[j] for j in momentum], steps)


def multi_tensor_radam(tensors: RAdamTensors, sizes: list[StepSize], options: StepOptions) -> None:
    """The multi-tensor implementation: ``torch._foreach_*`` operations per device and dtype."""
    decoupled_decay = options.decoupled_decay()
    for (_, dtype, _), indices in group_indices(tensors.params).items():
        originals = tensors.select(indices)
        p, g, m, v = (_opmath(kind) for kind in originals)
        grads: list[Tensor] | tuple[Tensor, ...] = g
        # In 16-bit, g is a fresh float32 copy; with maximize, a fresh negated list.
        fresh_grads = dtype in LOW_PRECISION_DTYPES or options.maximize
        if options.maximize:
            grads = torch._foreach_neg(grads)
        if _is_set(decoupled_decay):
            torch._foreach_mul_(p, 1.0 - decoupled_decay)
        if options.l2_weight_decay != 0.0:
            if fresh_grads:
                torch._foreach_add_(grads, p, alpha=options.l2_weight_decay)
            else:
                grads = torch._foreach_add(grads, p, alpha=options.l2_weight_decay)
        torch._foreach_lerp_(m, grads, 1.0 - options.beta1)
        torch._foreach_mul_(v, options.beta2)
        torch._foreach_addcmul_(v, grads, grads, 1.0 - options.beta2)
        del g, grads
        _foreach_apply(p, m, v, [sizes[i] for i in indices], options.eps)
        if dtype in LOW_PRECISION_DTYPES:
            _round_into(originals.params, p)
            _round_into(originals.exp_avgs, m)
            _round_into(originals.exp_avg_sqs, v)


@torch.compiler.disable
def fused_radam(tensors: RAdamTensors, state_steps: list[Tensor], options: StepOptions) -> None:
    """The fused implementation: torch's fused Adam kernel for the rectified parameters, the
    multi-tensor one for the rest. Its kernels cannot be traced, so ``torch.compile`` runs it
    eagerly (a graph break), as it does ``torch.optim.Adam(fused=True)``'s."""
    sizes = increment_steps(state_steps, options)
    decoupled_decay = float(options.decoupled_decay())
    rest: list[int] = []
    for (device, _, size), indices in group_indices(tensors.params, key=sizes).items():
        if not size.rectified:
            rest.extend(indices)
            continue
        # An infinite step count makes the kernel's bias corrections 1 - beta^inf == 1 exactly;
        # RAdam's bias corrections and r_t are folded into the learning rate instead.
        no_bias_correction = torch.full((), math.inf, dtype=torch.float32, device=device)
        kernel_lr = float(size.adaptive_scale)
        if decoupled_decay != 0.0:
            # The kernel multiplies by 1 - lr' * wd'; with wd' = lr * wd / lr' that is 1 - lr * wd.
            kernel, kernel_weight_decay = torch._fused_adamw_, decoupled_decay / kernel_lr
        else:
            kernel, kernel_weight_decay = torch._fused_adam_, options.l2_weight_decay
        kernel(
            *tensors.select(indices),
            [],
            [no_bias_correction] * len(indices),
            lr=kernel_lr,
            beta1=options.beta1,
            beta2=options.beta2,
            weight_decay=kernel_weight_decay,
            eps=options.eps,
            amsgrad=False,
            maximize=options.maximize,
        )
    if rest:
        multi_tensor_radam(tensors.select(rest), [sizes[i] for i in rest], options)
