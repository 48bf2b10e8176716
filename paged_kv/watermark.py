"""Memory-pressure levels from low and high watermarks on GPU-pool usage."""

from __future__ import annotations

from collections.abc import Callable
from enum import IntEnum


class PressureLevel(IntEnum):
    """How full the GPU pool is, ordered so that a higher value means more pressure."""

    #: usage below the low watermark
    NORMAL = 0
    #: usage at or above the low watermark, below the high one
    ELEVATED = 1
    #: usage at or above the high watermark: admitting more work risks preemption
    CRITICAL = 2


def pressure_level(usage: float, low: float, high: float) -> PressureLevel:
    """The level for a pool `usage` fraction given the two watermarks (low <= high)."""
    if usage >= high:
        return PressureLevel.CRITICAL
    if usage >= low:
        return PressureLevel.ELEVATED
    return PressureLevel.NORMAL


#: A pressure callback receives (old level, new level, usage fraction).
PressureCallback = Callable[[PressureLevel, PressureLevel, float], None]
