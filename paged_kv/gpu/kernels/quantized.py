"""Quantized pools: the quantizing slot write and the dequantizing gather.

A quantized pool is two arrays (`paged_kv.core.kv_dtype` has the table):

* ``pool``: the codes, ``[num_layers, 2, num_blocks, block_size, num_kv_heads,
  head_dim]``, int8 (int8 KV) or uint8 holding FP8 E4M3 bit patterns; the element type
  says which format it is (`QUANTIZED_BY_STORAGE`);
* ``scales``: float32. int8: one per token and KV head, paged like the pool,
  ``[num_layers, 2, num_blocks, block_size, num_kv_heads, 1]`` (a pool with head_dim 1,
  so `copy_blocks` and `swap_blocks` move a block's scales as they move its codes);
  FP8: static, ``[num_layers, 2, num_kv_heads]``, written by nobody here.

Both kernels take one CUDA block per (token, KV head), a 2-D grid (``blockIdx.x`` the
token, ``blockIdx.y`` the head), so no thread divides an index; its threads stride over
the head's ``head_dim`` elements. The pool is seen as rows ``[L * 2 * num_slots,
num_kv_heads, head_dim]``: token slot ``s`` of layer ``l``, K (V) is row
``2 * l * num_slots + s`` (``+ num_slots``), with ``slot = block_id * block_size +
offset`` as everywhere.

* `write_slots_quantized`: float16/float32 ``k, v[num_tokens, num_kv_heads, head_dim]``
  in, codes (and int8 scales) out. int8 first reduces ``amax`` over the head's values
  (a shared-memory tree, ``threads`` a power of two), then every thread writes its codes
  ``int8_code(x, amax / 127)``; FP8 writes ``e4m3_encode(x / scale[l, kv, head])``.
* `gather_kv_dequantized`: `paged_kv.gpu.kernels.gather`'s contract, returning
  ``code * scale`` in float32 rounded to the requested float dtype.

The per-element arithmetic is `paged_kv.gpu.kernels._quant_math`; the NumPy reference is
`paged_kv.reference.quantization`, which the tests hold these kernels to bit for bit.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import float32, types

from paged_kv.core.config import SUPPORTED_DTYPES
from paged_kv.core.kv_dtype import QUANTIZED_BY_STORAGE, SCALE_DTYPE, KVDtype
from paged_kv.gpu import device
from paged_kv.gpu.fences import stream_arg
from paged_kv.gpu.kernels._launch import DeviceBuffers, default_buffers
from paged_kv.gpu.kernels._quant_math import (
    KIND_FP8,
    KIND_INT8,
    e4m3_decode,
    e4m3_encode,
    finite_abs_max,
    int8_code,
)
from paged_kv.gpu.kernels._validate import (
    is_cuda_array,
    require_c_contiguous,
    require_cuda_array,
)
from paged_kv.gpu.kernels.gather import check_gather, row_sequence
from paged_kv.gpu.kernels.slot_write import check_write, upload_write_inputs

from numba import cuda  # isort: skip  (kernel intrinsics; the simulator swaps this name)

#: The quantized pool element types (int8 codes, FP8 E4M3 patterns).
QUANTIZED_DTYPES = tuple(QUANTIZED_BY_STORAGE)
#: Most threads per (token, head) CUDA block; a power of two (the amax tree).
MAX_ROW_THREADS = 128
INT8 = KIND_INT8
FP8 = KIND_FP8
#: Quantized pool element dtype -> kernel kind, and the suffix of its kernels' names.
KINDS = {"int8": INT8, "uint8": FP8}
SUFFIXES = {"int8": "int8", "uint8": "fp8"}


def _make_write_kernel(kind: int) -> Any:
    """The quantizing slot write for `kind` (INT8 or FP8)."""
    reduce_elems = MAX_ROW_THREADS if kind == INT8 else 1

    @device.jit
    def quantized_write_kernel(pool, scales, k, v, slot_mapping, k_row, num_slots, scale_row,
                               errors):
        """CUDA block (t, h) quantizes token t's K and V of KV head h; see the module.

        `pool` is ``[rows, num_kv_heads, head_dim]``; `scales` ``[rows, num_kv_heads]``
        (int8) or ``[2 * num_layers, num_kv_heads]`` (FP8, row ``scale_row`` is this
        layer's K); ``k_row`` is this layer's first K row.
        """
        amax = cuda.shared.array((2, reduce_elems), float32)
        t = cuda.blockIdx.x
        h = cuda.blockIdx.y
        tid = cuda.threadIdx.x
        step = cuda.blockDim.x
        slot = slot_mapping[t]
        if slot < 0:
            return  # padding token (the whole CUDA block leaves: no barrier is skipped)
        if slot >= num_slots:  # only a device-resident slot_mapping can get here
            if tid == 0 and h == 0:
                cuda.atomic.add(errors, 0, 1)
            return
        head_dim = k.shape[2]
        k_dst = k_row + slot
        v_dst = k_dst + num_slots
        if kind == INT8:
            k_max = float32(0.0)
            v_max = float32(0.0)
            d = tid
            while d < head_dim:
                k_max = finite_abs_max(k_max, float32(k[t, h, d]))
                v_max = finite_abs_max(v_max, float32(v[t, h, d]))
                d += step
            amax[0, tid] = k_max
            amax[1, tid] = v_max
            cuda.syncthreads()
            width = step // 2
            while width > 0:
                if tid < width:
                    amax[0, tid] = max(amax[0, tid], amax[0, tid + width])
                    amax[1, tid] = max(amax[1, tid], amax[1, tid + width])
                cuda.syncthreads()
                width //= 2
            k_scale = amax[0, 0] / float32(127.0)
            v_scale = amax[1, 0] / float32(127.0)
            if tid == 0:
                scales[k_dst, h] = k_scale
                scales[v_dst, h] = v_scale
            d = tid
            while d < head_dim:
                pool[k_dst, h, d] = int8_code(float32(k[t, h, d]), k_scale)
                pool[v_dst, h, d] = int8_code(float32(v[t, h, d]), v_scale)
                d += step
        else:
            k_scale = scales[scale_row, h]
            v_scale = scales[scale_row + 1, h]
            d = tid
            while d < head_dim:
                pool[k_dst, h, d] = e4m3_encode(float32(k[t, h, d]) / k_scale)
                pool[v_dst, h, d] = e4m3_encode(float32(v[t, h, d]) / v_scale)
                d += step

    return quantized_write_kernel


def _make_gather_kernel(kind: int) -> Any:
    """The dequantizing gather for `kind` (INT8 or FP8)."""

    @device.jit
    def dequantized_gather_kernel(pool, scales, k_out, v_out, block_tables, cu_out, starts,
                                  k_row, num_slots, scale_row, block_size, num_blocks, errors):
        """CUDA block (t, h) writes output token t's K and V of KV head h; see the module
        and `paged_kv.gpu.kernels.gather` for the row arithmetic."""
        t = cuda.blockIdx.x
        h = cuda.blockIdx.y
        tid = cuda.threadIdx.x
        step = cuda.blockDim.x
        head_dim = k_out.shape[2]
        s = row_sequence(cu_out, block_tables.shape[0], t)
        pos = starts[s] + (t - cu_out[s])
        logical = pos // block_size
        block = block_tables[s, logical]
        if block < 0 or block >= num_blocks:  # only a device-resident table can get here
            if tid == 0 and h == 0:
                cuda.atomic.add(errors, 0, 1)
            d = tid
            while d < head_dim:
                k_out[t, h, d] = 0
                v_out[t, h, d] = 0
                d += step
            return
        k_src = k_row + block * block_size + pos - logical * block_size
        v_src = k_src + num_slots
        if kind == INT8:
            k_scale = scales[k_src, h]
            v_scale = scales[v_src, h]
        else:
            k_scale = scales[scale_row, h]
            v_scale = scales[scale_row + 1, h]
        d = tid
        while d < head_dim:
            if kind == INT8:
                k_out[t, h, d] = float32(pool[k_src, h, d]) * k_scale
                v_out[t, h, d] = float32(pool[v_src, h, d]) * v_scale
            else:
                k_out[t, h, d] = e4m3_decode(pool[k_src, h, d]) * k_scale
                v_out[t, h, d] = e4m3_decode(pool[v_src, h, d]) * v_scale
            d += step

    return dequantized_gather_kernel


#: pool element dtype ("int8", "uint8") -> kernel.
WRITE_KERNELS = {name: _make_write_kernel(kind) for name, kind in KINDS.items()}
GATHER_KERNELS = {name: _make_gather_kernel(kind) for name, kind in KINDS.items()}


def _signature(pool_dtype: str, float_dtype: str, *index_args: Any) -> Any:
    """``(pool rows, scales rows, k, v, *index_args, errors)`` with k and v (in or out)
    of `float_dtype`."""
    floats = types.Array(getattr(types, float_dtype), 3, "C")
    return types.void(
        types.Array(getattr(types, pool_dtype), 3, "C"),  # pool rows
        types.Array(types.float32, 2, "C"),  # scales rows (`_scale_rows`)
        floats, floats,  # k, v (write: in; gather: out)
        *index_args,
        types.Array(types.int32, 1, "C"),  # errors
    )


def write_signature(pool_dtype: str) -> Any:
    """The signature builder of `WRITE_KERNELS[pool_dtype]`, per K/V dtype."""
    i64 = types.int64
    return lambda kv: _signature(
        pool_dtype, kv,
        types.Array(i64, 1, "C"),  # slot_mapping
        i64, i64, i64,  # k_row, num_slots, scale_row
    )


def gather_signature(pool_dtype: str) -> Any:
    """The signature builder of `GATHER_KERNELS[pool_dtype]`, per output dtype."""
    i64 = types.int64
    return lambda out: _signature(
        pool_dtype, out,
        types.Array(types.int32, 2, "C"),  # block_tables
        types.Array(i64, 1, "C"),  # cu_out
        types.Array(i64, 1, "C"),  # starts
        i64, i64, i64, i64, i64,  # k_row, num_slots, scale_row, block_size, num_blocks
    )


# -- host side -------------------------------------------------------------------------


def quantized_format(pool: Any) -> KVDtype:
    """The KV dtype a quantized pool holds, told by its element type."""
    return QUANTIZED_BY_STORAGE[np.dtype(pool.dtype).name]


def scales_shape(kv: KVDtype, pool_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape of `kv`'s scale array for a pool of `pool_shape` (module docstring)."""
    num_layers, _, num_blocks, block_size, num_kv_heads, _ = pool_shape
    if kv.paged_scales:
        return (num_layers, 2, num_blocks, block_size, num_kv_heads, 1)
    return (num_layers, 2, num_kv_heads)


def check_scales(pool: Any, scales: Any, pool_shape: tuple[int, ...], what: str) -> KVDtype:
    """Check that `scales` is the float32 device array a quantized `pool` needs; return
    the pool's KV dtype."""
    kv = quantized_format(pool)
    if scales is None:
        raise ValueError(f"{what}: a {kv.name} pool ({np.dtype(pool.dtype).name} codes) needs "
                         f"its scales")
    want = scales_shape(kv, pool_shape)
    got = tuple(int(n) for n in getattr(scales, "shape", ()))
    if got != want or np.dtype(getattr(scales, "dtype", None)) != SCALE_DTYPE:
        raise ValueError(
            f"{what}: a {kv.name} pool of shape {pool_shape} needs float32 scales of shape "
            f"{want}, got {np.dtype(getattr(scales, 'dtype', None)).name} {got}"
        )
    require_cuda_array(scales, what, "scales")
    require_c_contiguous(scales, what, "scales")
    if pool_shape[5] % 4:
        raise ValueError(
            f"{what}: a {kv.name} pool needs head_dim a multiple of 4 (the copy and "
            f"attention kernels move whole 4-byte words), got {pool_shape[5]}"
        )
    return kv


def row_threads(head_dim: int) -> int:
    """Threads per (token, head) CUDA block: a power of two, at least head_dim up to
    `MAX_ROW_THREADS`."""
    threads = 1
    while threads < min(head_dim, MAX_ROW_THREADS):
        threads *= 2
    return threads


def _rows(pool: Any) -> Any:
    """The pool as rows ``[L * 2 * num_slots, num_kv_heads, head_dim]`` (a view)."""
    num_layers, _, num_blocks, block_size, num_kv_heads, head_dim = pool.shape
    return pool.reshape(num_layers * 2 * num_blocks * block_size, num_kv_heads, head_dim)


def _scale_rows(kv: KVDtype, scales: Any) -> Any:
    """The scales as 2-D rows: ``[L * 2 * num_slots, num_kv_heads]`` (int8) or ``[L * 2,
    num_kv_heads]`` (FP8)."""
    if kv.paged_scales:
        num_layers, _, num_blocks, block_size, num_kv_heads, _ = scales.shape
        return scales.reshape(num_layers * 2 * num_blocks * block_size, num_kv_heads)
    num_layers, _, num_kv_heads = scales.shape
    return scales.reshape(num_layers * 2, num_kv_heads)


def write_slots_quantized(
    pool: Any,
    scales: Any,
    layer: int,
    k: Any,
    v: Any,
    slot_mapping: Any,
    *,
    stream: Any = None,
    buffers: DeviceBuffers | None = None,
) -> None:
    """Quantize ``k, v[num_tokens, num_kv_heads, head_dim]`` into a quantized `pool` at
    `slot_mapping` (int8: and their scales into `scales`).

    `pool` and `scales` are as in the module docstring; `k` and `v` are float16 or
    float32 (device or NumPy, the same dtype for both); the rest is the contract of
    `write_slots` (negative slots are padding; ``stream=None`` the default stream), and
    so are its `ValueError` cases, plus: scales missing or of another shape or dtype, head_dim
    not a multiple of 4.
    """
    what = "write_slots_quantized"
    shape, layer, slots, k, v = check_write(pool, layer, k, v, slot_mapping, what,
                                            pool_dtypes=QUANTIZED_DTYPES,
                                            kv_dtypes=SUPPORTED_DTYPES)
    kv = check_scales(pool, scales, shape, what)
    if slots is None or int(slots.shape[0]) == 0:
        return  # nothing but padding (or nothing at all)
    _, _, num_blocks, block_size, num_kv_heads, head_dim = shape
    num_slots = num_blocks * block_size
    buffers = default_buffers() if buffers is None else buffers
    slots, k, v = upload_write_inputs(slots, k, v, stream, buffers)
    kernel = WRITE_KERNELS[kv.storage]
    kernel[(int(slots.shape[0]), num_kv_heads), row_threads(head_dim), stream_arg(stream)](
        _rows(pool), _scale_rows(kv, scales), k, v, slots, 2 * layer * num_slots, num_slots,
        2 * layer, buffers.errors,
    )


def gather_kv_dequantized(
    pool: Any,
    scales: Any,
    layer: int,
    block_tables: Any,
    seq_lens: Any,
    starts: Any = None,
    *,
    dtype: str = "float32",
    stream: Any = None,
    buffers: DeviceBuffers | None = None,
) -> tuple[Any, Any]:
    """`gather_kv` over a quantized pool: returns two new device arrays ``k, v[total_tokens,
    num_kv_heads, head_dim]`` of `dtype` (float16 or float32) holding ``code * scale``
    (computed in float32). Arguments and errors as in `gather_kv`, plus the scale checks
    of `write_slots_quantized`.
    """
    what = "gather_kv_dequantized"
    if dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"{what}: dtype must be one of {SUPPORTED_DTYPES}, got {dtype!r}")
    shape, layer, table, first, cu_out = check_gather(pool, layer, block_tables, seq_lens,
                                                      starts, what, QUANTIZED_DTYPES,
                                                      stream=stream)
    kv = check_scales(pool, scales, shape, what)
    _, _, num_blocks, block_size, num_kv_heads, head_dim = shape
    total = int(cu_out[-1])
    api = device.cuda_api()
    k_out = api.device_array((total, num_kv_heads, head_dim), dtype=dtype)
    v_out = api.device_array((total, num_kv_heads, head_dim), dtype=dtype)
    if total == 0:
        return k_out, v_out
    buffers = default_buffers() if buffers is None else buffers
    if not is_cuda_array(table):
        table = buffers.upload("block_tables", table, stream)
    num_slots = num_blocks * block_size
    kernel = GATHER_KERNELS[kv.storage]
    kernel[(total, num_kv_heads), row_threads(head_dim), stream_arg(stream)](
        _rows(pool), _scale_rows(kv, scales), k_out, v_out, table,
        buffers.upload("cu_out", cu_out, stream), buffers.upload("starts", first, stream),
        2 * layer * num_slots, num_slots, 2 * layer, block_size, num_blocks, buffers.errors,
    )
    return k_out, v_out
