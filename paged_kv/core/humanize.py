"""Sizes and durations as a person reads them: ``50.0 MiB``, ``about 14 min``."""

from __future__ import annotations

_BYTE_UNITS = ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB")


def format_bytes(num_bytes: float) -> str:
    """`num_bytes` in the largest binary unit that keeps the number at least 1.

    >>> format_bytes(512), format_bytes(51200 * 1024), format_bytes(12 * 2**30)
    ('512 bytes', '50.0 MiB', '12.0 GiB')
    """
    value = float(num_bytes)
    unit = 0
    while abs(value) >= 1024 and unit < len(_BYTE_UNITS) - 1:
        value /= 1024
        unit += 1
    return f"{int(value)} bytes" if unit == 0 else f"{value:.1f} {_BYTE_UNITS[unit]}"


def format_seconds(seconds: float) -> str:
    """A duration rounded for an estimate: ``0.3 s``, ``45 s``, ``14 min``, ``2.5 h``.

    >>> format_seconds(0.25), format_seconds(45.2), format_seconds(845), format_seconds(9000)
    ('0.2 s', '45 s', '14 min', '2.5 h')
    """
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
