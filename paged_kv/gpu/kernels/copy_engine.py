"""Swap through the copy engines: asynchronous memcpy of contiguous runs of blocks.

In the pool layout ``[num_layers, 2, num_blocks, block_size, num_kv_heads, head_dim]``
block ``b`` of slab row ``lk = 2 * layer + kv`` is one contiguous run of ``blk_bytes``
bytes at ``(lk * num_blocks + b) * blk_bytes``. Consecutive block ids are consecutive
runs, so ``count`` pairs ``(s, d), (s + 1, d + 1), ...`` move as one rectangle of
``2 * num_layers`` rows of ``count * blk_bytes`` bytes (`block_runs` finds them)::

    src offset s * blk_bytes, pitch src num_blocks * blk_bytes   (one row per lk)
    dst offset d * blk_bytes, pitch dst num_blocks * blk_bytes

On a GPU each rectangle is one ``cuMemcpy2DAsync`` on the caller's stream, with both
sides given as unified addresses (device memory, or page-locked host memory mapped by
``cuda.mapped_array``), so the DMA engines move it while the SMs stay free. When a pitch
exceeds the device's ``MAX_PITCH`` (a slab row of more than 2 GiB), the rectangle goes
row by row through ``cuMemcpyAsync``. Under the simulator the same rectangles are copied
row by row by the simulator's array copies (synchronously), so the run and offset
arithmetic is what the tests check.

The host side of every copy must be page-locked for the copy to be asynchronous (and
for the copy engines to reach it directly); `paged_kv.gpu.storage` allocates its host pool
with ``cuda.mapped_array``, which is.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from paged_kv.gpu import device
from paged_kv.gpu.kernels._units import base_address


def block_runs(pairs: np.ndarray) -> np.ndarray:
    """``[r, 3]`` int64 rows ``(src_start, dst_start, count)`` covering `pairs` exactly.

    Pairs are sorted by source (then destination); a run grows while both ids go up by
    one. ``[(4, 0), (5, 1), (6, 2), (9, 3)]`` -> ``[(4, 0, 3), (9, 3, 1)]``.
    """
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    if pairs.shape[0] == 0:
        return np.zeros((0, 3), dtype=np.int64)
    order = np.lexsort((pairs[:, 1], pairs[:, 0]))
    src, dst = pairs[order, 0], pairs[order, 1]
    breaks = np.flatnonzero((np.diff(src) != 1) | (np.diff(dst) != 1)) + 1
    starts = np.concatenate([[0], breaks])
    counts = np.diff(np.concatenate([starts, [len(src)]]))
    return np.stack([src[starts], dst[starts], counts], axis=1)


def copy_block_runs(src_pool: Any, dst_pool: Any, runs: np.ndarray, stream: Any = None) -> None:
    """Enqueue the copies of `runs` (from `block_runs`) from `src_pool` to `dst_pool`.

    Both pools are checked and compatible (same layout except ``num_blocks``).
    """
    if runs.shape[0] == 0:
        return
    num_layers, _, num_src, block_size, num_kv_heads, head_dim = (int(n) for n in src_pool.shape)
    num_dst = int(dst_pool.shape[2])
    blk_bytes = block_size * num_kv_heads * head_dim * np.dtype(src_pool.dtype).itemsize
    rows = 2 * num_layers
    src_pitch, dst_pitch = num_src * blk_bytes, num_dst * blk_bytes
    copy = _simulated_copy if device.is_simulator() else _DriverCopy(stream)
    for s, d, count in runs.tolist():
        copy(dst_pool, d * blk_bytes, dst_pitch, src_pool, s * blk_bytes, src_pitch,
             count * blk_bytes, rows)


def _simulated_copy(dst: Any, dst_offset: int, dst_pitch: int, src: Any, src_offset: int,
                    src_pitch: int, width: int, height: int) -> None:
    """The rectangle copied row by row with the simulator's array copies."""
    dst_bytes = dst.reshape(-1).view(np.uint8)
    src_bytes = src.reshape(-1).view(np.uint8)
    for row in range(height):
        d = dst_offset + row * dst_pitch
        s = src_offset + row * src_pitch
        dst_bytes[d:d + width].copy_to_device(src_bytes[s:s + width])


class _DriverCopy:
    """Rectangles enqueued on one stream through the CUDA driver (NVIDIA's bindings)."""

    def __init__(self, stream: Any) -> None:
        from cuda.bindings import driver as cu  # noqa: PLC0415 - GPU only

        self._cu = cu
        api = device.cuda_api()
        api.current_context()  # the pools' context is current on this thread
        try:
            self._max_pitch = int(api.get_current_device().MAX_PITCH)
        except Exception:  # noqa: BLE001 - attribute unreadable: assume the usual 2^31 - 1
            self._max_pitch = 2**31 - 1
        self._stream = _stream_handle(cu, stream)
        self._params = cu.CUDA_MEMCPY2D()
        unified = cu.CUmemorytype.CU_MEMORYTYPE_UNIFIED
        self._params.srcMemoryType = unified
        self._params.dstMemoryType = unified
        self._bases: dict[int, int] = {}

    def _base(self, pool: Any) -> int:
        key = id(pool)
        if key not in self._bases:
            self._bases[key] = base_address(pool)
        return self._bases[key]

    def __call__(self, dst: Any, dst_offset: int, dst_pitch: int, src: Any, src_offset: int,
                 src_pitch: int, width: int, height: int) -> None:
        cu = self._cu
        dst_addr, src_addr = self._base(dst) + dst_offset, self._base(src) + src_offset
        if height == 1 or max(src_pitch, dst_pitch) > self._max_pitch:
            for row in range(height):
                _check(cu, "cuMemcpyAsync", cu.cuMemcpyAsync(
                    cu.CUdeviceptr(dst_addr + row * dst_pitch),
                    cu.CUdeviceptr(src_addr + row * src_pitch), width, self._stream))
            return
        p = self._params
        p.srcDevice = cu.CUdeviceptr(src_addr)
        p.srcPitch = src_pitch
        p.dstDevice = cu.CUdeviceptr(dst_addr)
        p.dstPitch = dst_pitch
        p.WidthInBytes = width
        p.Height = height
        _check(cu, "cuMemcpy2DAsync", cu.cuMemcpy2DAsync(p, self._stream))


def _stream_handle(cu: Any, stream: Any) -> Any:
    """A ``CUstream`` for `stream` (None or 0: the legacy default stream)."""
    if stream is None or (isinstance(stream, int) and stream == 0):
        return cu.CUstream(0)
    handle = stream.handle
    if isinstance(handle, cu.CUstream):
        return handle
    return cu.CUstream(int(getattr(handle, "value", handle) or 0))


def _check(cu: Any, name: str, result: tuple) -> None:
    if result[0] != cu.CUresult.CUDA_SUCCESS:
        raise RuntimeError(f"{name} failed: {result[0].name}")
