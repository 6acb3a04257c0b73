"""Type checks for values read from user files (YAML, JSON, config.json), shared by every parser.

`is_int` rejects bools (YAML's `true` is an int to Python); `is_finite_number` rejects bools, NaN, infinities
and integers too large to become a float.
"""

from __future__ import annotations

import math


def is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_finite_number(value: object) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int beyond float range
        return False
