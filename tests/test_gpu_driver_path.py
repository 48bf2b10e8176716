"""The code paths that run only on a GPU, driven against recording stand-ins, no GPU.

On a GPU, swaps go through `paged_kv.gpu.kernels.copy_engine._DriverCopy`, which calls
NVIDIA's ``cuda.bindings.driver``; streams are numba-cuda ``Stream`` objects whose
handles the copy engine and the fences convert; the fences record and wait on
numba-cuda ``Event`` objects; and the host pool is numba-cuda's ``MappedNDArray``. None
of this runs under the simulator. These tests run it in a child interpreter with the
simulator off (``PAGED_KV_DEVICE=gpu``: numba reads ``NUMBA_ENABLE_CUDASIM`` once per
process), with the real classes of both modules (``CUDA_MEMCPY2D``, ``CUdeviceptr``,
``CUstream``; numba-cuda's ``Stream``, ``Event``, ``MappedNDArray``) and recording
stand-ins for the entry points that would reach the driver (``cuMemcpy2DAsync``,
``cuMemcpyAsync``; numba-cuda's ``current_context``, ``get_current_device``, ``event``
and its driver object's ``cuEventRecord`` and ``cuStreamWaitEvent``).

What they prove is the calls we make: which entry points, in which order, with which
argument types, pitches, offsets and stream handles. The copy stand-ins also carry out
each copy on host memory (a mapped allocation has the same address on host and device
under unified addressing), after checking that it stays inside the two pools, so the
bytes are compared with NumPy too. They do not prove that the hardware accepts the
calls: ``scripts/gpu_check.sh`` does that on a GPU.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
CHILD_FLAG = "PAGED_KV_DRIVER_STAND_IN"
IN_CHILD = os.environ.get(CHILD_FLAG) == "1"

child_only = pytest.mark.skipif(
    not IN_CHILD, reason="runs in the GPU-mode child process that "
                         "test_gpu_only_paths_pass_against_stand_ins starts")


@pytest.mark.skipif(IN_CHILD, reason="this is the child")
def test_gpu_only_paths_pass_against_stand_ins() -> None:
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    env.update({"PAGED_KV_DEVICE": "gpu", CHILD_FLAG: "1", "PYTHONDONTWRITEBYTECODE": "1"})
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
         "-p", "no:randomly", __file__],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    tail = done.stdout[-4000:] + done.stderr[-2000:]
    assert done.returncode == 0, tail
    child_tests = sum(1 for name in globals() if name.startswith("test_in_child_"))
    assert f"{child_tests} passed, 1 skipped" in done.stdout, tail


# -- stand-ins ----------------------------------------------------------------------


class _MappedMemory:
    """numba-cuda's mapped allocation as `MappedNDArray` reads it: a device pointer,
    equal to the host address (unified addressing)."""

    def __init__(self, host: np.ndarray) -> None:
        self.host = host  # keeps the memory alive
        self.device_ctypes_pointer = ctypes.c_void_p(host.ctypes.data)


def mapped_array(values: np.ndarray):
    """A `MappedNDArray` holding a copy of `values`, built as ``cuda.mapped_array``
    builds one (an ndarray viewed as the class, then ``device_setup``), over ordinary
    host memory instead of a ``cuMemHostAlloc`` buffer."""
    from numba.cuda.cudadrv import devicearray

    buffer = np.array(values, copy=True, order="C")
    array = np.ndarray.view(buffer, type=devicearray.MappedNDArray)
    array.device_setup(_MappedMemory(buffer))
    return array


class DriverCalls:
    """Recording stand-ins for the driver calls of ``cuda.bindings.driver`` that the copy
    engine makes; each copy is carried out on host memory after a bounds check."""

    def __init__(self, cu, extents: list[tuple[int, int]]) -> None:
        self.cu = cu
        self.extents = extents  # [start, end) of every array a copy may touch
        self.calls: list[tuple] = []
        self.result = cu.CUresult.CUDA_SUCCESS

    def _copy(self, dst: int, src: int, width: int) -> None:
        for addr in (dst, src):
            assert any(lo <= addr and addr + width <= hi for lo, hi in self.extents), (
                f"copy of {width} B at {addr:#x} leaves every pool")
        ctypes.memmove(dst, src, width)

    def cuMemcpy2DAsync(self, params, stream):  # noqa: N802 - the driver's name
        cu = self.cu
        assert isinstance(params, cu.CUDA_MEMCPY2D) and isinstance(stream, cu.CUstream)
        unified = cu.CUmemorytype.CU_MEMORYTYPE_UNIFIED
        assert params.srcMemoryType == unified and params.dstMemoryType == unified
        fields = {name: int(getattr(params, name)) for name in (
            "srcDevice", "srcPitch", "dstDevice", "dstPitch", "WidthInBytes", "Height",
            "srcXInBytes", "srcY", "dstXInBytes", "dstY")}
        self.calls.append(("cuMemcpy2DAsync", fields, int(stream)))
        for row in range(fields["Height"]):
            self._copy(fields["dstDevice"] + row * fields["dstPitch"],
                       fields["srcDevice"] + row * fields["srcPitch"], fields["WidthInBytes"])
        return (self.result,)

    def cuMemcpyAsync(self, dst, src, width, stream):  # noqa: N802 - the driver's name
        cu = self.cu
        assert isinstance(dst, cu.CUdeviceptr) and isinstance(src, cu.CUdeviceptr)
        assert isinstance(width, int) and isinstance(stream, cu.CUstream)
        self.calls.append(("cuMemcpyAsync", int(dst), int(src), width, int(stream)))
        self._copy(int(dst), int(src), width)
        return (self.result,)


@pytest.fixture
def stand_ins(monkeypatch: pytest.MonkeyPatch):
    """The driver entry points replaced by recorders; returns a factory taking the pools
    (for the bounds check) and the device's MAX_PITCH."""
    from cuda.bindings import driver as cu
    from numba import cuda

    from paged_kv.gpu import device

    assert not device.is_simulator() and device.cuda_api() is cuda

    def install(pools, max_pitch: int = 2**31 - 1) -> DriverCalls:
        extents = [(p.ctypes.data, p.ctypes.data + p.nbytes) for p in pools]
        calls = DriverCalls(cu, extents)
        monkeypatch.setattr(cu, "cuMemcpy2DAsync", calls.cuMemcpy2DAsync)
        monkeypatch.setattr(cu, "cuMemcpyAsync", calls.cuMemcpyAsync)
        monkeypatch.setattr(cuda, "current_context", lambda: calls.calls.append(("context",)))
        monkeypatch.setattr(cuda, "get_current_device",
                            lambda: SimpleNamespace(MAX_PITCH=max_pitch))
        return calls

    return install


