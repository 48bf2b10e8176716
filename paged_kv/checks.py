"""Argument checks shared by the package: one wording for every integer it validates."""

from __future__ import annotations

import numpy as np


def is_int(value: object) -> bool:
    """True for Python and NumPy integers, False for bools (which Python counts as ints)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def require_int(name: str, value: object, minimum: int = 0) -> int:
    """`value` as an int, or `ValueError` naming `name` and the value if it is not an
    integer of at least `minimum`."""
    if not is_int(value) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)
