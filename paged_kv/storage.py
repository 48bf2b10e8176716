"""KV storage: the GPU block pool and the host block pool, and the only owner of them.

Pool layout
-----------
One array per side, both of shape::

    [num_layers, 2, num_blocks, block_size, num_kv_heads, head_dim]
                 ^ 0 = K, 1 = V

in the model's dtype (float16 or float32), C-contiguous. A token's slot is
``slot = block_id * block_size + offset`` (``0 <= offset < block_size``); its key in
layer ``l`` is ``pool[l, 0, block_id, offset]`` (``[num_kv_heads, head_dim]``) and its
value ``pool[l, 1, block_id, offset]``. One block of one layer and one of K/V,
``pool[l, kv, block_id]``, is a contiguous ``block_size * num_kv_heads * head_dim``
run of elements, so copying a block is ``2 * num_layers`` contiguous runs. No block
id is reserved: every id in ``[0, num_blocks)`` holds data; block tables pad with -1.

* GPU pool: a Numba device array (``cuda.device_array``), zeroed at construction.
* Host pool: page-locked host memory mapped into the device's address space
  (``cuda.mapped_array``), zeroed at construction, so the swap kernel reads and
  writes it directly. Under the CUDA simulator ``cuda.mapped_array`` returns the
  simulator's array type and the same code runs. With ``num_host_blocks == 0`` the
  host pool is an empty device array (no pinned allocation of zero bytes).

`KVStorage` holds no allocation state: which block belongs to whom is the cache
manager's business (`paged_kv.cache`). Its methods take and return NumPy arrays;
every one validates before it launches (see `paged_kv.kernels`), so a bad argument
raises `ValueError` and changes no byte.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import cuda

from paged_kv.checks import require_int
from paged_kv.config import ModelSpec
from paged_kv.kernels import copy_blocks, gather_kv, swap_blocks, write_slots


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
    tests read whole pools with `gpu_snapshot` and `host_snapshot`.
    """

    def __init__(
        self, model: ModelSpec, block_size: int, num_gpu_blocks: int, num_host_blocks: int
    ) -> None:
        if not isinstance(model, ModelSpec):
            raise ValueError(f"KVStorage.model must be a ModelSpec, got {model!r}")
        self._model = model
        self._block_size = require_int("KVStorage.block_size", block_size, 1)
        self._num_gpu_blocks = require_int("KVStorage.num_gpu_blocks", num_gpu_blocks, 1)
        self._num_host_blocks = require_int("KVStorage.num_host_blocks", num_host_blocks, 0)
        dtype = np.dtype(model.dtype)
        self._gpu_pool = _zeroed(cuda.device_array(self._shape(self._num_gpu_blocks), dtype))
        host_shape = self._shape(self._num_host_blocks)
        if self._num_host_blocks:
            self._host_pool = _zeroed(cuda.mapped_array(host_shape, dtype))
        else:
            self._host_pool = cuda.device_array(host_shape, dtype)

    def _shape(self, num_blocks: int) -> tuple[int, ...]:
        m = self._model
        return (m.num_layers, 2, num_blocks, self._block_size, m.num_kv_heads, m.head_dim)

    # -- data operations -------------------------------------------------------------

    def write(self, layer: int, k: np.ndarray, v: np.ndarray, slot_mapping: Any) -> None:
        """Write ``k, v[num_tokens, num_kv_heads, head_dim]`` of `layer` at `slot_mapping`.

        ``slot_mapping[i] = block_id * block_size + offset``; negative = padding. See
        `paged_kv.kernels.write_slots` for the rejected inputs.
        """
        write_slots(self._gpu_pool, layer, k, v, slot_mapping)

    def gather(
        self, layer: int, block_tables: Any, seq_lens: Any, starts: Any = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Read positions ``starts[s] .. seq_lens[s] - 1`` of each sequence of `layer`.

        Returns NumPy ``k, v[total_tokens, num_kv_heads, head_dim]``, the sequences
        concatenated in order. See `paged_kv.kernels.gather_kv`.
        """
        k, v = gather_kv(self._gpu_pool, layer, block_tables, seq_lens, starts)
        return k.copy_to_host(), v.copy_to_host()

    def copy_blocks(self, pairs: Any) -> None:
        """Copy GPU block ``src`` onto GPU block ``dst`` for each ``(src, dst)``, all layers.

        See `paged_kv.kernels.copy_blocks` (no dst twice, no dst that is also a src).
        """
        copy_blocks(self._gpu_pool, pairs)

    def swap_out(self, pairs: Any) -> None:
        """Copy GPU block ``src`` to host block ``dst`` for each ``(src, dst)``."""
        swap_blocks(self._gpu_pool, self._host_pool, pairs)

    def swap_in(self, pairs: Any) -> None:
        """Copy host block ``src`` to GPU block ``dst`` for each ``(src, dst)``."""
        swap_blocks(self._host_pool, self._gpu_pool, pairs)

    # -- inspection --------------------------------------------------------------------

    def gpu_snapshot(self) -> np.ndarray:
        """A NumPy copy of the whole GPU pool."""
        return self._gpu_pool.copy_to_host()

    def host_snapshot(self) -> np.ndarray:
        """A NumPy copy of the whole host pool, after every launched kernel finished."""
        cuda.synchronize()  # the swap kernel writes mapped memory asynchronously
        if isinstance(self._host_pool, np.ndarray):  # a mapped array is an ndarray on a GPU
            return np.array(self._host_pool, copy=True)
        return self._host_pool.copy_to_host()

    @property
    def gpu_pool(self) -> Any:
        """The GPU pool device array (layout in the module docstring)."""
        return self._gpu_pool

    @property
    def host_pool(self) -> Any:
        """The host pool: a mapped pinned array (simulator: its array type)."""
        return self._host_pool

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
        """Bytes of the GPU pool: ``num_gpu_blocks * model.bytes_per_block(block_size)``."""
        return self._num_gpu_blocks * self._model.bytes_per_block(self._block_size)

    @property
    def nbytes_host(self) -> int:
        """Bytes of the host pool: ``num_host_blocks * model.bytes_per_block(block_size)``."""
        return self._num_host_blocks * self._model.bytes_per_block(self._block_size)

    def __repr__(self) -> str:
        return (
            f"KVStorage(model={self._model.name!r}, block_size={self._block_size}, "
            f"num_gpu_blocks={self._num_gpu_blocks}, num_host_blocks={self._num_host_blocks}, "
            f"dtype={self._model.dtype})"
        )