def numba_stream(handle: int, external: bool = False):
    """A numba-cuda `Stream` over the handle `handle` (as ``cuda.stream()`` or
    ``cuda.external_stream(ptr)`` make one)."""
    from cuda.bindings import driver as cu
    from numba.cuda.cudadrv.driver import Stream

    return Stream(cu.CUstream(handle), external=external)


def pools(num_layers: int = 2, gpu_blocks: int = 9, host_blocks: int = 7, block_size: int = 2,
          heads: int = 2, head_dim: int = 4):
    rng = np.random.default_rng(3)
    shape = (num_layers, 2, gpu_blocks, block_size, heads, head_dim)
    gpu = mapped_array(rng.standard_normal(shape).astype(np.float16))
    host = mapped_array(np.zeros((*shape[:2], host_blocks, *shape[3:]), np.float16))
    blk_bytes = block_size * heads * head_dim * 2
    return gpu, host, blk_bytes


# -- copies through the driver ---------------------------------------------------------


@child_only
def test_in_child_memcpy_swap_is_one_2d_copy_per_run_of_blocks(stand_ins) -> None:
    from paged_kv.gpu.kernels import swap_blocks

    gpu, host, blk = pools()
    expected = np.array(host, copy=True)
    pairs = [(2, 0), (3, 1), (4, 2), (8, 6), (0, 4)]  # runs: 0->4; 2..4->0..2; 8->6
    for s, d in pairs:
        expected[:, :, d] = gpu[:, :, s]
    calls = stand_ins([gpu, host])
    stream = numba_stream(0xABC0)
    swap_blocks(gpu, host, pairs, method="memcpy", stream=stream)
    assert calls.calls[0] == ("context",)
    copies = calls.calls[1:]
    assert [c[0] for c in copies] == ["cuMemcpy2DAsync"] * 3
    gpu_base, host_base = gpu.ctypes.data, host.ctypes.data
    for (_, p, handle), (s, d, count) in zip(copies, [(0, 4, 1), (2, 0, 3), (8, 6, 1)]):
        assert p == {"srcDevice": gpu_base + s * blk, "srcPitch": 9 * blk,
                     "dstDevice": host_base + d * blk, "dstPitch": 7 * blk,
                     "WidthInBytes": count * blk, "Height": 2 * 2,
                     "srcXInBytes": 0, "srcY": 0, "dstXInBytes": 0, "dstY": 0}
        assert handle == 0xABC0  # the caller's stream, by its handle
    assert np.array_equal(np.asarray(host), expected)


