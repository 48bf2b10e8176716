"""The device choice: lazy, explicit about the simulator, independent of import order.

Each case runs in a fresh interpreter (numba reads ``NUMBA_ENABLE_CUDASIM`` once per
process), with ``PAGED_KV_DEVICE`` and ``NUMBA_ENABLE_CUDASIM`` removed unless the case
sets them.
"""

import os
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
from numba import cuda  # the simulator swaps this module-level name inside kernels

import paged_kv
from paged_kv.gpu import device

NO_GPU = pytest.mark.skipif(device._driver_reports_a_device(), reason="this machine has a GPU")

# A real round trip through the kernels: storage writes, swaps and reads KV back.
ROUND_TRIP = """
import numpy as np
from paged_kv import get_model
from paged_kv.gpu.storage import KVStorage
spec = get_model("tiny")
storage = KVStorage(spec, block_size=4, num_gpu_blocks=4, num_host_blocks=2)
k = np.arange(6 * spec.num_kv_heads * spec.head_dim, dtype=spec.dtype).reshape(
    6, spec.num_kv_heads, spec.head_dim)
storage.write(0, k, k, [4, 5, 6, 7, 0, 1])
storage.swap_out([(1, 0), (0, 1)])
storage.swap_in([(0, 2), (1, 3)])
got, _ = storage.gather(0, [[2, 3]], [6])
assert np.array_equal(got, k), "bytes differ"
print("round trip", paged_kv.gpu.device.device_kind())
"""


def run(code: str, **env_updates: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PAGED_KV_DEVICE", "NUMBA_ENABLE_CUDASIM")}
    env.update(env_updates)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, env=env, timeout=300)


def test_this_test_session_runs_the_simulator() -> None:
    assert device.device_kind() == "sim" and device.is_simulator()
    assert paged_kv.device_name() == "CUDA simulator"
    assert device.cuda_api().__name__ == "numba.cuda.simulator"


def test_import_loads_no_numba_writes_no_environment_and_calls_no_driver() -> None:
    done = run("""
        import ctypes, os, sys
        def no_driver(*args, **kwargs):
            raise AssertionError("import paged_kv loaded a driver library")
        ctypes.CDLL = no_driver
        before = dict(os.environ)
        import paged_kv
        assert dict(os.environ) == before, "import paged_kv wrote the environment"
        assert "numba" not in sys.modules, "import paged_kv imported numba"
        assert paged_kv.gpu.device._kind is None, "import paged_kv chose a device"
        print("clean")
    """)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["clean"]


@NO_GPU
@pytest.mark.parametrize("first", ["numba", "paged_kv"])
def test_import_order_does_not_matter_without_a_gpu(first: str) -> None:
    imports = ("from numba import cuda\nimport paged_kv\n" if first == "numba"
               else "import paged_kv\nfrom numba import cuda\n")
    done = run(imports + ROUND_TRIP + "print(cuda.__name__)")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["round", "trip", "sim", "numba.cuda"]


def test_numba_in_simulator_mode_first_works_too() -> None:
    done = run("from numba import cuda\nimport paged_kv\n" + ROUND_TRIP,
               NUMBA_ENABLE_CUDASIM="1")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["round", "trip", "sim"]


def test_the_choice_is_made_at_first_use_and_the_override_wins() -> None:
    done = run("""
        import paged_kv, sys
        from paged_kv.gpu import device
        assert device._kind is None
        import paged_kv.gpu.storage
        print(device._kind, device.cuda_api().__name__)
    """, PAGED_KV_DEVICE="sim")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["sim", "numba.cuda.simulator"]


@NO_GPU
def test_without_a_driver_the_package_chooses_the_simulator_by_itself() -> None:
    done = run("import paged_kv; print(paged_kv.gpu.device.device_kind())")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["sim"]


def test_a_bad_override_is_a_one_line_error() -> None:
    done = run("import paged_kv; paged_kv.gpu.device.device_kind()", PAGED_KV_DEVICE="tpu")
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("paged_kv.gpu.device.DeviceChoiceError: PAGED_KV_DEVICE must be one of "
                           "('gpu', 'sim'), got 'tpu'")


def test_gpu_forced_after_numba_chose_the_simulator_is_a_one_line_error() -> None:
    done = run("from numba import cuda\nimport paged_kv.gpu.storage",
               PAGED_KV_DEVICE="gpu", NUMBA_ENABLE_CUDASIM="1")
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert "DeviceChoiceError: PAGED_KV_DEVICE=gpu, but numba.cuda runs in simulator mode" in last
    assert "unset NUMBA_ENABLE_CUDASIM" in last


@pytest.mark.skipif(not device.is_simulator(), reason="a guard of the simulator's threads")
def test_simulator_threads_of_a_block_share_their_shared_arrays_under_thread_switches(
) -> None:
    """Each simulated thread pauses on every line of the shared-array allocation (as a
    loaded machine may switch threads there): all threads must still get the same
    arrays. Unguarded, numba's check-then-insert gave some threads private copies."""
    @device.jit
    def neighbours(out):
        a = cuda.shared.array(32, np.float32)
        b = cuda.shared.array(32, np.float32)
        t = cuda.threadIdx.x
        a[t] = t
        b[t] = 2 * t
        cuda.syncthreads()
        out[t] = a[(t + 1) % 32] + b[(t + 1) % 32]

    def pause_in_allocation(frame, event, arg):
        if frame.f_code.co_name != "array":
            return None

        def on_line(frame, event, arg):
            if event == "line":
                time.sleep(0.0002)  # releases the GIL: other threads run here
            return on_line
        return on_line

    out = device.cuda_api().device_array(32, np.float32)
    threading.settrace(pause_in_allocation)
    try:
        neighbours[1, 32](out)
    finally:
        threading.settrace(None)
    want = 3 * ((np.arange(32) + 1) % 32)
    np.testing.assert_array_equal(out.copy_to_host(), want.astype(np.float32))
