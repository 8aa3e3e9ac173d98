"""The argument checks of every public constructor, with one rule: a value of the wrong type raises
``TypeError``, a value of the right type outside its range raises ``ValueError``, and both name the
argument, what it accepts and what it got. No Lightning imports."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, TypeVar, overload

from lightning_ranger._utils import is_real

__all__ = ["check_bool", "check_choice", "check_int", "check_real"]

_T = TypeVar("_T")


def _with(accepted: str, meaning: str | None, optional: bool) -> str:
    if meaning:
        accepted += f" ({meaning})"
    return accepted + (" or None" if optional else "")


@overload
def check_int(
    name: str,
    value: object,
    *,
    minimum: int = ...,
    meaning: str | None = ...,
    optional: Literal[False] = ...,
) -> int: ...
@overload
def check_int(
    name: str, value: object, *, minimum: int = ..., meaning: str | None = ..., optional: bool
) -> int | None: ...
def check_int(
    name: str,
    value: object,
    *,
    minimum: int = 1,
    meaning: str | None = None,
    optional: bool = False,
) -> int | None:
    """``value`` if it is an ``int`` (not a ``bool``) of at least ``minimum`` (or ``None`` when
    ``optional``).

    Raises:
        TypeError: if ``value`` is not an ``int``.
        ValueError: if ``value`` is below ``minimum``.

    Example::

        >>> check_int("k", 6)
        6
        >>> check_int("k", 0)
        Traceback (most recent call last):
            ...
        ValueError: `k` must be a positive int, got 0

    """
    if optional and value is None:
        return None
    bound = "a positive int" if minimum == 1 else f"an int >= {minimum}"
    accepted = _with(bound, meaning, optional)
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"`{name}` must be {accepted}, got {value!r}")
    if value < minimum:
        raise ValueError(f"`{name}` must be {accepted}, got {value}")
    return value


def _interval(low: float, high: float, low_open: bool, high_open: bool) -> str:
    if math.isinf(high):
        return f"> {low:g}" if low_open else f">= {low:g}"
    return f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"


def check_real(
    name: str,
    value: object,
    low: float = -math.inf,
    high: float = math.inf,
    *,
    low_open: bool = False,
    high_open: bool = False,
    meaning: str | None = None,
) -> float:
    """``value`` as a ``float`` if it is a real number (not a ``bool``) in the interval from
    ``low`` to ``high``, each end closed unless ``low_open`` / ``high_open``. NaN is refused.

    Raises:
        TypeError: if ``value`` is not a real number.
        ValueError: if ``value`` is outside the interval.

    Example::

        >>> check_real("alpha", 0.5, 0.0, 1.0, low_open=True)
        0.5
        >>> check_real("alpha", 0, 0.0, 1.0, low_open=True)
        Traceback (most recent call last):
            ...
        ValueError: `alpha` must be a float in (0, 1], got 0

    """
    accepted = _with(f"a float {_interval(low, high, low_open, high_open)}", meaning, False)
    if not is_real(value):
        raise TypeError(f"`{name}` must be {accepted}, got {value!r}")
    above = value > low if low_open else value >= low
    below = value < high if high_open else value <= high
    if not (above and below):  # NaN fails both
        raise ValueError(f"`{name}` must be {accepted}, got {value}")
    return float(value)


@overload
def check_bool(name: str, value: object, *, optional: Literal[False] = ...) -> bool: ...
@overload
def check_bool(name: str, value: object, *, optional: bool) -> bool | None: ...
def check_bool(name: str, value: object, *, optional: bool = False) -> bool | None:
    """``value`` if it is a ``bool`` (or ``None`` when ``optional``).

    Raises:
        TypeError: otherwise.

    """
    if isinstance(value, bool) or (optional and value is None):
        return value
    raise TypeError(f"`{name}` must be {_with('a bool', None, optional)}, got {value!r}")


def check_choice(name: str, value: object, choices: Sequence[_T]) -> _T:
    """``value`` if it is one of ``choices``.

    Raises:
        TypeError: if ``value`` is not of the choices' type (``str`` for names).
        ValueError: if it is of their type but not one of them.

    Example::

        >>> check_choice("final_weights", "fast", ("slow", "fast"))
        'fast'
        >>> check_choice("final_weights", "fats", ("slow", "fast"))
        Traceback (most recent call last):
            ...
        ValueError: `final_weights` must be one of 'slow', 'fast', got 'fats'

    """
    accepted = ", ".join(repr(c) for c in choices)
    if not isinstance(value, tuple(type(c) for c in choices)):
        raise TypeError(f"`{name}` must be one of {accepted}, got {value!r}")
    for choice in choices:
        if value == choice:
            return choice
    raise ValueError(f"`{name}` must be one of {accepted}, got {value!r}")
