"""Every kernel in `KERNELS` is launched with a signature the compile check compiles.

`paged_kv.gpu.kernels.compile_check` compiles ``signature(variant)`` of each entry ahead
of time and reads its registers and spills; that is worth something only if the
wrappers launch exactly those signatures. `launch_every_kernel` drives every wrapper so
that each entry of `KERNELS` runs at least once (the copy kernels, the quantized write
and gather for int8 and FP8, and every paged-attention variant: 3 thread counts x 1 or
4 queries x float, int8, FP8). Then:

* under the simulator (here), a recorder on the simulator's kernel launch types each
  argument as numba types it on a GPU (``numba.typeof``), and each launch must match
  ``signature(variant)`` of its entry for one of the entry's variants;
* on a GPU, each dispatcher's compiled ``signatures`` must hold one of them.
"""

from __future__ import annotations

import numpy as np
import pytest

from paged_kv.core.config import SUPPORTED_DTYPES
from paged_kv.core.kv_dtype import QUANTIZED_BY_STORAGE
from paged_kv.gpu.device import cuda_api, is_simulator
from paged_kv.gpu.kernels import (
    KERNELS,
    copy_blocks,
    decode_attention,
    gather_kv,
    gather_kv_dequantized,
    swap_blocks,
    write_slots,
    write_slots_quantized,
)
from paged_kv.gpu.kernels._attention_kernel import THREAD_VARIANTS
from paged_kv.gpu.kernels.quantized import scales_shape

pytestmark = [pytest.mark.device,
              pytest.mark.usefixtures("fast_simulator_barriers")]  # conftest: speed only
cuda = cuda_api()

#: One head_dim per attention thread variant (head_dim <= threads, a multiple of 4).
HEAD_DIMS = {32: 8, 128: 36, 256: 132}


def _entry(name: str) -> tuple:
    kernel, signature, *rest = KERNELS[name]
    return kernel, signature, rest[0] if rest else SUPPORTED_DTYPES


def _pool(dtype: str, head_dim: int, num_kv_heads: int = 1, num_blocks: int = 3,
          block_size: int = 2):
    shape = (1, 2, num_blocks, block_size, num_kv_heads, head_dim)
    return cuda.to_device(np.zeros(shape, dtype=dtype)), shape


def launch_every_kernel() -> None:
    """Launch each entry of `KERNELS` at least once, at sizes the simulator runs fast."""
    rng = np.random.default_rng(0)
    pool, shape = _pool("float32", 4, num_kv_heads=2)
    host = cuda.mapped_array(shape, np.float32)
    host[:] = np.float32(0)
    k = rng.standard_normal((2, 2, 4)).astype(np.float32)
    write_slots(pool, 0, k, k, [0, 1])
    gather_kv(pool, 0, [[0]], [2])
    copy_blocks(pool, [(0, 1)])
    swap_blocks(pool, host, [(0, 1)], method="kernel")
    for storage, kv in QUANTIZED_BY_STORAGE.items():
        qpool, qshape = _pool(storage, 4)
        scales = cuda.to_device(np.ones(scales_shape(kv, qshape), dtype=np.float32))
        write_slots_quantized(qpool, scales, 0, k[:, :1], k[:, :1], [0, 1])
        gather_kv_dequantized(qpool, scales, 0, [[0]], [2])
    for threads in THREAD_VARIANTS:
        head_dim = HEAD_DIMS[threads]
        for storage in ("float16", *QUANTIZED_BY_STORAGE):
            apool, ashape = _pool(storage, head_dim)
            kv = QUANTIZED_BY_STORAGE.get(storage)
            scales = None if kv is None else cuda.to_device(
                np.ones(scales_shape(kv, ashape), dtype=np.float32))
            for q_heads in (1, 2):  # no GQA: 1 query per tile; GQA: 4 queries per tile
                q = rng.standard_normal((1, q_heads, head_dim)).astype(np.float32)
                decode_attention(apool, 0, q, [[0, 1]], [3], kv_scales=scales)
    cuda.synchronize()


def _numba_type(arg):
    """The numba type a GPU launch gives `arg` (the simulator wraps NumPy arrays)."""
    from numba import typeof

    return typeof(getattr(arg, "_ary", arg))


@pytest.mark.skipif(not is_simulator(), reason="records the simulator's launches")
def test_every_kernel_is_launched_with_one_of_its_compile_checked_signatures(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from numba.cuda.simulator.kernel import FakeCUDAKernel

    launched: dict[int, set[tuple]] = {}
    real_call = FakeCUDAKernel.__call__

    def recording_call(self, *args):
        if not self._device:
            launched.setdefault(id(self), set()).add(tuple(_numba_type(a) for a in args))
        return real_call(self, *args)

    monkeypatch.setattr(FakeCUDAKernel, "__call__", recording_call)
    launch_every_kernel()
    assert len(KERNELS) == 3 + 4 + 6 + 12  # copy, quantized write/gather, attention
    for name in KERNELS:
        kernel, signature, variants = _entry(name)
        compiled = {tuple(signature(v).args) for v in variants}
        assert id(kernel) in launched, f"{name} was never launched"
        assert launched[id(kernel)] <= compiled, (name, launched[id(kernel)] - compiled)


@pytest.mark.gpu(reason="the simulator interprets kernels, compiles none")
def test_every_kernel_compiled_at_launch_one_of_its_compile_checked_signatures() -> None:
    launch_every_kernel()
    for name in KERNELS:
        kernel, signature, variants = _entry(name)
        launched = {tuple(sig) for sig in kernel.signatures}  # this session's launches
        compiled = {tuple(signature(v).args) for v in variants}
        assert launched & compiled, (name, launched)
