"""KV storage: the GPU block pool and the host block pool, and the only owner of them.

Pool layout
-----------
One array per side, both of shape::

    [num_layers, 2, num_blocks, block_size, num_kv_heads, head_dim]
                 ^ 0 = K, 1 = V

in the model's KV dtype (``model.kv``: float16, float32, or for a quantized cache int8
codes or FP8 E4M3 bit patterns in uint8), C-contiguous. A token's slot is
``slot = block_id * block_size + offset`` (``0 <= offset < block_size``); its key in
layer ``l`` is ``pool[l, 0, block_id, offset]`` (``[num_kv_heads, head_dim]``) and its
value ``pool[l, 1, block_id, offset]``. One block of one layer and one of K/V,
``pool[l, kv, block_id]``, is a contiguous ``block_size * num_kv_heads * head_dim``
run of elements, so copying a block is ``2 * num_layers`` contiguous runs, and
consecutive block ids are consecutive runs (a swap of ``n`` consecutive blocks is one
2-D memcpy). No block id is reserved: every id in ``[0, num_blocks)`` holds data;
block tables pad with -1.

Quantized caches (`paged_kv.core.kv_dtype`) keep float32 scales beside the pools. int8 has
one per token and KV head, in arrays paged like the pools, ``[num_layers, 2,
num_blocks, block_size, num_kv_heads, 1]``, one for the GPU pool and one for the host
pool: every operation that moves a block's codes (block copy, swap, either path) moves
its scales in the same call, on the same stream, under the same fences, so
copy-on-write, swapping and prefix-cache hits carry them with the data. FP8 has static
scales ``[num_layers, 2, num_kv_heads]`` (vLLM's k_scale / v_scale, per KV head, or one
value for all: per tensor), fixed at construction and shared by both pools: a block's
bytes mean the same wherever they are. `write` quantizes (`paged_kv.gpu.kernels.quantized`),
`gather` dequantizes to the model's compute dtype, and paged attention reads the codes
with `gpu_scales`.

* GPU pool: a device array, zeroed at construction.
* Host pool: page-locked host memory mapped into the device's address space
  (``cuda.mapped_array``), zeroed at construction: the copy engines reach it directly
  (``swap_method="memcpy"``) and so can the swap kernel (``"kernel"``). Under the CUDA
  simulator both are the simulator's arrays and the same code runs. With
  ``num_host_blocks == 0`` the host pool is an empty device array.

Streams and in-flight blocks
----------------------------
Every data operation takes ``stream=None`` (keyword; None is the default stream) and
only enqueues its work there. The rule that keeps bytes right across streams: **no
work may write a block that in-flight work on another stream still reads, nor read or
write a block that in-flight work on another stream still writes.** `KVStorage`
enforces it for both pools with `paged_kv.gpu.fences.BlockFences`: each operation makes
its stream wait (``cuStreamWaitEvent``) for the events of the earlier operations on
other streams that touched the same blocks, and records an event for the blocks it
touches. So the cache manager may free a swapped-out or copied-from block, and reuse
its id, as soon as the call returns: a later write into that block (slot write, COW
destination, swap in) is ordered after the copy that reads it, on the device, without
the host waiting. While all work uses one stream nothing is recorded at all. Code that
launches its own kernels on the pools (paged attention) declares what it touches with
`KVStorage.access`. The host reads the pools only after `synchronize` (the snapshots
and `gather` do it).

`KVStorage` holds no allocation state: which block belongs to whom is the cache
manager's business (`paged_kv.cache`). Its methods take NumPy (or device) arrays and
return NumPy arrays; every one validates before it launches (see `paged_kv.gpu.kernels`),
so a bad host argument raises `ValueError` and changes no byte. Ids given as device
arrays are checked by the kernels (`paged_kv.gpu.kernels._validate`); what they skipped is
reported as a `ValueError` by the next `synchronize` (or `gather`, or snapshot).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from paged_kv.core.config import ModelSpec
from paged_kv.core.kv_dtype import SCALE_DTYPE, SCALE_PER_HEAD
from paged_kv.core.validate import require_int
from paged_kv.gpu import device
from paged_kv.gpu.device_block_table import DeviceBlockTable
from paged_kv.gpu.fences import BlockFences, stream_arg, to_host
from paged_kv.gpu.kernels import (
    DEFAULT_SWAP_METHOD,
    SWAP_METHODS,
    DeviceBuffers,
    copy_blocks,
    gather_kv,
    gather_kv_dequantized,
    swap_blocks,
    write_slots,
    write_slots_quantized,
)
from paged_kv.gpu.kernels._launch import UploadCounts
from paged_kv.gpu.kernels._validate import is_cuda_array
from paged_kv.gpu.kernels.quantized import scales_shape
from paged_kv.gpu.step_indices import StepIndices, upload_step


def _zeroed(array: Any) -> Any:
    """Zero `array` in place (device arrays by a device-side fill, not a host upload).

    The zero has the array's own dtype, so the fill needs no int -> float16 cast.
    """
    if array.size:
        array[:] = np.dtype(array.dtype).type(0)
    return array


class KVStorage:
    """The GPU and host KV block pools of one model, and the data operations on them.

    ``KVStorage(model, block_size, num_gpu_blocks, num_host_blocks)`` allocates both
    pools (layout in the module docstring), zero-initialised. The cache manager calls
    `write`, `gather`, `copy_blocks`, `swap_out` and `swap_in` with block ids it owns;
    tests read whole pools with `gpu_snapshot` and `host_snapshot`. `swap_method`
    chooses the swap path (``"memcpy"``: copy engines, ``"kernel"``: the mapped-memory
    kernel; see `paged_kv.gpu.kernels.swap`); each swap call may override it.
    `fp8_scales` (FP8 caches only) are the static scales: a number (per tensor) or an
    array broadcastable to ``[num_layers, 2, num_kv_heads]``, positive and finite;
    default 1.0 (vLLM's default without calibration;
    `paged_kv.reference.quantization.fp8_scales_for` calibrates them).
    """

    def __init__(
        self,
        model: ModelSpec,
        block_size: int,
        num_gpu_blocks: int,
        num_host_blocks: int,
        *,
        swap_method: str = DEFAULT_SWAP_METHOD,
        fp8_scales: Any = None,
    ) -> None:
        if not isinstance(model, ModelSpec):
            raise ValueError(f"KVStorage.model must be a ModelSpec, got {model!r}")
        if swap_method not in SWAP_METHODS:
            raise ValueError(
                f"KVStorage.swap_method must be one of {SWAP_METHODS}, got {swap_method!r}"
            )
        self._model = model
        self._block_size = require_int("KVStorage.block_size", block_size, 1)
        self._num_gpu_blocks = require_int("KVStorage.num_gpu_blocks", num_gpu_blocks, 1)
        self._num_host_blocks = require_int("KVStorage.num_host_blocks", num_host_blocks, 0)
        self._swap_method = swap_method
        kv = model.kv
        if fp8_scales is not None and not (kv.quantized and not kv.paged_scales):
            raise ValueError(f"KVStorage.fp8_scales: only an FP8 cache has static scales; "
                             f"this model's KV dtype is {kv.name}")
        static_scales = self._static_scales(fp8_scales) if kv.scale == SCALE_PER_HEAD else None
        self._gpu_pool = self._pool(self._num_gpu_blocks, kv.storage, host=False)
        self._host_pool = self._pool(self._num_host_blocks, kv.storage, host=True)
        self._gpu_scales = self._host_scales = None
        if kv.paged_scales:
            self._gpu_scales = self._pool(self._num_gpu_blocks, SCALE_DTYPE, host=False,
                                          scales=True)
            self._host_scales = self._pool(self._num_host_blocks, SCALE_DTYPE, host=True,
                                           scales=True)
        elif static_scales is not None:
            self._gpu_scales = device.cuda_api().to_device(static_scales)
        self._buffers = DeviceBuffers()
        self._step_tables = DeviceBlockTable(self._buffers)  # resident between steps
        self._gpu_fences = BlockFences(self._num_gpu_blocks, device.new_event)
        self._host_fences = BlockFences(self._num_host_blocks, device.new_event)
        self._device_ids = False  # ids given on the device since the last error check

    def _shape(self, num_blocks: int) -> tuple[int, ...]:
        m = self._model
        return (m.num_layers, 2, num_blocks, self._block_size, m.num_kv_heads, m.head_dim)

    def _pool(self, num_blocks: int, dtype: Any, *, host: bool, scales: bool = False) -> Any:
        """A zeroed pool (or, with `scales`, its paged scale array): device memory, or
        mapped pinned host memory for a non-empty host side."""
        api = device.cuda_api()
        shape = self._shape(num_blocks)
        if scales:
            shape = scales_shape(self._model.kv, shape)
        if host and num_blocks:
            return _zeroed(api.mapped_array(shape, dtype))
        return _zeroed(api.device_array(shape, dtype))

    def _static_scales(self, fp8_scales: Any) -> np.ndarray:
        """FP8 scales ``[num_layers, 2, num_kv_heads]`` from `fp8_scales` (class doc)."""
        m = self._model
        shape = (m.num_layers, 2, m.num_kv_heads)
        value = 1.0 if fp8_scales is None else fp8_scales
        try:
            scales = np.broadcast_to(np.asarray(value, dtype=SCALE_DTYPE), shape).copy()
        except (ValueError, TypeError):
            raise ValueError(f"KVStorage.fp8_scales must be a number or broadcast to "
                             f"{shape}, got {fp8_scales!r}") from None
        if not np.all(np.isfinite(scales) & (scales > 0)):
            raise ValueError(f"KVStorage.fp8_scales must be positive and finite, got "
                             f"{fp8_scales!r}")
        return scales

    # -- data operations -------------------------------------------------------------

    def write(
        self, layer: int, k: Any, v: Any, slot_mapping: Any, *, stream: Any = None
    ) -> None:
        """Write ``k, v[num_tokens, num_kv_heads, head_dim]`` of `layer` at `slot_mapping`.

        ``slot_mapping[i] = block_id * block_size + offset``; negative = padding. See
        `paged_kv.gpu.kernels.write_slots` for the rejected inputs.
        """
        with self.access(stream, gpu_writes=self._slot_blocks(slot_mapping)):
            if self._gpu_scales is None:
                write_slots(self._gpu_pool, layer, k, v, slot_mapping, stream=stream,
                            buffers=self._buffers)
            else:
                write_slots_quantized(self._gpu_pool, self._gpu_scales, layer, k, v,
                                      slot_mapping, stream=stream, buffers=self._buffers)

    def gather(
        self,
        layer: int,
        block_tables: Any,
        seq_lens: Any,
        starts: Any = None,
        *,
        stream: Any = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Read positions ``starts[s] .. seq_lens[s] - 1`` of each sequence of `layer`.

        Returns NumPy ``k, v[total_tokens, num_kv_heads, head_dim]``, the sequences
        concatenated in order, once the gather on `stream` has completed. See
        `paged_kv.gpu.kernels.gather_kv`.
        """
        with self.access(stream, gpu_reads=self._table_blocks(block_tables)):
            if self._gpu_scales is None:
                k, v = gather_kv(self._gpu_pool, layer, block_tables, seq_lens, starts,
                                 stream=stream, buffers=self._buffers)
            else:
                k, v = gather_kv_dequantized(self._gpu_pool, self._gpu_scales, layer,
                                             block_tables, seq_lens, starts,
                                             dtype=self._model.dtype, stream=stream,
                                             buffers=self._buffers)
        k_host, v_host = to_host(k, stream), to_host(v, stream)  # waits for the gather
        if self._device_ids:
            self.synchronize()
        return k_host, v_host

    def copy_blocks(self, pairs: Any, *, stream: Any = None) -> None:
        """Copy GPU block ``src`` onto GPU block ``dst`` for each ``(src, dst)``, all layers.

        See `paged_kv.gpu.kernels.copy_blocks` (no dst twice, no dst that is also a src).
        """
        src, dst = self._pair_blocks(pairs)
        with self.access(stream, gpu_reads=src, gpu_writes=dst):
            copy_blocks(self._gpu_pool, pairs, stream=stream, buffers=self._buffers)
            if self._host_scales is not None:  # paged scales move with their blocks
                copy_blocks(self._gpu_scales, pairs, stream=stream, buffers=self._buffers)

    def swap_out(self, pairs: Any, *, stream: Any = None, method: str | None = None) -> None:
        """Copy GPU block ``src`` to host block ``dst`` for each ``(src, dst)``."""
        src, dst = self._pair_blocks(pairs)
        with self.access(stream, gpu_reads=src, host_writes=dst):
            self._swap(self._gpu_pool, self._host_pool, self._gpu_scales, self._host_scales,
                       pairs, stream, method)

    def swap_in(self, pairs: Any, *, stream: Any = None, method: str | None = None) -> None:
        """Copy host block ``src`` to GPU block ``dst`` for each ``(src, dst)``."""
        src, dst = self._pair_blocks(pairs)
        with self.access(stream, host_reads=src, gpu_writes=dst):
            self._swap(self._host_pool, self._gpu_pool, self._host_scales, self._gpu_scales,
                       pairs, stream, method)

    def _swap(self, src: Any, dst: Any, src_scales: Any, dst_scales: Any, pairs: Any,
              stream: Any, method: str | None) -> None:
        """Swap the codes, then (paged scales) the scales of the same blocks."""
        method = method or self._swap_method
        swap_blocks(src, dst, pairs, stream=stream, method=method, buffers=self._buffers)
        if self._host_scales is not None:
            swap_blocks(src_scales, dst_scales, pairs, stream=stream, method=method,
                        buffers=self._buffers)

    # -- a step's indices, uploaded once for every layer (paged_kv.gpu.step_indices) --

    def upload_step(self, slot_mapping: Any, block_tables: Any, seq_lens: Any,
                    row_seq: Any, row_len: Any) -> StepIndices:
        """Check and upload a step's slot mapping, block tables and query tiles once
        (at most two copies; the tables stay resident and only changed rows travel);
        see `paged_kv.gpu.step_indices.upload_step` for the arguments. The result is
        valid until the next call."""
        return upload_step(self._gpu_pool, self._buffers, self._step_tables,
                           self._model.q_heads, slot_mapping, block_tables, seq_lens,
                           row_seq, row_len)

    def after_default_stream(self, stream: Any) -> None:
        """Make `stream` wait for the work enqueued so far on the default stream, where
        `upload_step` puts a step's indices: one event recorded there, waited for on
        `stream`. A no-op for the default stream itself. Needed for a stream that does not
        wait for the default stream on its own (a non-blocking one, such as PyTorch's)."""
        if stream is None:
            return
        event = device.new_event()
        event.record(stream_arg(None))
        event.wait(stream_arg(stream))

    def write_step(self, layer: int, k: Any, v: Any, step: StepIndices, *,
                   stream: Any = None) -> None:
        """`write` at the slots of an uploaded step (`upload_step`): no index upload."""
        with self.access(stream, gpu_writes=step.write_blocks):
            if self._gpu_scales is None:
                write_slots(self._gpu_pool, layer, k, v, step.slot_mapping, stream=stream,
                            buffers=self._buffers)
            else:
                write_slots_quantized(self._gpu_pool, self._gpu_scales, layer, k, v,
                                      step.slot_mapping, stream=stream, buffers=self._buffers)

    @property
    def buffers(self) -> DeviceBuffers:
        """The device buffers every input of this storage's operations is uploaded into
        (paged attention over its pools uses them too), with their upload counts."""
        return self._buffers

    def upload_counts(self) -> UploadCounts:
        """Host-to-device input copies so far, by input name (an immutable snapshot;
        `paged_kv.gpu.kernels._launch.UploadCounts`)."""
        return self._buffers.upload_counts()

    @contextmanager
    def access(
        self,
        stream: Any = None,
        *,
        gpu_reads: Any = (),
        gpu_writes: Any = (),
        host_reads: Any = (),
        host_writes: Any = (),
    ) -> Iterator[None]:
        """Fence work that the body enqueues on `stream` and that touches these blocks.

        On entry `stream` waits for in-flight work on other streams that the body must
        follow (module docstring); on a normal exit one event is recorded for the blocks
        touched. Block sets are id sequences; None means every block of that pool.
        Kernels outside this module that read or write the pools (paged attention)
        wrap their launch in it.
        """
        self._gpu_fences.wait(stream, gpu_reads, gpu_writes)
        self._host_fences.wait(stream, host_reads, host_writes)
        yield
        self._gpu_fences.record(stream, gpu_reads, gpu_writes)
        self._host_fences.record(stream, host_reads, host_writes)

    def synchronize(self) -> None:
        """Wait for all work on the device; then report ids the kernels skipped.

        Raises `ValueError` when a kernel skipped out-of-range ids given as device
        arrays since the last check (their bytes were not moved).
        """
        device.cuda_api().synchronize()
        self._gpu_fences.reset()
        self._host_fences.reset()
        if self._device_ids:
            self._device_ids = False
            skipped = self._buffers.take_errors()
            if skipped:
                raise ValueError(
                    f"KVStorage: kernels skipped {skipped} out-of-range ids given as device "
                    f"arrays (nothing was written for them)"
                )

    # -- which blocks an operation touches (for the fences) ----------------------------

    def _slot_blocks(self, slot_mapping: Any) -> Any:
        if is_cuda_array(slot_mapping):
            self._device_ids = True
            return None
        slots = _host_ints(slot_mapping)
        return slots[slots >= 0] // self._block_size

    def _table_blocks(self, block_tables: Any) -> Any:
        if is_cuda_array(block_tables):
            self._device_ids = True
            return None
        if isinstance(block_tables, (list, tuple)):
            try:
                flat = list(itertools.chain.from_iterable(block_tables))
            except TypeError:
                return ()
            return _host_ints(flat)
        return _host_ints(block_tables)

    def _pair_blocks(self, pairs: Any) -> tuple[Any, Any]:
        if is_cuda_array(pairs):
            self._device_ids = True
            return None, None
        ids = _host_ints(pairs)
        if ids.size % 2:
            return (), ()
        ids = ids.reshape(-1, 2)
        return ids[:, 0], ids[:, 1]

    # -- inspection --------------------------------------------------------------------

    def gpu_snapshot(self) -> np.ndarray:
        """A NumPy copy of the whole GPU pool, after all work on the device finished."""
        self.synchronize()
        return self._gpu_pool.copy_to_host()

    def host_snapshot(self) -> np.ndarray:
        """A NumPy copy of the whole host pool, after all work on the device finished."""
        self.synchronize()  # swaps write the host pool asynchronously
        return device.host_copy(self._host_pool)

    def gpu_scales_snapshot(self) -> np.ndarray | None:
        """A NumPy copy of the GPU pool's scales (int8: paged, FP8: static), after all
        work on the device finished; None for an unquantized cache."""
        self.synchronize()
        return None if self._gpu_scales is None else self._gpu_scales.copy_to_host()

    def host_scales_snapshot(self) -> np.ndarray | None:
        """A NumPy copy of the host pool's paged scales (int8 only; FP8's static scales
        are `gpu_scales_snapshot`'s), after all work on the device finished; else None."""
        self.synchronize()
        return None if self._host_scales is None else device.host_copy(self._host_scales)

    @property
    def gpu_scales(self) -> Any:
        """The scales the GPU pool's codes need (device array: int8 ``[num_layers, 2,
        num_blocks, block_size, num_kv_heads, 1]``, FP8 ``[num_layers, 2,
        num_kv_heads]``), or None for an unquantized cache."""
        return self._gpu_scales

    @property
    def gpu_pool(self) -> Any:
        """The GPU pool device array (layout in the module docstring)."""
        return self._gpu_pool

    @property
    def host_pool(self) -> Any:
        """The host pool: a mapped pinned array (simulator: its array type)."""
        return self._host_pool

    @property
    def swap_method(self) -> str:
        """The default swap path of `swap_out` and `swap_in`: "memcpy" or "kernel"."""
        return self._swap_method

    @property
    def model(self) -> ModelSpec:
        """The model whose KV the pools hold."""
        return self._model

    @property
    def block_size(self) -> int:
        """Token slots per block."""
        return self._block_size

    @property
    def num_gpu_blocks(self) -> int:
        """Blocks in the GPU pool."""
        return self._num_gpu_blocks

    @property
    def num_host_blocks(self) -> int:
        """Blocks in the host pool."""
        return self._num_host_blocks

    @property
    def nbytes_gpu(self) -> int:
        """Bytes of the GPU pool: ``num_gpu_blocks * model.bytes_per_block(block_size)``
        (codes and int8's paged scales; FP8's static scales are not counted)."""
        return self._num_gpu_blocks * self._model.bytes_per_block(self._block_size)

    @property
    def nbytes_host(self) -> int:
        """Bytes of the host pool: ``num_host_blocks * model.bytes_per_block(block_size)``."""
        return self._num_host_blocks * self._model.bytes_per_block(self._block_size)

    def __repr__(self) -> str:
        return (
            f"KVStorage(model={self._model.name!r}, block_size={self._block_size}, "
            f"num_gpu_blocks={self._num_gpu_blocks}, num_host_blocks={self._num_host_blocks}, "
            f"dtype={self._model.dtype}, kv_dtype={self._model.kv.name}, "
            f"swap_method={self._swap_method!r})"
        )


def _host_ints(obj: Any) -> np.ndarray:
    """`obj` as a flat int64 array, or empty when it is no integer array (the wrapper
    then refuses it, so the fences need not know its blocks)."""
    try:
        arr = np.asarray(obj)
    except (ValueError, TypeError):
        return np.zeros(0, dtype=np.int64)
    if arr.dtype.kind not in "iu":
        return np.zeros(0, dtype=np.int64)
    return arr.astype(np.int64, copy=False).ravel()
