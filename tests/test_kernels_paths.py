"""The copy kernels' fast paths and guards, each against a NumPy reference.

* copy units: every width of the unit rule (16, 8, 4, 2 bytes per thread step) is
  chosen where the rule says, and every wrapper is byte-exact with it;
* 64-bit addressing: the kernels' index arithmetic, run on the host with NumPy's
  fixed-width integers (int32 block ids and thread indices wrap there the way 32-bit
  arithmetic would on the device) over a fake pool of more than 2^31 elements;
* device-resident ids: never read back, yet a bad id writes nothing outside the pool;
* reused buffers, streams, swap runs, and aliasing refused by address and extent.
"""

from __future__ import annotations

import types as pytypes

import numpy as np
import pytest

from paged_kv.gpu.device import cuda_api, is_simulator
from paged_kv.gpu.kernels import (
    SWAP_METHODS,
    DeviceBuffers,
    copy_blocks,
    gather_kv,
    swap_blocks,
    write_slots,
)
from paged_kv.gpu.kernels import block_copy as block_copy_module
from paged_kv.gpu.kernels import gather as gather_module
from paged_kv.gpu.kernels import slot_write as slot_write_module
from paged_kv.gpu.kernels._units import plan_units
from paged_kv.gpu.kernels.copy_engine import block_runs

pytestmark = pytest.mark.device  # kernels: the simulator here, the GPU in gpu_check.sh

cuda = cuda_api()


def snapshot(arr) -> np.ndarray:
    cuda.synchronize()
    return np.array(arr, copy=True) if isinstance(arr, np.ndarray) else arr.copy_to_host()


