"""Checks of the numbers strategies and delays are built with: refused at construction.

A NaN delay or a fractional attempts count passed the range checks (every comparison with NaN is
False, and 2.5 lies between 1 and 100) and failed inside a call, after its first attempt was sent:
``pause(nan)`` raised ValueError, ``range(2.5)`` TypeError.
"""

import math
import numbers


def finite(name: str, value: object) -> float:
    """``value`` as a float: TypeError unless a real number (not a bool), ValueError unless finite."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, not {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, not {value!r}")
    return float(value)


def whole(name: str, value: object) -> int:
    """``value`` as an int: TypeError unless a whole number (an int, not a bool nor 2.0)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be a whole number (an int), not {value!r}")
    return int(value)
