"""Which device runs the kernels: a real NVIDIA GPU or Numba's CUDA simulator.

Numba reads ``NUMBA_ENABLE_CUDASIM`` once, when it is first imported, so the choice is
made here, at import of `paged_kv`, before anything imports numba:

* ``PAGED_KV_DEVICE=gpu`` or ``sim`` forces the choice;
* otherwise a real GPU is used when the CUDA driver (``libcuda``) loads and reports at
  least one device, and the simulator is used when it does not.

This module never imports numba itself, so probing is cheap and cannot fail. If numba
was imported before `paged_kv`, its setting stands and `device_kind()` reports it.
"""

from __future__ import annotations

import ctypes
import os
import sys
import warnings

_ENV_OVERRIDE = "PAGED_KV_DEVICE"
_SIM_ENV = "NUMBA_ENABLE_CUDASIM"
_CHOICES = ("gpu", "sim")


def _driver_reports_a_device() -> bool:
    """True when libcuda loads, initialises and counts at least one device."""
    for name in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        try:
            if lib.cuInit(0) != 0:
                return False
            count = ctypes.c_int(0)
            if lib.cuDeviceGetCount(ctypes.byref(count)) != 0:
                return False
            return count.value > 0
        except AttributeError:
            return False
    return False


def _decide() -> str:
    override = os.environ.get(_ENV_OVERRIDE, "").strip().lower()
    if override and override not in _CHOICES:
        raise ValueError(f"{_ENV_OVERRIDE} must be one of {_CHOICES}, got {override!r}")
    numba_loaded = "numba" in sys.modules
    if numba_loaded:
        # Too late to choose: report what numba already decided.
        from_env = os.environ.get(_SIM_ENV, "0") not in ("", "0")
        kind = "sim" if from_env else "gpu"
        if override and override != kind:
            warnings.warn(
                f"{_ENV_OVERRIDE}={override} ignored: numba was imported before paged_kv "
                f"with {_SIM_ENV}={'1' if from_env else '0'}",
                RuntimeWarning,
                stacklevel=3,
            )
        return kind
    if override:
        kind = override
    elif os.environ.get(_SIM_ENV, "").strip() not in ("", "0"):
        kind = "sim"  # the user asked numba for the simulator directly
    else:
        kind = "gpu" if _driver_reports_a_device() else "sim"
    os.environ[_SIM_ENV] = "1" if kind == "sim" else "0"
    return kind


_KIND = _decide()


def device_kind() -> str:
    """``"gpu"`` when kernels run on a real NVIDIA GPU, ``"sim"`` under the CUDA simulator."""
    return _KIND


def is_simulator() -> bool:
    """True when kernels run in Numba's CUDA simulator."""
    return _KIND == "sim"


def device_name() -> str:
    """The GPU's name (e.g. ``"NVIDIA H100 80GB HBM3"``), or ``"CUDA simulator"``."""
    if _KIND == "sim":
        return "CUDA simulator"
    from numba import cuda  # noqa: PLC0415 - imported only once the choice is made

    name = cuda.get_current_device().name
    return name.decode() if isinstance(name, bytes) else str(name)
