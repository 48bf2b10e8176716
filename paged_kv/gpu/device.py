"""Which device runs the kernels: a real NVIDIA GPU or Numba's CUDA simulator.

Importing `paged_kv` chooses nothing, loads no driver and writes no environment
variable. The choice is made once per process, at first use: the first call of
`device_kind`, `cuda_api` or `jit` (importing `paged_kv.gpu.kernels` or `paged_kv.gpu.storage`
decorates the kernels, which is such a call):

* ``PAGED_KV_DEVICE=gpu`` or ``sim`` forces it (any other value is a one-line
  `DeviceChoiceError`);
* otherwise ``NUMBA_ENABLE_CUDASIM=1`` means the simulator;
* otherwise a real GPU is used when the CUDA driver (``libcuda``) loads and reports at
  least one device, and the simulator is used when it does not.

The kernels and storage take their ``cuda`` module from `cuda_api`: ``numba.cuda`` on a
GPU, ``numba.cuda.simulator`` (explicitly, whatever ``numba.cuda`` was imported as) in
the simulator. So ``from numba import cuda; import paged_kv`` works on a machine without
a GPU: the user's ``numba.cuda`` stays what it was, and paged_kv runs its kernels in the
simulator all the same. Kernel sources still write ``cuda.grid(1)`` with ``from numba
import cuda``: the simulator substitutes its own module for that name while it runs a
kernel, and on a GPU the name is the real module.

In the simulator, paged_kv also makes numba's static shared arrays thread-safe (the first
`cuda_api` call does it, once; `_serialise_simulator_shared_arrays`): the simulator runs
each CUDA thread as a Python thread and creates a block's ``cuda.shared.array`` on first
use with an unlocked check-then-insert, so when the scheduler switches threads inside
that window (a loaded machine), two threads each make their own "shared" array and stop
seeing each other's writes. The paged-attention kernel then returned one V row instead
of the softmax average, once, under load.

The one combination that cannot work is a GPU choice after ``numba.cuda`` was imported
in simulator mode (``NUMBA_ENABLE_CUDASIM=1``): numba then has no real GPU API in this
process, and `cuda_api` says so in one line.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
from types import ModuleType
from typing import Any

import numpy as np

ENV_OVERRIDE = "PAGED_KV_DEVICE"
_SIM_ENV = "NUMBA_ENABLE_CUDASIM"
_CHOICES = ("gpu", "sim")

#: The process's choice, made once by `device_kind` ("gpu" or "sim").
_kind: str | None = None


class DeviceChoiceError(RuntimeError):
    """The device cannot be chosen as configured; the message says what to do."""


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


def gpu_present() -> bool:
    """True when the CUDA driver loads and reports at least one device (numba not loaded).

    Lets a caller refuse ``PAGED_KV_DEVICE=gpu`` up front on a machine without a GPU.
    """
    return _driver_reports_a_device()


def _sim_env_set() -> bool:
    return os.environ.get(_SIM_ENV, "").strip() not in ("", "0")


def _decide() -> str:
    override = os.environ.get(ENV_OVERRIDE, "").strip().lower()
    if override:
        if override not in _CHOICES:
            raise DeviceChoiceError(
                f"{ENV_OVERRIDE} must be one of {_CHOICES}, got {override!r}: set it to "
                f"'gpu', 'sim', or unset it to choose by the driver"
            )
        return override
    if _sim_env_set():
        return "sim"  # the user asked numba for the simulator directly
    return "gpu" if _driver_reports_a_device() else "sim"


def device_kind() -> str:
    """``"gpu"`` when kernels run on a real NVIDIA GPU, ``"sim"`` under the CUDA simulator.

    The first call makes the choice (see the module docstring); later calls return it.
    """
    global _kind
    if _kind is None:
        _kind = _decide()
    return _kind


def is_simulator() -> bool:
    """True when kernels run in Numba's CUDA simulator."""
    return device_kind() == "sim"


def cuda_api() -> ModuleType:
    """The ``cuda`` module for host-side calls: ``numba.cuda`` or ``numba.cuda.simulator``.

    Use it for ``device_array``, ``to_device``, ``mapped_array``, ``stream``, ``event``,
    ``synchronize`` and ``jit``; it is the same object for every caller in a process.
    """
    if is_simulator():
        import numba.cuda.simulator as simulator  # noqa: PLC0415 - loaded at first use

        _serialise_simulator_shared_arrays()
        return simulator
    import numba.cuda as real  # noqa: PLC0415 - loaded at first use

    if real.device_array.__module__.startswith("numba.cuda.simulator"):
        raise DeviceChoiceError(
            f"{ENV_OVERRIDE}=gpu, but numba.cuda runs in simulator mode in this process "
            f"({_SIM_ENV}={os.environ.get(_SIM_ENV, '')!r} when numba was imported): "
            f"unset {_SIM_ENV} before Python starts, or use {ENV_OVERRIDE}=sim"
        )
    return real


