"""Memory pressure: levels from low and high watermarks on GPU-pool usage, and the
monitor that tells callbacks when the level changes.

**Callbacks cannot break the cache.** The operation that moved the level has completed
before any callback runs, and it returns its result (a new sequence's id) whatever the
callbacks do:

* every callback hears every level change, in order, even when an earlier callback
  raised: a callback's exception is logged (logger ``paged_kv.core.pressure``, level
  ERROR, with its traceback, as asyncio logs an exception in a callback) and the next
  callback is called;
* a callback that changes the cache (frees a sequence to relieve pressure) moves the
  level again: that change is heard by every callback after the one being delivered,
  never interleaved with it.

An exception that is not an `Exception` (``KeyboardInterrupt``, ``SystemExit``) is not
caught: it ends the delivery and reaches the caller, the operation still done; changes
whose delivery had not begun are delivered at the next update.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from enum import IntEnum

from paged_kv.core.block_allocator import BlockAllocator

_log = logging.getLogger(__name__)


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
    callback registers. Delivery follows the rules in this module's docstring.
    """

    def __init__(self, allocator: BlockAllocator, low: float, high: float) -> None:
        self._allocator = allocator
        self._low = low
        self._high = high
        self._callbacks: list[PressureCallback] = []
        self._level = PressureLevel.NORMAL
        # level changes not yet heard by every callback: (old, new, usage), oldest first
        self._pending: deque[tuple[PressureLevel, PressureLevel, float]] = deque()
        self._delivering = False  # a callback is running: later changes queue behind it

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
        """Recompute the level; if it changed, every callback hears the change.

        Never raises what a callback raises (it is logged); see the module docstring.
        """
        if not self._callbacks:
            return
        usage = self._allocator.usage
        level = pressure_level(usage, self._low, self._high)
        if level != self._level:
            self._pending.append((self._level, level, usage))
            self._level = level
        if self._delivering or not self._pending:
            return
        self._delivering = True
        try:
            while self._pending:
                old, new, at = self._pending.popleft()
                for callback in list(self._callbacks):
                    try:
                        callback(old, new, at)
                    except Exception:
                        _log.exception("pressure callback %r raised on %s -> %s (usage %.3f); "
                                       "the operation stands; the other callbacks are "
                                       "still called", callback, old.name, new.name, at)
        finally:
            self._delivering = False

