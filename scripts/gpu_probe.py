"""Can this machine run paged_kv's kernels? A probe of at most a few seconds.

``scripts/gpu_check.sh`` runs it first (under a 20 s limit) with the machine's own
``python3`` and the working tree on ``PYTHONPATH``; it installs nothing. In order, and
stopping at the first failure with one line ``PROBE FAILED: ...`` that names what was
found and what is needed:

1. versions: Python, NumPy, numba, numba-cuda, cuda-bindings (the minimums are
   pyproject.toml's); pytest, pandas, tqdm, matplotlib and hypothesis are reported, and
   a missing one only warns (the tests or benchmarks that import it will fail);
2. the device: ``cuda.detect()``, the driver's and runtime's CUDA versions, NVVM's;
3. one launch of a kernel built as the attention kernels are (``launch_bounds``,
   ``shared_memory_carveout`` where numba-cuda has it, dynamic shared memory, a
   barrier), checked against NumPy;
4. one round trip through mapped (page-locked, device-addressable) host memory, by both
   swap paths: the copy engines (``cuMemcpy2DAsync`` from ``cuda.bindings``) out of a
   device pool into a ``cuda.mapped_array``, and the block-copy kernel back in, each
   checked byte for byte.

``--dry-run`` runs steps 1, 3 and 4 under the CUDA simulator (step 2 needs a GPU), which
is how ``make test`` keeps the probe working. Exit status 0: all passed; 1: a failure.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata as metadata
import re
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
HOW_TO_CARRY = "docs/gpu.rst says how to carry a wheel"
#: Reported, not required: what the tests and benchmarks import besides the kernels' needs.
OPTIONAL = ("pytest", "hypothesis", "pandas", "tqdm", "matplotlib")

# The probe kernel's globals, bound once the versions are checked (`main`): ``cuda`` is
# numba's module (the simulator swaps this name while it runs a kernel), ``np`` NumPy,
# ``F32`` numba's float32 (the shared array's element type, as the kernels give it).
cuda: Any = None
np: Any = None
F32: Any = None


class ProbeFailed(RuntimeError):
    """One line: what was found, what is needed."""


def minimums() -> dict[str, str]:
    """Lower bounds of pyproject.toml's dependencies (``name>=X``), plus Python's."""
    text = (ROOT / "pyproject.toml").read_text()
    found = dict(re.findall(r'^\s*"([a-z][a-z0-9-]*)>=([0-9.]+)"', text, flags=re.M))
    python = re.search(r'^requires-python\s*=\s*">=([0-9.]+)"', text, flags=re.M)
    found["python"] = python.group(1) if python else "3.10"
    return found


def version_tuple(text: str) -> tuple[int, ...]:
    """``"0.30.4"`` -> ``(0, 30, 4)``; a suffix (rc1, .dev0, +local) is dropped."""
    return tuple(int(part) for part in re.findall(r"\d+", text.split("+")[0])[:3])


def installed(distribution: str) -> str | None:
    """The installed version of `distribution`, or None."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def check_versions(needed: dict[str, str]) -> None:
    """Step 1; raises ProbeFailed for a missing or too old required package."""
    python = ".".join(str(n) for n in sys.version_info[:3])
    if version_tuple(python) < version_tuple(needed["python"]):
        raise ProbeFailed(f"Python {python} found, {needed['python']} or newer needed")
    print(f"python {python} ({sys.executable})")
    for name in ("numpy", "numba", "numba-cuda"):
        found = installed(name)
        if found is None:
            raise ProbeFailed(f"{name} not installed, {needed[name]} or newer needed "
                              f"({HOW_TO_CARRY})")
        if version_tuple(found) < version_tuple(needed[name]):
            raise ProbeFailed(f"{name} {found} found, {needed[name]} or newer needed "
                              f"({HOW_TO_CARRY})")
        print(f"{name} {found} (needed: {needed[name]} or newer)")
    bindings = installed("cuda-bindings") or installed("cuda-python")
    try:
        importlib.import_module("cuda.bindings.driver")
    except ImportError as exc:
        raise ProbeFailed(f"cuda.bindings.driver does not import (cuda-bindings {bindings}): "
                          f"{exc}; the copy engines need it ({HOW_TO_CARRY})") from None
    print(f"cuda-bindings {bindings}")
    missing = [name for name in OPTIONAL if installed(name) is None]
    print("also: " + ", ".join(f"{name} {installed(name)}" for name in OPTIONAL
                               if name not in missing))
    for name in missing:
        print(f"WARNING: {name} not installed: the tests or benchmarks that import it fail "
              f"({HOW_TO_CARRY})")


def check_device() -> str:
    """Step 2 (GPU only); returns the device's one-line description."""
    from numba.cuda.cudadrv import nvvm

    if not cuda.detect():
        raise ProbeFailed("cuda.detect() finds no supported GPU")
    device = cuda.get_current_device()
    driver = cuda.cudadrv.driver.driver.get_version()
    runtime = cuda.runtime.get_version()
    nvvm_version = nvvm.NVVM().get_version()
    line = (f"{device.name.decode() if isinstance(device.name, bytes) else device.name}, "
            f"compute capability {device.compute_capability}; CUDA driver "
            f"{'.'.join(map(str, driver))}, runtime {'.'.join(map(str, runtime))}, "
            f"NVVM {'.'.join(map(str, nvvm_version))}")
    print(line)
    return line