def _serialise_simulator_shared_arrays() -> bool:
    """Make the simulator's static ``cuda.shared.array`` allocation atomic (module doc).

    numba-cuda's ``FakeCUDAShared.array`` (one instance per launch, shared by the
    block's threads) looks the array up by the calling line, and creates and stores it
    when missing, without a lock. This replaces that method, once per process, by one
    that does the same lookup under a lock; dynamic shared memory (``shape == 0``, a view
    of one buffer) and the alignment refusal stay numba's own. Returns False, changing
    nothing, when numba's class no longer has the layout this relies on.
    """
    from numba.cuda.simulator import kernelapi  # noqa: PLC0415 - simulator only

    cls = kernelapi.FakeCUDAShared
    if getattr(cls, "_paged_kv_serialised", False):
        return True
    if not isinstance(getattr(cls(0), "_allocations", None), dict):
        return False
    from numba.core import types  # noqa: PLC0415
    from numba.np import numpy_support  # noqa: PLC0415

    numba_array = cls.array
    lock = threading.Lock()

    def array(self: Any, shape: Any, dtype: Any, alignment: Any = None) -> Any:
        if shape == 0 or alignment is not None:
            return numba_array(self, shape, dtype, alignment)
        caller = sys._getframe(1)  # the kernel line, numba's key for the allocation
        key = (caller.f_code.co_filename, caller.f_lineno)
        with lock:
            found = self._allocations.get(key)
            if found is None:
                if isinstance(dtype, types.Type):
                    dtype = numpy_support.as_dtype(dtype)
                found = self._allocations[key] = np.empty(shape, dtype)
        return found

    cls.array = array
    cls._paged_kv_serialised = True
    return True


def jit(*args: Any, **kwargs: Any) -> Any:
    """``cuda_api().jit``: decorate a kernel (or ``device=True`` function) for the chosen
    device. Use as ``@jit`` or ``@jit(device=True, inline=True)``; no signature, so the
    kernel compiles at first launch (or in `paged_kv.gpu.kernels.compile_check`)."""
    return cuda_api().jit(*args, **kwargs)


def jit_accepts(option: str) -> bool:
    """True when this numba-cuda's ``cuda.jit`` takes kernel option `option` (False in the
    simulator, whose jit takes none of the GPU options).

    ``cuda.jit`` passes keywords it does not name on to the kernel, whose constructor
    then refuses them at the first launch: numba-cuda 0.20 to 0.24 name
    ``launch_bounds`` but not ``shared_memory_carveout`` (0.26 on). So a kernel asks for
    an option only where this is True.
    """
    if is_simulator():
        return False
    import inspect  # noqa: PLC0415 - GPU only

    return option in inspect.signature(cuda_api().jit).parameters


def jitable(fn: Any) -> Any:
    """A helper that kernels call: a plain function the simulator runs as it is, and that
    ``register_jitable`` compiles into each kernel calling it on a GPU. (A ``device=True``
    dispatcher would do too, but numba-cuda compiles one for "the current device", so
    the compile check needs its stand-in there; a helper must not use ``cuda.*``
    itself in the simulator: pass it ``threadIdx.x`` and friends.)"""
    if is_simulator():
        return fn
    try:
        from numba.cuda.extending import register_jitable  # noqa: PLC0415 - GPU only
    except ImportError:  # numba-cuda before it had its own: numba's serves every target
        from numba.core.extending import register_jitable  # noqa: PLC0415

    return register_jitable(fn)


def new_event() -> Any:
    """A CUDA event without timing (cheaper to record); the simulator's no-op event."""
    api = cuda_api()
    return api.event() if is_simulator() else api.event(timing=False)


def host_copy(array: Any) -> np.ndarray:
    """A NumPy copy of a device, mapped or host array (finish the work that writes it
    first: `KVStorage.synchronize`, or ``cuda_api().synchronize()``).

    A mapped array (``cuda.mapped_array``) is a NumPy array on a GPU: it is copied as
    one, from the page-locked host memory it lives in. Its ``copy_to_host`` must not be
    used: numba-cuda builds a mapped array without running ``DeviceNDArrayBase.__init__``,
    so the ``alloc_size`` that ``copy_to_host`` reads does not exist (AttributeError).
    A device array (or any array of the simulator) is copied with ``copy_to_host``.
    """
    if isinstance(array, np.ndarray):
        return np.array(array, copy=True)
    return array.copy_to_host()


def device_name() -> str:
    """The GPU's name (e.g. ``"NVIDIA H100 80GB HBM3"``), or ``"CUDA simulator"``."""
    if is_simulator():
        return "CUDA simulator"
    name = cuda_api().get_current_device().name
    return name.decode() if isinstance(name, bytes) else str(name)