def same_bytes(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


# -- copy units: the rule, and every wrapper exact at every width ---------------------

# (dtype, num_kv_heads, head_dim) -> bytes per thread step the rule must choose
WIDTH_CASES = [
    ("float16", 2, 4, 16),  # 16-byte tokens: one v2.u64 per step
    ("float16", 1, 4, 8),
    ("float16", 1, 2, 4),
    ("float16", 1, 3, 2),  # odd head_dim * heads: the 2-byte scalar fallback
    ("float32", 2, 2, 16),
    ("float32", 1, 2, 8),
    ("float32", 1, 3, 4),  # odd: the 4-byte scalar fallback
]


@pytest.mark.parametrize(("dtype", "heads", "head_dim", "width"), WIDTH_CASES)
def test_every_unit_width_is_chosen_and_exact(dtype, heads, head_dim, width) -> None:
    rng = np.random.default_rng(width)
    num_layers, num_blocks, block_size = 2, 6, 3
    shape = (num_layers, 2, num_blocks, block_size, heads, head_dim)
    before = rng.standard_normal(shape).astype(dtype)
    pool = cuda.to_device(before)
    itemsize = np.dtype(dtype).itemsize
    assert plan_units(heads * head_dim * itemsize, itemsize, pool)[2] == width

    expected = before.copy()
    mapping = np.array([7, -1, 0, 17])  # blocks 2, 0, 5
    k = rng.standard_normal((4, heads, head_dim)).astype(dtype)
    v = rng.standard_normal((4, heads, head_dim)).astype(dtype)
    write_slots(pool, 1, k, v, mapping)
    for i, slot in enumerate(mapping):
        if slot >= 0:
            expected[1, 0, slot // block_size, slot % block_size] = k[i]
            expected[1, 1, slot // block_size, slot % block_size] = v[i]
    assert same_bytes(snapshot(pool), expected)

    got_k, got_v = gather_kv(pool, 1, [[2, 0], [5]], [5, 3], [1, 2])
    rows = [(2, 1), (2, 2), (0, 0), (0, 1), (5, 2)]
    assert same_bytes(got_k.copy_to_host(), np.stack([expected[1, 0, b, o] for b, o in rows]))
    assert same_bytes(got_v.copy_to_host(), np.stack([expected[1, 1, b, o] for b, o in rows]))

    copy_blocks(pool, [(2, 4), (2, 1)])
    expected[:, :, 4] = expected[:, :, 2]
    expected[:, :, 1] = expected[:, :, 2]
    assert same_bytes(snapshot(pool), expected)

    for method in SWAP_METHODS:
        host = cuda.mapped_array((num_layers, 2, 3, block_size, heads, head_dim), dtype)
        host[:] = np.dtype(dtype).type(0)
        swap_blocks(pool, host, [(5, 0), (0, 2)], method=method)
        host_expected = np.zeros(host.shape, dtype)
        host_expected[:, :, 0] = expected[:, :, 5]
        host_expected[:, :, 2] = expected[:, :, 0]
        assert same_bytes(snapshot(host), host_expected)


def test_a_misaligned_view_falls_back_to_narrower_units() -> None:
    """k given as a device view starting 8 bytes into its allocation: 16-byte steps
    would be misaligned there, so the rule drops to 8 and the write stays exact."""
    rng = np.random.default_rng(3)
    shape = (1, 2, 4, 2, 1, 4)  # float16 tokens of 8 bytes
    before = rng.standard_normal(shape).astype("float16")
    pool = cuda.to_device(before)
    backing = rng.standard_normal((3, 1, 4)).astype("float16")
    k = cuda.to_device(backing)[1:]  # starts 8 bytes in
    assert plan_units(16, 2, pool, k)[2] == 8  # two tokens' runs: 16 B, but k is offset
    write_slots(pool, 0, k, k, [3, 6])
    expected = before.copy()
    expected[0, :, 1, 1] = backing[1]
    expected[0, :, 3, 0] = backing[2]
    assert same_bytes(snapshot(pool), expected)


# -- 64-bit addressing: the index math on the host, over a fake pool > 2^31 elements -----


class _Recorder:
    """A flat 'array' that stores nothing: reads return 0, writes are recorded."""

    def __init__(self, size: int) -> None:
        self.shape = (size,)
        self.writes: list[int] = []
        self.reads: list[int] = []

    def __getitem__(self, i):
        assert 0 <= int(i) < self.shape[0], i
        self.reads.append(int(i))
        return np.uint16(0)

    def __setitem__(self, i, value) -> None:
        assert 0 <= int(i) < self.shape[0], i
        self.writes.append(int(i))


def _run_on_host(kernel, block: int, *args) -> None:
    """Run `kernel`'s Python body for one CUDA block of one thread, its indices int32."""
    fn = getattr(kernel, "py_func", None) or kernel.fn
    stub = pytypes.SimpleNamespace(
        blockIdx=pytypes.SimpleNamespace(x=np.int32(block)),
        threadIdx=pytypes.SimpleNamespace(x=np.int32(0)),
        blockDim=pytypes.SimpleNamespace(x=np.int32(1)),
        atomic=pytypes.SimpleNamespace(add=lambda *a: None),
    )
    saved = fn.__globals__["cuda"]
    fn.__globals__["cuda"] = stub
    try:
        with np.errstate(over="raise"):  # a 32-bit product that wraps fails the test
            fn(*args)
    finally:
        fn.__globals__["cuda"] = saved


# A pool of 3 layers x 2 x 40,000 blocks x 16 slots x 1,024 uint16 units: 3.9e9 units.
BIG = dict(num_layers=3, num_blocks=40_000, block_size=16, tok_units=1024)
BIG_UNITS = 3 * 2 * 40_000 * 16 * 1024
ERRORS = np.zeros(1, dtype=np.int32)


def test_big_pool_index_math_slot_write_reaches_the_last_slot() -> None:
    assert BIG_UNITS > 2**31
    num_slots = BIG["num_blocks"] * BIG["block_size"]
    tok = BIG["tok_units"]
    pool, k = _Recorder(BIG_UNITS), _Recorder(2 * tok)
    slots = np.array([5, num_slots - 1], dtype=np.int64)
    layer = 2
    k_base = 2 * layer * num_slots * tok
    _run_on_host(slot_write_module.slot_write_kernel, 1, pool, k, k, slots, np.int64(k_base),
                 np.int64(k_base + num_slots * tok), np.int64(tok), np.int64(num_slots),
                 False, ERRORS)
    last_v = (2 * layer + 1) * num_slots * tok + (num_slots - 1) * tok
    assert pool.writes[-tok:] == list(range(last_v, last_v + tok))
    assert pool.writes[-1] == BIG_UNITS - 1  # the pool's very last unit
    assert k.reads[:tok] == list(range(tok, 2 * tok))


def test_big_pool_index_math_gather_reads_the_last_block() -> None:
    nb, bs, tok = BIG["num_blocks"], BIG["block_size"], BIG["tok_units"]
    pool, out = _Recorder(BIG_UNITS), _Recorder(3 * tok)
    table = np.array([[nb - 1, 7]], dtype=np.int32)  # int32, as the kernel reads it
    cu_out = np.array([0, 3], dtype=np.int64)
    starts = np.array([13], dtype=np.int64)  # tokens 13, 14, 15 of block nb - 1
    layer = 2
    k_base = 2 * layer * nb * bs * tok
    _run_on_host(gather_module.gather_kernel, 2, pool, out, out, table, cu_out, starts,
                 np.int64(k_base), np.int64(k_base + nb * bs * tok), np.int64(tok),
                 np.int64(bs), np.int64(nb), False, ERRORS)
    assert pool.reads[-1] == BIG_UNITS - 1
    assert out.writes[-1] == 3 * tok - 1


def test_big_pool_index_math_block_copy_moves_the_last_block() -> None:
    nb, blk = BIG["num_blocks"], BIG["block_size"] * BIG["tok_units"]
    pool = _Recorder(BIG_UNITS)
    pairs = np.array([[nb - 1, 0], [0, nb - 1]], dtype=np.int32)
    num_slabs = 2 * BIG["num_layers"]
    _run_on_host(block_copy_module.block_copy_kernel, num_slabs + num_slabs - 1, pool, pool,
                 pairs, np.int64(num_slabs), np.int64(nb * blk), np.int64(nb * blk),
                 np.int64(blk), np.int64(nb), np.int64(nb), False, ERRORS)
    # pair 1, last slab row (V of the last layer): block 0 -> block nb - 1
    assert pool.writes[-1] == BIG_UNITS - 1
    assert pool.reads[0] == (num_slabs - 1) * nb * blk


# -- device-resident ids: not copied back, and never written through out of bounds ----


def _NoCopyBack(arr):  # noqa: N802 - reads as a wrapper at the call sites
    """`arr`, made to fail the test if anything copies it to the host."""

    def refuse(*args, **kwargs):
        raise AssertionError("a device-resident index array was copied back")

    arr.copy_to_host = refuse
    return arr


def _guarded_pool(rng, shape, dtype="float16"):
    """A pool in the middle of a bigger allocation: guard bytes on both sides."""
    size = int(np.prod(shape))
    backing_values = rng.standard_normal(3 * size).astype(dtype)
    backing = cuda.to_device(backing_values)
    return backing, backing[size:2 * size].reshape(shape), backing_values


@pytest.mark.skipif(not is_simulator(), reason="the no-copy wrapper is a simulator array")
def test_device_ids_are_not_copied_back() -> None:
    rng = np.random.default_rng(4)
    shape = (1, 2, 4, 2, 1, 8)
    pool = cuda.to_device(np.zeros(shape, np.float16))
    k = rng.standard_normal((2, 1, 8)).astype(np.float16)
    slots = _NoCopyBack(cuda.to_device(np.array([1, 6], dtype=np.int64)))
    write_slots(pool, 0, k, k, slots)
    pairs = _NoCopyBack(cuda.to_device(np.array([[0, 3]], dtype=np.int32)))
    copy_blocks(pool, pairs)
    swap_blocks(pool, cuda.mapped_array(shape, np.float16), pairs, method="kernel")
    table = _NoCopyBack(cuda.to_device(np.array([[3]], dtype=np.int32)))
    got, _ = gather_kv(pool, 0, table, [2])
    assert same_bytes(got.copy_to_host()[1], k[0])  # slot 1 copied to block 3


def test_bad_device_ids_write_nothing_outside_the_pool_and_are_counted() -> None:
    rng = np.random.default_rng(5)
    shape = (2, 2, 4, 2, 1, 8)
    backing, pool, values = _guarded_pool(rng, shape)
    buffers = DeviceBuffers()
    k = rng.standard_normal((3, 1, 8)).astype(np.float16)
    num_slots = 8
    slots = cuda.to_device(np.array([num_slots, 2, 10**9], dtype=np.int64))
    write_slots(pool, 1, k, k, slots, buffers=buffers)
    pairs = cuda.to_device(np.array([[0, 4], [-1, 1], [1, 2]], dtype=np.int32))
    copy_blocks(pool, pairs, buffers=buffers)
    table = cuda.to_device(np.array([[1, 99]], dtype=np.int32))
    got_k, _ = gather_kv(pool, 0, table, [4], buffers=buffers)
    assert buffers.take_errors() == 2 + 2 + 2  # 2 slots, 2 pairs, 2 gathered tokens
    assert buffers.take_errors() == 0  # reset

    after = snapshot(backing)
    size = int(np.prod(shape))
    assert same_bytes(after[:size], values[:size]) and same_bytes(after[2 * size:],
                                                                  values[2 * size:])
    expected = values[size:2 * size].reshape(shape).copy()
    expected[1, :, 1, 0] = k[1]  # slot 2: the one good slot
    expected[:, :, 2] = expected[:, :, 1]  # the one good pair
    assert same_bytes(snapshot(pool), expected)
    assert not got_k.copy_to_host()[2:].any()  # tokens of block 99 read as zeros


# -- buffers, streams ----------------------------------------------------------------


def test_index_buffers_are_reused_across_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(6)
    shape = (1, 2, 8, 2, 1, 8)
    pool = cuda.to_device(np.zeros(shape, np.float16))
    buffers = DeviceBuffers()
    k = rng.standard_normal((4, 1, 8)).astype(np.float16)
    write_slots(pool, 0, k, k, [0, 1, 2, 3], buffers=buffers)
    copy_blocks(pool, [(0, 4), (1, 5)], buffers=buffers)
    gather_kv(pool, 0, [[4, 5]], [4], buffers=buffers)
    held = len(buffers)
    api = cuda_api()

    def no_allocation(*args, **kwargs):
        raise AssertionError("a wrapper allocated a fresh device array for its inputs")

    monkeypatch.setattr(api, "to_device", no_allocation)
    write_slots(pool, 0, k[:3], k[:3], [9, 10, 11], buffers=buffers)  # smaller: same buffers
    copy_blocks(pool, [(4, 6)], buffers=buffers)
    monkeypatch.undo()
    assert len(buffers) == held
    expected = np.zeros(shape, np.float16)
    expected[0, :, 0] = k[0:2]  # slots 0, 1
    expected[0, :, 1] = k[2:4]  # slots 2, 3
    expected[:, :, 4] = expected[:, :, 0]
    expected[:, :, 5] = expected[:, :, 1]
    for i, slot in enumerate([9, 10, 11]):
        expected[0, :, slot // 2, slot % 2] = k[i]
    expected[:, :, 6] = expected[:, :, 4]
    assert same_bytes(snapshot(pool), expected)


def test_every_wrapper_takes_a_stream() -> None:
    rng = np.random.default_rng(7)
    shape = (1, 2, 6, 2, 2, 4)
    pool = cuda.to_device(np.zeros(shape, np.float32))
    host = cuda.mapped_array(shape, np.float32)
    host[:] = np.float32(0)
    stream = cuda.stream()
    k = rng.standard_normal((2, 2, 4)).astype(np.float32)
    write_slots(pool, 0, k, k, [0, 1], stream=stream)
    copy_blocks(pool, [(0, 3)], stream=stream)
    for method in SWAP_METHODS:
        swap_blocks(pool, host, [(3, 5)], stream=stream, method=method)
    got, _ = gather_kv(pool, 0, [[3]], [2], stream=stream)
    stream.synchronize()
    assert same_bytes(got.copy_to_host(), k)
    assert same_bytes(snapshot(host)[0, 0, 5], k)


# -- swap runs and aliasing -----------------------------------------------------------


def test_block_runs_coalesce_consecutive_ids() -> None:
    runs = block_runs(np.array([[9, 3], [4, 0], [6, 2], [5, 1], [10, 7], [11, 8]]))
    assert runs.tolist() == [[4, 0, 3], [9, 3, 1], [10, 7, 2]]
    assert block_runs(np.zeros((0, 2), np.int64)).shape == (0, 3)
    # one source to two destinations: never one run
    assert block_runs(np.array([[1, 5], [1, 6]])).tolist() == [[1, 5, 1], [1, 6, 1]]


def test_a_view_of_the_gpu_pool_as_the_other_pool_is_refused() -> None:
    shape = (2, 2, 4, 2, 1, 4)
    size = int(np.prod(shape))
    flat = cuda.to_device(np.arange(2 * size, dtype=np.float32))
    pool = flat[:size].reshape(shape)
    shifted = flat[size // 2: size // 2 + size].reshape(shape)  # overlaps half of it
    before = snapshot(flat)
    for method in SWAP_METHODS:
        with pytest.raises(ValueError, match="overlap in memory"):
            swap_blocks(pool, shifted, [(0, 1)], method=method)
        with pytest.raises(ValueError, match="overlap in memory"):
            swap_blocks(shifted, pool, [(0, 1)], method=method)
    assert same_bytes(snapshot(flat), before)
    disjoint = flat[size:].reshape(shape)  # adjacent, not overlapping: fine
    swap_blocks(pool, disjoint, [(0, 1)])
    assert same_bytes(snapshot(disjoint)[:, :, 1], before[:size].reshape(shape)[:, :, 0])
