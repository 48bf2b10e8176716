"""Memory pressure: levels from low and high watermarks on GPU-pool usage, and the
monitor that tells callbacks when the level changes."""

from __future__ import annotations

from collections.abc import Callable
from enum import IntEnum

from paged_kv.core.block_allocator import BlockAllocator


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


class PressureMonitor:
    """Watches one allocator's usage against two watermarks and calls back on changes.

    The manager calls `update` after every operation that can change usage. With no
    callback registered that costs one test: the level is recomputed when the first
    callback registers.
    """

    def __init__(self, allocator: BlockAllocator, low: float, high: float) -> None:
        self._allocator = allocator
        self._low = low
        self._high = high
        self._callbacks: list[PressureCallback] = []
        self._level = PressureLevel.NORMAL

    @property
    def level(self) -> PressureLevel:
        """The level now."""
        return pressure_level(self._allocator.usage, self._low, self._high)

    def subscribe(self, callback: PressureCallback) -> PressureCallback:
        """Call ``callback(old, new, usage)`` on each later level change; returns it."""
        if not callable(callback):
            raise ValueError(f"callback must be callable, got {callback!r}")
        if not self._callbacks:
            self._level = self.level
        self._callbacks.append(callback)
        return callback

    def unsubscribe(self, callback: PressureCallback) -> None:
        """Stop calling `callback` (a `ValueError` if it was never registered)."""
        if callback not in self._callbacks:
            raise ValueError(f"{callback!r} is not a registered pressure callback")
        self._callbacks.remove(callback)

    def update(self) -> None:
        """Recompute the level; call every callback if it changed."""
        if not self._callbacks:
            return
        usage = self._allocator.usage
        level = pressure_level(usage, self._low, self._high)
        if level != self._level:
            old, self._level = self._level, level
            for callback in list(self._callbacks):
                callback(old, level, usage)
