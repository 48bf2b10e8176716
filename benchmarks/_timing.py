"""Timing shared by the GPU benchmarks (`kernels.py`, `attention.py`): CUDA events."""

from __future__ import annotations

import statistics
from collections.abc import Callable

from paged_kv.gpu import device


def median_ms(fn: Callable[[], object], warmup: int, repeats: int) -> float:
    """Median milliseconds of `fn` between two CUDA events on the default stream, after
    `warmup` calls (the simulator's events measure nothing: 0 or less there)."""
    cuda = device.cuda_api()
    for _ in range(warmup):
        fn()
    cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, stop = cuda.event(), cuda.event()  # timing events by default
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
    return statistics.median(times)


def gbps(num_bytes: int, ms: float | None) -> float | None:
    """GB/s (1 GB = 1e9 B), or None when the time is not measurable (None, or <= 0 as
    the simulator reports)."""
    return num_bytes / (ms * 1e-3) / 1e9 if ms is not None and ms > 0 else None