@child_only
def test_in_child_a_pitch_past_max_pitch_goes_row_by_row(stand_ins) -> None:
    from paged_kv.gpu.kernels import swap_blocks

    gpu, host, blk = pools()
    host[:] = np.arange(host.size, dtype=np.float16).reshape(host.shape)
    expected = np.array(gpu, copy=True)
    expected[:, :, 5:7] = host[:, :, 1:3]
    calls = stand_ins([gpu, host], max_pitch=8 * blk)  # the GPU pool's 9-block pitch is past it
    swap_blocks(host, gpu, [(1, 5), (2, 6)], method="memcpy")  # one run of two blocks
    copies = calls.calls[1:]
    src = [host.ctypes.data + row * 7 * blk + 1 * blk for row in range(4)]  # 2 layers x K/V
    dst = [gpu.ctypes.data + row * 9 * blk + 5 * blk for row in range(4)]
    assert copies == [("cuMemcpyAsync", d, s, 2 * blk, 0) for s, d in zip(src, dst)]
    assert np.array_equal(np.asarray(gpu), expected)


@child_only
def test_in_child_a_failed_driver_call_raises_naming_it(stand_ins) -> None:
    from cuda.bindings import driver as cu

    from paged_kv.gpu.kernels import swap_blocks

    gpu, host, _ = pools()
    calls = stand_ins([gpu, host])
    calls.result = cu.CUresult.CUDA_ERROR_INVALID_VALUE
    with pytest.raises(RuntimeError, match="cuMemcpy2DAsync failed: CUDA_ERROR_INVALID_VALUE"):
        swap_blocks(gpu, host, [(0, 0)], method="memcpy")


# -- stream handles ---------------------------------------------------------------------


@child_only
def test_in_child_stream_handles_convert_from_numba_streams() -> None:
    from cuda.bindings import driver as cu

    from paged_kv.gpu.fences import stream_key
    from paged_kv.gpu.kernels.copy_engine import _stream_handle

    made, external = numba_stream(0x5150), numba_stream(0x7E57, external=True)
    for stream, handle in ((None, 0), (0, 0), (made, 0x5150), (external, 0x7E57)):
        converted = _stream_handle(cu, stream)
        assert isinstance(converted, cu.CUstream) and int(converted) == handle
        assert stream_key(stream) == handle
    assert stream_key(numba_stream(0)) == 0  # numba's default stream object is the default


# -- fences on numba-cuda events ---------------------------------------------------------


