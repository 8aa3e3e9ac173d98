"""The variance rectification of RAdam (Liu et al., 2020, eq. 5-6 and Algorithm 2).

This module is the only place where rho_inf, rho_t and r_t are written down; the optimizer and the
monitoring callback both call it. :func:`rectification_tensor` is the formula, on tensors of step
counts (so that a compiled optimizer step keeps them in its graph); :func:`rectification` is the
same for one Python number.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lightning_ranger._validation import check_real

__all__ = [
    "DEFAULT_RECTIFY_THRESHOLD",
    "MIN_RECTIFY_THRESHOLD",
    "rectification",
    "rectification_tensor",
    "rho_inf",
]

#: Below this length of the approximated SMA, r_t is undefined (its radicand changes sign).
MIN_RECTIFY_THRESHOLD = 4.0

#: RAdam's default ``rectify_threshold``: rectify once the approximated SMA is longer than 5, as the
#: authors' code and torch's RAdam do (the paper's text says 4); also the threshold of a param group
#: loaded from ``torch.optim.RAdam``, which has none.
DEFAULT_RECTIFY_THRESHOLD = 5.0


def rho_inf(beta2: float) -> float:
    """The maximum length of the approximated simple moving average, ``2 / (1 - beta2) - 1``.

    Args:
        beta2: the decay rate of the second moment, in ``[0, 1)``.

    Raises:
        TypeError: if ``beta2`` is not a real number.
        ValueError: if ``beta2`` is outside ``[0, 1)``.

    Example::

        >>> round(rho_inf(0.999), 9)
        1999.0

    """
    return 2.0 / (1.0 - check_real("beta2", beta2, 0.0, 1.0, high_open=True)) - 1.0


def rectification(step: float, beta2: float) -> tuple[float, float]:
    """Length of the approximated SMA and the variance rectification term at optimizer step ``t``.

    .. math::

        \\rho_t = \\rho_\\infty - \\frac{2 t \\beta_2^t}{1 - \\beta_2^t}, \\qquad
        r_t = \\sqrt{\\frac{(\\rho_t - 4)(\\rho_t - 2)\\rho_\\infty}
                         {(\\rho_\\infty - 4)(\\rho_\\infty - 2)\\rho_t}}

    ``rho_t`` grows with ``t`` towards ``rho_inf`` and ``r_t`` towards 1. ``r_t`` is only defined
    while ``rho_t > 4``; it is returned as ``0.0`` otherwise (RAdam then takes an un-adapted step).

    Args:
        step: the 1-based optimizer step ``t`` (the optimizer state's ``step``), ``>= 1``.
        beta2: the decay rate of the second moment, in ``[0, 1)``.

    Returns:
        ``(rho_t, r_t)`` as Python floats, computed in float64.

    Raises:
        TypeError: if an argument is not a real number.
        ValueError: if ``step < 1`` or ``beta2`` is outside ``[0, 1)``.

    Example::

        >>> rho_t, r_t = rectification(4, 0.999)
        >>> round(rho_t, 3), r_t
        (3.997, 0.0)
        >>> rho_t, r_t = rectification(6, 0.999)
        >>> round(rho_t, 3), round(r_t, 4)
        (5.994, 0.0258)

    """
    step = check_real("step", step, 1.0, meaning="steps count from 1")
    rho_t, r_t = rectification_tensor(torch.tensor(step, dtype=torch.float64), beta2)
    return rho_t.item(), r_t.item()


def rectification_tensor(step: Tensor, beta2: float) -> tuple[Tensor, Tensor]:
    """:func:`rectification` on a tensor of step counts, element-wise, without leaving the tensor.

    No value is read back to Python, so the result may depend on step counts that live in a
    compiled graph. ``step`` is expected in float64 for full precision (float32 works, with float32
    rounding); the results have its dtype and device.

    Args:
        step: the 1-based optimizer steps ``t``, a floating-point tensor of any shape, ``>= 1``.
        beta2: the decay rate of the second moment, in ``[0, 1)``.

    Returns:
        ``(rho_t, r_t)``, tensors like ``step``; ``r_t`` is ``0`` where ``rho_t <= 4``.

    Raises:
        TypeError: if ``beta2`` is not a real number.
        ValueError: if ``beta2`` is outside ``[0, 1)``.

    Example::

        >>> import torch
        >>> rho_t, r_t = rectification_tensor(torch.tensor([4.0, 6.0], dtype=torch.float64), 0.999)
        >>> [round(x, 3) for x in rho_t.tolist()], [round(x, 4) for x in r_t.tolist()]
        ([3.997, 5.994], [0.0, 0.0258])

    """
    r_inf = rho_inf(beta2)
    # 1 - beta2^t through expm1: the subtraction below cancels ~rho_inf, so keep this term exact.
    if beta2 > 0.0:
        beta2_t = torch.pow(beta2, step)
        one_minus_beta2_t = -torch.expm1(step * math.log(beta2))
    else:
        beta2_t, one_minus_beta2_t = torch.zeros_like(step), torch.ones_like(step)
    rho_t = r_inf - 2.0 * step * beta2_t / one_minus_beta2_t
    # Where rho_t <= 4 the radicand may be negative (or its denominator zero): r_t is 0 there.
    radicand = (rho_t - 4.0) * (rho_t - 2.0) * r_inf / ((r_inf - 4.0) * (r_inf - 2.0) * rho_t)
    defined = rho_t > MIN_RECTIFY_THRESHOLD
    r_t = torch.where(defined, radicand.clamp(min=0.0).sqrt(), torch.zeros_like(rho_t))
    return rho_t, r_t
