"""Argument checks shared by the public constructors: a wrong type or range names the parameter."""

from __future__ import annotations

from numbers import Integral, Real
from typing import Any


def require_integer(name: str, value: Any, minimum: int, optional: bool = False) -> None:
    """Refuse a non-integer (``"abc"``, ``1.7``, ``True``) or too small ``value`` of parameter ``name``."""
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def require_numbers(**values: Any) -> None:
    """Refuse any of ``values`` that is not a real number (``True`` and strings included), naming it."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, Real):
            raise TypeError(f"{name} must be a number, got {value!r} ({type(value).__name__})")