class EventDriver:
    """numba-cuda's driver object as its `Event` methods use it, recording."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def cuEventRecord(self, event, stream):  # noqa: N802 - the driver's name
        self.calls.append(("record", int(event), int(stream)))

    def cuStreamWaitEvent(self, stream, event, flags):  # noqa: N802 - the driver's name
        self.calls.append(("wait", int(stream), int(event), flags))


@child_only
def test_in_child_fences_record_on_the_working_stream_and_wait_on_the_next(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from cuda.bindings import driver as cu
    from numba import cuda
    from numba.cuda.cudadrv import driver as numba_driver

    from paged_kv.gpu import device
    from paged_kv.gpu.fences import BlockFences

    recorded = EventDriver()
    monkeypatch.setattr(numba_driver, "driver", recorded)
    asked = []

    def event(timing: bool = True):
        asked.append(timing)
        return numba_driver.Event(cu.CUevent(0xE0 + len(asked)))

    monkeypatch.setattr(cuda, "event", event)
    a, b = numba_stream(0xA), numba_stream(0xB)
    f = BlockFences(8, device.new_event)
    f.wait(a, writes=[1])
    f.record(a, writes=[1])  # one stream so far: nothing recorded
    assert recorded.calls == []
    f.wait(b, reads=[1])  # B reads what A wrote
    f.record(b, reads=[1])
    f.wait(None, writes=[1])  # the default stream overwrites what B read
    f.record(None, writes=[1])
    assert recorded.calls == [
        ("record", 0xE1, 0xA),  # A's work so far, fenced once when B appears
        ("wait", 0xB, 0xE1, 0),
        ("record", 0xE2, 0xB),  # B's read
        ("wait", 0, 0xE1, 0), ("wait", 0, 0xE2, 0),  # the default stream: handle 0
        ("record", 0xE3, 0),
    ]
    assert asked == [False, False, False]  # events without timing


# -- mapped host memory -------------------------------------------------------------------


@child_only
def test_in_child_host_copy_reads_a_mapped_array_as_numba_cuda_builds_it() -> None:
    from numba.cuda.cudadrv import devicearray

    from paged_kv.gpu import device

    values = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    mapped = mapped_array(values)
    assert isinstance(mapped, devicearray.MappedNDArray)
    copy = device.host_copy(mapped)
    assert type(copy) is np.ndarray and np.array_equal(copy, values)
    mapped[0, 0, 0] = -1.0
    assert copy[0, 0, 0] == 0.0  # a copy, not a view


# -- kernel options -------------------------------------------------------------------------


@child_only
def test_in_child_kernels_ask_only_for_options_this_numba_cuda_names(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import inspect

    from numba import cuda

    from paged_kv.gpu import device
    from paged_kv.gpu.kernels import KERNELS
    from paged_kv.gpu.kernels.compile_check import launch_option_problems

    named = inspect.signature(cuda.jit).parameters
    attention = KERNELS["paged_attention_128x4"][0].targetoptions
    assert attention["launch_bounds"] == (128, 8)
    carveout = attention.get("shared_memory_carveout")
    assert carveout == ("MaxShared" if "shared_memory_carveout" in named else None)
    assert launch_option_problems() == []

    def old_jit(func_or_sig=None, device=False, launch_bounds=None, **kws):  # numba-cuda 0.20
        raise AssertionError("not called")

    monkeypatch.setattr(cuda, "jit", old_jit)
    assert device.jit_accepts("launch_bounds")
    assert not device.jit_accepts("shared_memory_carveout")
    if carveout:  # built for this numba-cuda, then checked against 0.20's jit
        assert launch_option_problems() == [
            f"{name}: this numba-cuda's cuda.jit has no shared_memory_carveout"
            for name in sorted(n for n in KERNELS if n.startswith("paged_attention_"))]


# -- the GPU probe's device-side code ------------------------------------------------------


def _probe():
    import importlib.util

    spec = importlib.util.spec_from_file_location("paged_kv_gpu_probe",
                                                  ROOT / "scripts" / "gpu_probe.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.bind_kernel_globals()
    return module


@child_only
def test_in_child_the_probe_kernel_compiles_with_the_attention_kernels_options() -> None:
    from numba import cuda, types

    from paged_kv.gpu.kernels.compile_check import _target_device

    probe = _probe()
    options = probe.probe_kernel_options()
    assert options["launch_bounds"] == (128, 8)
    kernel = cuda.jit(**options)(probe.neighbours)
    assert kernel.targetoptions["launch_bounds"] == (128, 8)
    array = types.Array(types.float32, 1, "C")
    with _target_device((9, 0)):
        ptx, _ = cuda.compile_ptx(probe.neighbours, (array, array), cc=(9, 0),
                                  launch_bounds=options["launch_bounds"])
    assert ".maxntid 128" in ptx and "bar.sync" in ptx


@child_only
def test_in_child_the_probe_reads_versions_through_apis_this_numba_cuda_has() -> None:
    from numba import cuda
    from numba.cuda.cudadrv import nvvm

    probe = _probe()
    assert callable(cuda.detect) and callable(cuda.runtime.get_version)
    assert callable(cuda.cudadrv.driver.driver.get_version)
    assert all(isinstance(n, int) for n in nvvm.NVVM().get_version())  # libNVVM, no GPU
    needed = probe.minimums()
    assert needed["numba-cuda"] == "0.20" and needed["python"] == "3.10"
    assert probe.version_tuple("0.30.4rc1+local") == (0, 30, 4)