def probe_kernel_options() -> dict[str, Any]:
    """The kernel options the attention kernels use here (none in the simulator)."""
    from paged_kv.gpu import device

    options: dict[str, Any] = {}
    if not device.is_simulator():
        options["launch_bounds"] = (PROBE_THREADS, 1024 // PROBE_THREADS)
    if device.jit_accepts("shared_memory_carveout"):
        options["shared_memory_carveout"] = "MaxShared"
    return options


def neighbours(values, out):
    """``out[i] = 2 * values[i + 1]`` within each CUDA block (wrapping), staged through
    dynamic shared memory across a barrier: the pattern of the attention kernels."""
    staged = cuda.shared.array(0, F32)  # dynamic shared memory, sized at launch
    t = cuda.threadIdx.x
    i = cuda.blockIdx.x * cuda.blockDim.x + t
    staged[t] = values[i]
    cuda.syncthreads()
    out[i] = staged[(t + 1) % cuda.blockDim.x] * 2.0


PROBE_THREADS = 128


def check_kernel_launch() -> None:
    """Step 3: `neighbours` with the attention kernels' options, checked against NumPy."""
    from paged_kv.gpu import device

    api = device.cuda_api()
    blocks, options = 3, probe_kernel_options()
    kernel = device.jit(**options)(neighbours)
    values = np.arange(blocks * PROBE_THREADS, dtype=np.float32)
    out = api.device_array(values.shape, np.float32)
    kernel[blocks, PROBE_THREADS, 0, PROBE_THREADS * 4](api.to_device(values), out)
    api.synchronize()
    want = 2.0 * np.roll(values.reshape(blocks, PROBE_THREADS), -1, axis=1).ravel()
    if not np.array_equal(out.copy_to_host(), want):
        raise ProbeFailed("the probe kernel computed wrong values")
    print(f"kernel launch ({', '.join(options) or 'simulator: no GPU options'}; "
          f"dynamic shared memory, barrier): ok")
    if not device.is_simulator() and "shared_memory_carveout" not in options:
        print("note: this numba-cuda has no shared_memory_carveout (0.26 on): the attention "
              "kernels run without it")


def check_mapped_round_trip() -> None:
    """Step 4: device pool -> mapped host pool by the copy engines, back by the kernel."""
    from paged_kv.gpu import device
    from paged_kv.gpu.kernels import swap_blocks

    api = device.cuda_api()
    shape = (2, 2, 6, 4, 2, 8)  # layers, K/V, blocks, block_size, heads, head_dim
    values = np.arange(np.prod(shape), dtype=np.float16).reshape(shape)
    gpu = api.to_device(values)
    host = api.mapped_array((2, 2, 3, 4, 2, 8), np.float16)
    host[:] = np.float16(0)
    swap_blocks(gpu, host, [(4, 0), (5, 1), (1, 2)], method="memcpy")
    api.synchronize()
    out = device.host_copy(host)
    if not (np.array_equal(out[:, :, :2], values[:, :, 4:6])
            and np.array_equal(out[:, :, 2], values[:, :, 1])):
        raise ProbeFailed("mapped memory: the copy-engine swap out moved wrong bytes")
    back = api.to_device(np.zeros(shape, np.float16))
    swap_blocks(host, back, [(0, 3), (2, 0)], method="kernel")
    api.synchronize()
    got = back.copy_to_host()
    if not (np.array_equal(got[:, :, 3], values[:, :, 4])
            and np.array_equal(got[:, :, 0], values[:, :, 1])):
        raise ProbeFailed("mapped memory: the kernel swap in moved wrong bytes")
    print("mapped memory round trip (copy engines out, kernel in): ok")


def bind_kernel_globals() -> None:
    """Bind `neighbours`'s globals (after the versions are known to be there)."""
    global cuda, np, F32
    np = importlib.import_module("numpy")
    F32 = importlib.import_module("numba").float32
    cuda = importlib.import_module("numba.cuda")  # as the kernels' `from numba import cuda`


def main(argv: list[str] | None = None) -> int:
    """Run the probe (module docstring); print one line per check."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true",
                        help="under the CUDA simulator: versions, kernel, mapped memory")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    try:
        check_versions(minimums())
        bind_kernel_globals()
        from paged_kv.gpu import device

        if args.dry_run:
            if not device.is_simulator():
                raise ProbeFailed("--dry-run needs the simulator (PAGED_KV_DEVICE=sim)")
            print("DRY RUN: the CUDA simulator; no device checked")
        elif device.is_simulator():
            raise ProbeFailed("numba sees no CUDA driver or GPU here (the simulator would "
                              "run): nothing to check")
        else:
            check_device()
        check_kernel_launch()
        check_mapped_round_trip()
    except ProbeFailed as exc:
        print(f"PROBE FAILED: {exc}")
        return 1
    except Exception as exc:  # noqa: BLE001 - any other failure, in one line
        found = ", ".join(f"{n} {installed(n)}" for n in ("numba", "numba-cuda",
                                                            "cuda-bindings"))
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        print(f"PROBE FAILED: {type(exc).__name__}: {first} ({found})")
        return 1
    print(f"probe passed in {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
