"""Every kernel against an independent NumPy reference, and every wrapper's rejections.

The references below index plain NumPy arrays token by token; they share no code with
`paged_kv.gpu.kernels`. Equality is exact, byte for byte. Under the CUDA simulator (the
default, see conftest.py) the dimensions are tiny so that no launch exceeds a few
thousand threads; on a GPU (``PAGED_KV_DEVICE=gpu``, `scripts/gpu_check.sh`) the
"realistic" dimensions run as well.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from paged_kv.gpu.device import cuda_api
from paged_kv.gpu.kernels import (
    SWAP_METHODS,
    copy_blocks,
    gather_kv,
    swap_blocks,
    write_slots,
)

pytestmark = pytest.mark.device  # kernels: the simulator here, the GPU in gpu_check.sh

cuda = cuda_api()  # numba.cuda on a GPU, numba.cuda.simulator otherwise

DTYPES = ["float16", "float32"]


@dataclass(frozen=True)
class Dims:
    """Pool dimensions of one test configuration."""

    num_layers: int
    num_blocks: int
    block_size: int
    num_kv_heads: int
    head_dim: int
    num_host_blocks: int

    def shape(self, num_blocks: int | None = None) -> tuple[int, ...]:
        n = self.num_blocks if num_blocks is None else num_blocks
        return (self.num_layers, 2, n, self.block_size, self.num_kv_heads, self.head_dim)


TINY = Dims(num_layers=2, num_blocks=12, block_size=4, num_kv_heads=2, head_dim=4,
            num_host_blocks=8)
REALISTIC = Dims(num_layers=3, num_blocks=96, block_size=16, num_kv_heads=8, head_dim=128,
                 num_host_blocks=64)
NEEDS_GPU = pytest.mark.gpu(
    reason="realistic sizes launch ~10^6 threads; the simulator runs ~5,000 threads/s")
ALL_DIMS = [pytest.param(TINY, id="tiny"),
            pytest.param(REALISTIC, id="realistic", marks=NEEDS_GPU)]


# -- helpers ---------------------------------------------------------------------------


def random_values(rng: np.random.Generator, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    """Random normal values; distinct bit patterns almost everywhere."""
    return rng.standard_normal(shape).astype(dtype)


def snapshot(arr) -> np.ndarray:
    """A host copy of a device, mapped or host array, after pending kernels finish."""
    cuda.synchronize()
    if isinstance(arr, np.ndarray):
        return np.array(arr, copy=True)
    return arr.copy_to_host()


def mapped_pool(values: np.ndarray):
    """A mapped (pinned, device-addressable) host pool holding `values`."""
    pool = cuda.mapped_array(values.shape, dtype=values.dtype)
    pool[:] = values
    return pool


def assert_same_bytes(actual: np.ndarray, expected: np.ndarray) -> None:
    """Exact equality: same shape, same dtype, same bytes."""
    assert actual.shape == expected.shape
    assert actual.dtype == expected.dtype
    np.testing.assert_array_equal(
        np.ascontiguousarray(actual).view(np.uint8), np.ascontiguousarray(expected).view(np.uint8)
    )


# -- slot write --------------------------------------------------------------------------


@pytest.mark.parametrize("dims", ALL_DIMS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", [0, 1])
def test_write_slots_matches_reference(dims: Dims, dtype: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    before = random_values(rng, dims.shape(), dtype)
    pool = cuda.to_device(before)
    num_slots = dims.num_blocks * dims.block_size
    real = rng.choice(num_slots, size=num_slots // 2, replace=False)
    mapping = np.concatenate([real, [-1, -1, -7]])
    rng.shuffle(mapping)
    k = random_values(rng, (len(mapping), dims.num_kv_heads, dims.head_dim), dtype)
    v = random_values(rng, k.shape, dtype)
    layer = int(rng.integers(dims.num_layers))

    write_slots(pool, layer, k, v, mapping)

    expected = before.copy()
    for i, slot in enumerate(mapping):
        if slot < 0:
            continue
        expected[layer, 0, slot // dims.block_size, slot % dims.block_size] = k[i]
        expected[layer, 1, slot // dims.block_size, slot % dims.block_size] = v[i]
    after = snapshot(pool)
    assert_same_bytes(after, expected)
    # the test can fail: the write did change the addressed slots
    assert not np.array_equal(after.view(np.uint8), before.view(np.uint8))


@pytest.mark.parametrize("mapping_on_device", [False, True], ids=["host-int32", "device-int64"])
def test_write_slots_accepts_device_inputs_and_int32_mapping(mapping_on_device: bool) -> None:
    rng = np.random.default_rng(2)
    dims, dtype = TINY, "float32"
    before = random_values(rng, dims.shape(), dtype)
    pool = cuda.to_device(before)
    mapping = np.array([5, -1, 0, 47], dtype=np.int64 if mapping_on_device else np.int32)
    k = random_values(rng, (4, dims.num_kv_heads, dims.head_dim), dtype)
    v = random_values(rng, k.shape, dtype)
    given = cuda.to_device(mapping) if mapping_on_device else mapping
    write_slots(pool, 1, cuda.to_device(k), cuda.to_device(v), given)
    expected = before.copy()
    for i, slot in enumerate(mapping):
        if slot >= 0:
            expected[1, :, slot // 4, slot % 4] = np.stack([k[i], v[i]])
    assert_same_bytes(snapshot(pool), expected)


def test_write_slots_all_padding_writes_nothing() -> None:
    rng = np.random.default_rng(3)
    before = random_values(rng, TINY.shape(), "float16")
    pool = cuda.to_device(before)
    k = random_values(rng, (3, TINY.num_kv_heads, TINY.head_dim), "float16")
    write_slots(pool, 0, k, k, [-1, -1, -1])
    write_slots(pool, 0, k[:0], k[:0], [])
    assert_same_bytes(snapshot(pool), before)


# -- gather ------------------------------------------------------------------------------


def _gather_case(rng: np.random.Generator, dims: Dims):
    """Sequence lengths with partial last blocks, an empty one, and start offsets."""
    bs = dims.block_size
    seq_lens = np.array([2 * bs + 1, bs - 1, 0, 3 * bs, bs + bs // 2, 1])
    starts = np.array([bs + 1, 0, 0, int(rng.integers(0, 3 * bs + 1)), bs // 2, 1])
    tables = [list(rng.integers(0, dims.num_blocks, size=-(-n // bs))) for n in seq_lens]
    return tables, seq_lens, starts


def _gather_reference(pool, layer, tables, seq_lens, starts, block_size):
    k_rows, v_rows = [], []
    for table, seq_len, start in zip(tables, seq_lens, starts, strict=True):
        for pos in range(start, seq_len):
            block = table[pos // block_size]
            k_rows.append(pool[layer, 0, block, pos % block_size])
            v_rows.append(pool[layer, 1, block, pos % block_size])
    head_shape = pool.shape[4:]
    k = np.array(k_rows, dtype=pool.dtype).reshape((-1, *head_shape))
    v = np.array(v_rows, dtype=pool.dtype).reshape((-1, *head_shape))
    return k, v


@pytest.mark.parametrize("dims", ALL_DIMS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", [0, 1])
def test_gather_matches_reference(dims: Dims, dtype: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    before = random_values(rng, dims.shape(), dtype)
    pool = cuda.to_device(before)
    tables, seq_lens, starts = _gather_case(rng, dims)
    layer = int(rng.integers(dims.num_layers))
    want_k, want_v = _gather_reference(before, layer, tables, seq_lens, starts,
                                       dims.block_size)
    assert want_k.shape[0] == int((seq_lens - starts).sum())

    # list-of-lists form
    k, v = gather_kv(pool, layer, tables, seq_lens, starts)
    assert_same_bytes(k.copy_to_host(), want_k)
    assert_same_bytes(v.copy_to_host(), want_v)

    # padded 2-D int32 form, one extra column of -1 padding
    width = max(len(t) for t in tables) + 1
    padded = np.full((len(tables), width), -1, dtype=np.int32)
    for s, table in enumerate(tables):
        padded[s, : len(table)] = table
    k2, v2 = gather_kv(pool, layer, padded, seq_lens, starts)
    assert_same_bytes(k2.copy_to_host(), want_k)
    assert_same_bytes(v2.copy_to_host(), want_v)
    assert_same_bytes(snapshot(pool), before)


def test_gather_default_starts_is_zero() -> None:
    rng = np.random.default_rng(4)
    before = random_values(rng, TINY.shape(), "float16")
    pool = cuda.to_device(before)
    tables, seq_lens, _ = _gather_case(rng, TINY)
    zeros = np.zeros(len(seq_lens), dtype=np.int64)
    want_k, want_v = _gather_reference(before, 1, tables, seq_lens, zeros, TINY.block_size)
    k, v = gather_kv(pool, 1, tables, seq_lens)
    assert_same_bytes(k.copy_to_host(), want_k)
    assert_same_bytes(v.copy_to_host(), want_v)


def test_gather_ignores_unread_entries_before_start() -> None:
    """A sliding window: blocks before the start may already be gone (-1)."""
    rng = np.random.default_rng(5)
    before = random_values(rng, TINY.shape(), "float32")
    pool = cuda.to_device(before)
    tables = [[-1, -1, 7, 3]]
    seq_lens, starts = np.array([15]), np.array([9])
    k, v = gather_kv(pool, 0, tables, seq_lens, starts)
    want_k, want_v = _gather_reference(before, 0, tables, seq_lens, starts, TINY.block_size)
    assert want_k.shape[0] == 6
    assert_same_bytes(k.copy_to_host(), want_k)
    assert_same_bytes(v.copy_to_host(), want_v)


def test_gather_of_nothing_is_empty() -> None:
    pool = cuda.to_device(np.zeros(TINY.shape(), dtype=np.float16))
    k, v = gather_kv(pool, 0, [[], [2]], [0, 3], [0, 3])
    assert k.shape == v.shape == (0, TINY.num_kv_heads, TINY.head_dim)


# -- block copy ----------------------------------------------------------------------------


@pytest.mark.parametrize("dims", ALL_DIMS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", [0, 1])
def test_copy_blocks_matches_reference(dims: Dims, dtype: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    before = random_values(rng, dims.shape(), dtype)
    pool = cuda.to_device(before)
    perm = rng.permutation(dims.num_blocks)
    sources, dests = perm[:3], perm[3:9]  # each source to two destinations, disjoint sets
    pairs = [(int(sources[j // 2]), int(dests[j])) for j in range(6)]

    copy_blocks(pool, pairs)

    expected = before.copy()
    for src, dst in pairs:
        expected[:, :, dst] = before[:, :, src]
    after = snapshot(pool)
    assert_same_bytes(after, expected)
    assert not np.array_equal(after.view(np.uint8), before.view(np.uint8))


def test_copy_blocks_empty_is_a_noop() -> None:
    rng = np.random.default_rng(6)
    before = random_values(rng, TINY.shape(), "float16")
    pool = cuda.to_device(before)
    copy_blocks(pool, [])
    copy_blocks(pool, np.zeros((0, 2), dtype=np.int64))
    assert_same_bytes(snapshot(pool), before)


# -- swap ----------------------------------------------------------------------------------


@pytest.mark.parametrize("method", SWAP_METHODS)
@pytest.mark.parametrize("dims", ALL_DIMS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", [0, 1])
def test_swap_round_trip_into_other_block_ids(
    dims: Dims, dtype: str, seed: int, method: str
) -> None:
    rng = np.random.default_rng(seed)
    gpu_before = random_values(rng, dims.shape(), dtype)
    host_before = random_values(rng, dims.shape(dims.num_host_blocks), dtype)
    gpu = cuda.to_device(gpu_before)
    host = mapped_pool(host_before)
    gpu_perm = rng.permutation(dims.num_blocks)
    out_src, in_dst = gpu_perm[:3], gpu_perm[3:6]  # swapped back into different ids
    host_ids = rng.permutation(dims.num_host_blocks)[:3]
    out_pairs = np.stack([out_src, host_ids], axis=1)

    swap_blocks(gpu, host, out_pairs, method=method)  # GPU -> host

    host_expected = host_before.copy()
    for src, dst in out_pairs:
        host_expected[:, :, dst] = gpu_before[:, :, src]
    assert_same_bytes(snapshot(host), host_expected)
    assert_same_bytes(snapshot(gpu), gpu_before)

    swap_blocks(host, gpu, np.stack([host_ids, in_dst], axis=1), method=method)  # host -> GPU

    gpu_expected = gpu_before.copy()
    for src, dst in zip(out_src, in_dst, strict=True):
        gpu_expected[:, :, dst] = gpu_before[:, :, src]
    assert_same_bytes(snapshot(gpu), gpu_expected)
    assert_same_bytes(snapshot(host), host_expected)


@pytest.mark.parametrize("method", SWAP_METHODS)
def test_swap_within_one_pool_follows_copy_rules(method: str) -> None:
    rng = np.random.default_rng(7)
    before = random_values(rng, TINY.shape(), "float32")
    pool = cuda.to_device(before)
    with pytest.raises(ValueError, match="both a source and a destination"):
        swap_blocks(pool, pool, [(1, 2), (2, 3)], method=method)
    swap_blocks(pool, pool[:], [(1, 2)], method=method)  # same memory, same shape: one pool
    expected = before.copy()
    expected[:, :, 2] = before[:, :, 1]
    assert_same_bytes(snapshot(pool), expected)


# -- rejections: ValueError before launch, nothing changed -----------------------------


@dataclass
class Ctx:
    """Pools and valid arguments that each rejection case spoils in one way."""

    gpu: object
    host: object
    k: np.ndarray
    v: np.ndarray
    dtype: str


def _ctx(dtype: str) -> Ctx:
    rng = np.random.default_rng(11)
    gpu = cuda.to_device(random_values(rng, TINY.shape(), dtype))
    host = mapped_pool(random_values(rng, TINY.shape(TINY.num_host_blocks), dtype))
    k = random_values(rng, (3, TINY.num_kv_heads, TINY.head_dim), dtype)
    return Ctx(gpu, host, k, random_values(rng, k.shape, dtype), dtype)


def _other(dtype: str) -> str:
    return "float32" if dtype == "float16" else "float16"


NUM_SLOTS = TINY.num_blocks * TINY.block_size  # 48
REJECTIONS = {
    # write_slots
    "write/slot out of range": (
        lambda c: write_slots(c.gpu, 0, c.k, c.v, [0, NUM_SLOTS, 1]), r"= 48 out of range"),
    "write/layer out of range": (
        lambda c: write_slots(c.gpu, 2, c.k, c.v, [0, 1, 2]), r"layer 2 out of range \[0, 2\)"),
    "write/negative layer": (
        lambda c: write_slots(c.gpu, -1, c.k, c.v, [0, 1, 2]), r"layer -1 out of range"),
    "write/wrong k dtype": (
        lambda c: write_slots(c.gpu, 0, c.k.astype(_other(c.dtype)), c.v, [0, 1, 2]),
        r"k dtype"),
    "write/float64 v": (
        lambda c: write_slots(c.gpu, 0, c.k, c.v.astype(np.float64), [0, 1, 2]), r"v dtype"),
    "write/wrong k shape": (
        lambda c: write_slots(c.gpu, 0, np.zeros((3, 2, 5), c.dtype), c.v, [0, 1, 2]),
        r"head_dim=4\], got \(3, 2, 5\)"),
    "write/mapping length": (
        lambda c: write_slots(c.gpu, 0, c.k, c.v, [0, 1]), r"num_tokens=2"),
    "write/mapping float": (
        lambda c: write_slots(c.gpu, 0, c.k, c.v, np.array([0.0, 1.0, 2.0])), r"integers"),
    "write/mapping 2-D": (
        lambda c: write_slots(c.gpu, 0, c.k, c.v, [[0, 1, 2]]), r"1-D"),
    "write/duplicate slot": (
        lambda c: write_slots(c.gpu, 0, c.k, c.v, [5, -1, 5]), r"slot 5 appears 2 times"),
    "write/host pool": (
        lambda c: write_slots(snapshot(c.gpu), 0, c.k, c.v, [0, 1, 2]), r"device or mapped"),
    "write/float64 pool": (
        lambda c: write_slots(cuda.to_device(np.zeros(TINY.shape())), 0, c.k, c.v, [0]),
        r"dtype must be one of"),
    # gather_kv
    "gather/id out of range": (
        lambda c: gather_kv(c.gpu, 0, [[0, 12]], [6]), r"= 12 is out of range"),
    "gather/negative id": (
        lambda c: gather_kv(c.gpu, 0, [[0, -3]], [6]), r"= -3 is out of range"),
    "gather/padding read": (
        lambda c: gather_kv(c.gpu, 0, np.array([[0, -1]]), [6]), r"= -1 is padding"),
    "gather/too few blocks": (
        lambda c: gather_kv(c.gpu, 0, np.array([[0, 1]], np.int32), [9]),
        r"has 2 entries, seq_len 9 needs 3 blocks"),
    "gather/start beyond seq_len": (
        lambda c: gather_kv(c.gpu, 0, [[0, 1]], [6], [7]), r"start 7 and seq_len 6"),
    "gather/negative start": (
        lambda c: gather_kv(c.gpu, 0, [[0, 1]], [6], [-1]), r"start -1"),
    "gather/negative seq_len": (
        lambda c: gather_kv(c.gpu, 0, [[0, 1]], [-2]), r"seq_len -2"),
    "gather/batch mismatch": (
        lambda c: gather_kv(c.gpu, 0, [[0], [1]], [3]), r"1 entries for 2 block tables"),
    "gather/float tables": (
        lambda c: gather_kv(c.gpu, 0, np.array([[0.0, 1.0]]), [6]), r"integers"),
    "gather/3-D tables": (
        lambda c: gather_kv(c.gpu, 0, np.zeros((1, 2, 1), np.int32), [6]), r"2-D"),
    "gather/layer out of range": (
        lambda c: gather_kv(c.gpu, 5, [[0, 1]], [6]), r"layer 5 out of range"),
    "gather/float64 pool": (
        lambda c: gather_kv(cuda.to_device(np.zeros(TINY.shape())), 0, [[0]], [1]),
        r"dtype must be one of"),
    # copy_blocks
    "copy/src out of range": (
        lambda c: copy_blocks(c.gpu, [(1, 2), (12, 3)]), r"source block id 12 \(pair 1\)"),
    "copy/dst out of range": (
        lambda c: copy_blocks(c.gpu, [(1, 99)]), r"destination block id 99"),
    "copy/negative id": (
        lambda c: copy_blocks(c.gpu, [(-1, 2)]), r"source block id -1"),
    "copy/dst twice": (
        lambda c: copy_blocks(c.gpu, [(1, 4), (2, 4)]), r"destination block 4 appears 2"),
    "copy/dst is a src": (
        lambda c: copy_blocks(c.gpu, [(1, 4), (4, 5)]), r"block 4 is both"),
    "copy/pairs shape": (
        lambda c: copy_blocks(c.gpu, [(1, 4, 5)]), r"\[n, 2\]"),
    "copy/float pairs": (
        lambda c: copy_blocks(c.gpu, np.array([[1.0, 4.0]])), r"integers"),
    "copy/1-D pairs": (
        lambda c: copy_blocks(c.gpu, [1, 4]), r"2-D"),
    "copy/float64 pool": (
        lambda c: copy_blocks(cuda.to_device(np.zeros(TINY.shape())), [(0, 1)]),
        r"dtype must be one of"),
    # swap_blocks
    "swap/host id out of range": (
        lambda c: swap_blocks(c.gpu, c.host, [(0, 8)]), r"destination block id 8"),
    "swap/gpu id out of range": (
        lambda c: swap_blocks(c.host, c.gpu, [(0, 12)]), r"destination block id 12"),
    "swap/src id out of range": (
        lambda c: swap_blocks(c.host, c.gpu, [(8, 0)]), r"source block id 8"),
    "swap/dst twice": (
        lambda c: swap_blocks(c.gpu, c.host, [(0, 1), (2, 1)]), r"block 1 appears 2"),
    "swap/dtype mismatch": (
        lambda c: swap_blocks(
            c.gpu, mapped_pool(np.zeros(TINY.shape(8), _other(c.dtype))), [(0, 1)]),
        r"differs from dst_pool"),
    "swap/layout mismatch": (
        lambda c: swap_blocks(
            c.gpu, mapped_pool(np.zeros((2, 2, 8, 4, 2, 8), c.dtype)), [(0, 1)]),
        r"differ in more than num_blocks"),
    "swap/pairs shape": (
        lambda c: swap_blocks(c.gpu, c.host, np.zeros((2, 3), np.int64)), r"\[n, 2\]"),
    "swap/float pairs": (
        lambda c: swap_blocks(c.gpu, c.host, [(0.0, 1.0)]), r"integers"),
    "swap/plain numpy host pool": (
        lambda c: swap_blocks(c.gpu, np.zeros(TINY.shape(8), c.dtype), [(0, 1)]),
        r"device or mapped"),
    "swap/unknown method": (
        lambda c: swap_blocks(c.gpu, c.host, [(0, 1)], method="dma"), r"method must be one of"),
    "swap/device int64 pairs": (
        lambda c: swap_blocks(c.gpu, c.host, cuda.to_device(np.array([[0, 1]])), method="kernel"),
        r"device pairs must be a 2-D int32"),
    "copy/device pairs of 3 columns": (
        lambda c: copy_blocks(c.gpu, cuda.to_device(np.zeros((1, 3), np.int32))), r"\[n, 2\]"),
    "write/device int32 mapping": (
        lambda c: write_slots(c.gpu, 0, c.k, c.v, cuda.to_device(np.arange(3, dtype=np.int32))),
        r"device slot_mapping must be a 1-D int64"),
    "gather/device int64 table": (
        lambda c: gather_kv(c.gpu, 0, cuda.to_device(np.zeros((1, 2), np.int64)), [6]),
        r"device block_tables must be a 2-D int32"),
    "write/strided device k": (
        lambda c: write_slots(c.gpu, 0, cuda.to_device(np.zeros((3, 2, 8), c.dtype))[:, :, ::2],
                              c.v, [0, 1, 2]), r"C-contiguous"),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", sorted(REJECTIONS))
def test_wrapper_rejects_bad_argument_and_changes_nothing(case: str, dtype: str) -> None:
    c = _ctx(dtype)
    gpu_before, host_before = snapshot(c.gpu), snapshot(c.host)
    call, message = REJECTIONS[case]
    with pytest.raises(ValueError, match=message):
        call(c)
    assert_same_bytes(snapshot(c.gpu), gpu_before)
    assert_same_bytes(snapshot(c.host), host_before)
