"""The paged attention kernels against `paged_kv.reference.attention.dense_attention` (NumPy).

K and V for the reference are read from a host copy of the pool by plain NumPy
indexing through the same block tables, so the reference shares no code with the
kernels. Block tables are random permutations of the pool's blocks; block sizes run
from 1 to 256, GQA groups 1 to 8, float16 and float32 pools, sequences of one token to
many blocks with partial last blocks, and prefill with and without a cached prefix.

Under the CUDA simulator every CUDA block is 128 Python threads, so each launch here
stays at a few blocks; `TILE_BYTES` is shrunk in some cases so that short sequences
still cross several KV tiles (the online softmax's rescaling). On a GPU
(``PAGED_KV_DEVICE=gpu``, `scripts/gpu_check.sh`) the realistic sizes run as well.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from paged_kv.gpu.device import cuda_api, is_simulator
from paged_kv.gpu.kernels import decode_attention, paged_attention, prefill_attention
from paged_kv.gpu.kernels.paged_attention import (
    MAX_QUERIES,
    TILE_COLUMNS,
    TILE_HEAD,
    TILE_LEN,
    TILE_QUERY,
    TILE_SEQ,
    _stride,
    _tiles,
)
from paged_kv.reference.attention import dense_attention

pytestmark = [pytest.mark.device,  # kernels: the simulator here, the GPU in gpu_check.sh
              pytest.mark.usefixtures("fast_simulator_barriers")]  # conftest: speed only
cuda = cuda_api()  # numba.cuda on a GPU, numba.cuda.simulator otherwise

NEEDS_GPU = pytest.mark.gpu(
    reason="realistic sizes launch thousands of 128-thread CUDA blocks; the simulator "
    "runs a few hundred threads per second when they synchronize")
TOL = {"rtol": 2e-5, "atol": 2e-6}  # float32 accumulation against a float64 reference




class Pool:
    """A random pool on the device, its host copy, and per-sequence block tables."""

    def __init__(self, rng, dtype, block_size, num_kv_heads, head_dim, lens, *,
                 num_layers=2, spare_blocks=3):
        self.block_size = block_size
        needed = [-(-n // block_size) for n in lens]
        num_blocks = sum(needed) + spare_blocks
        shape = (num_layers, 2, num_blocks, block_size, num_kv_heads, head_dim)
        self.host = rng.standard_normal(shape).astype(dtype)
        self.device = cuda.to_device(self.host)
        order = rng.permutation(num_blocks)
        cuts = np.cumsum([0] + needed)
        self.tables = [order[a:b].tolist() for a, b in zip(cuts[:-1], cuts[1:])]

    def kv(self, layer, s, length):
        """Sequence s's K and V of positions 0 .. length - 1, by NumPy indexing."""
        pos = np.arange(length)
        blocks = np.asarray(self.tables[s], dtype=np.int64)[pos // self.block_size]
        offsets = pos % self.block_size
        return (self.host[layer, 0, blocks, offsets], self.host[layer, 1, blocks, offsets])


def shrink_tiles(monkeypatch, tokens, head_dim, dtype):
    """Make the kernel's KV tiles `tokens` long, to cross tiles with short sequences."""
    itemsize = np.dtype(dtype).itemsize
    monkeypatch.setattr(paged_attention, "TILE_BYTES",
                        tokens * _stride(head_dim, itemsize) * itemsize)


# ------------------------------------------------------------------------------------
# decode
# ------------------------------------------------------------------------------------
DECODE_CASES = [
    # dtype, block_size, kv_heads, group, head_dim, seq_lens, tile tokens (None: default)
    pytest.param("float32", 1, 1, 1, 8, [37], 5, id="block1-tiles5"),
    pytest.param("float16", 3, 2, 2, 8, [5, 22, 1], 4, id="gqa2-partial-len1"),
    pytest.param("float16", 16, 1, 4, 16, [40, 3], None, id="gqa4-block16"),
    pytest.param("float32", 4, 1, 3, 12, [19], 6, id="gqa3-dim12"),
    pytest.param("float32", 2, 1, 8, 8, [9], None, id="gqa8-two-head-tiles"),
    pytest.param("float16", 256, 1, 1, 8, [300], 27, id="block256-partial"),
    pytest.param("float32", 2, 1, 1, 4, [61, 2], None, id="31-blocks"),
]


@pytest.mark.parametrize("dtype,block_size,kv_heads,group,head_dim,lens,tile", DECODE_CASES)
def test_decode_matches_dense_attention(monkeypatch, dtype, block_size, kv_heads, group,
                                        head_dim, lens, tile) -> None:
    rng = np.random.default_rng(block_size * 1000 + group * 10 + head_dim)
    pool = Pool(rng, dtype, block_size, kv_heads, head_dim, lens)
    if tile is not None:
        shrink_tiles(monkeypatch, tile, head_dim, dtype)
    q = rng.standard_normal((len(lens), kv_heads * group, head_dim)).astype(np.float32)
    out = decode_attention(pool.device, 1, q, pool.tables, lens)
    got = out.copy_to_host()
    assert got.shape == q.shape and got.dtype == np.float32
    for s, length in enumerate(lens):
        k, v = pool.kv(1, s, length)
        np.testing.assert_allclose(got[s], dense_attention(q[s:s + 1], k, v)[0], **TOL)


def test_decode_head_dim_above_128_uses_256_threads_and_a_scale() -> None:
    rng = np.random.default_rng(7)
    pool = Pool(rng, "float16", 8, 1, 136, [12])
    q = rng.standard_normal((1, 1, 136))  # float64 on the host: cast to float32
    got = decode_attention(pool.device, 0, q, pool.tables, [12], scale=0.05).copy_to_host()
    k, v = pool.kv(0, 0, 12)
    np.testing.assert_allclose(got, dense_attention(q.astype(np.float32), k, v, scale=0.05),
                               **TOL)


def test_decode_reads_only_the_table_entries_it_needs() -> None:
    """Padding and entries past ceil(seq_len / block_size) are never read: ids that
    would be out of range there do not matter."""
    rng = np.random.default_rng(3)
    pool = Pool(rng, "float32", 4, 1, 8, [6, 3])
    tables = np.full((2, 5), -1, dtype=np.int64)
    tables[0, :2] = pool.tables[0]
    tables[1, :1] = pool.tables[1]
    tables[1, 3] = 10**9  # never read
    q = rng.standard_normal((2, 1, 8)).astype(np.float32)
    got = decode_attention(pool.device, 0, q, tables, np.array([6, 3])).copy_to_host()
    for s, length in enumerate([6, 3]):
        k, v = pool.kv(0, s, length)
        np.testing.assert_allclose(got[s], dense_attention(q[s:s + 1], k, v)[0], **TOL)


def test_decode_on_a_stream_with_device_inputs() -> None:
    rng = np.random.default_rng(11)
    pool = Pool(rng, "float16", 5, 2, 8, [7, 11])
    q = rng.standard_normal((2, 4, 8)).astype(np.float32)
    stream = cuda.stream()
    out = decode_attention(pool.device, 1, cuda.to_device(q), pool.tables, [7, 11],
                           stream=stream)
    got = out.copy_to_host(stream=stream)
    stream.synchronize()
    for s, length in enumerate([7, 11]):
        k, v = pool.kv(1, s, length)
        np.testing.assert_allclose(got[s], dense_attention(q[s:s + 1], k, v)[0], **TOL)


def test_empty_batch_launches_nothing(monkeypatch) -> None:
    launched = []

    class Counting:
        def __init__(self, kernel) -> None:
            self.kernel = kernel

        def __getitem__(self, config):
            launched.append(self.kernel)
            return self.kernel[config]

    for variants in (paged_attention.KERNEL_VARIANTS, paged_attention.QUANTIZED_VARIANTS):
        for key, kernel in variants.items():
            monkeypatch.setitem(variants, key, Counting(kernel))
    pool = Pool(np.random.default_rng(0), "float32", 4, 1, 8, [4])
    out = decode_attention(pool.device, 0, np.zeros((0, 2, 8)), [], [])
    assert out.shape == (0, 2, 8) and launched == []
    decode_attention(pool.device, 0, np.zeros((1, 2, 8)), [[0]], [1])  # the count counts
    assert len(launched) == 1


# ------------------------------------------------------------------------------------
# prefill over a cached prefix
# ------------------------------------------------------------------------------------
PREFILL_CASES = [
    # dtype, block_size, kv_heads, group, head_dim, total tokens, q_start, tile tokens
    pytest.param("float32", 5, 1, 1, 8, 23, 10, 6, id="prefix10-gqa1"),
    pytest.param("float16", 2, 1, 2, 8, 15, 0, None, id="no-prefix-gqa2"),
    pytest.param("float32", 4, 2, 4, 8, 9, 4, None, id="prefix4-gqa4"),
    pytest.param("float16", 1, 1, 1, 4, 12, 11, 3, id="block1-one-new-token"),
    pytest.param("float16", 16, 1, 1, 8, 40, 32, None, id="prefix-two-full-blocks"),
]


@pytest.mark.parametrize("dtype,block_size,kv_heads,group,head_dim,total,q_start,tile",
                         PREFILL_CASES)
def test_prefill_matches_dense_causal_attention(monkeypatch, dtype, block_size, kv_heads,
                                                group, head_dim, total, q_start,
                                                tile) -> None:
    rng = np.random.default_rng(total * 100 + q_start)
    pool = Pool(rng, dtype, block_size, kv_heads, head_dim, [total])
    if tile is not None:
        shrink_tiles(monkeypatch, tile, head_dim, dtype)
    n = total - q_start
    q = rng.standard_normal((n, kv_heads * group, head_dim)).astype(np.float32)
    got = prefill_attention(pool.device, 1, q, pool.tables[0], q_start).copy_to_host()
    assert got.shape == q.shape
    k, v = pool.kv(1, 0, total)
    np.testing.assert_allclose(got, dense_attention(q, k, v, q_offset=q_start), **TOL)


def test_prefill_over_a_prefix_equals_the_tail_of_a_full_prefill() -> None:
    """A prefix hit changes how much is computed, not the result."""
    rng = np.random.default_rng(5)
    pool = Pool(rng, "float32", 3, 1, 8, [10])
    q = rng.standard_normal((10, 2, 8)).astype(np.float32)
    full = prefill_attention(pool.device, 0, q, pool.tables[0], 0).copy_to_host()
    tail = prefill_attention(pool.device, 0, q[6:], pool.tables[0], 6).copy_to_host()
    np.testing.assert_allclose(tail, full[6:], rtol=1e-6, atol=1e-7)


def test_prefill_tiles_cover_the_new_tokens_only() -> None:
    """q_start cached tokens cost no query tile: the grid covers the n new rows."""
    row_len = np.arange(101, 104)  # 3 new tokens after a 100-token prefix
    tiles = _tiles(np.zeros(3, np.int64), row_len, q_heads=8, num_kv_heads=8, row_words=4,
                   rows_per_tile=MAX_QUERIES)
    assert tiles.shape == (8, TILE_COLUMNS)  # one row tile per head
    assert (tiles[:, TILE_LEN:TILE_LEN + 3] == row_len).all()
    assert (tiles[:, TILE_LEN + 3] == 0).all()


# ------------------------------------------------------------------------------------
# the host-side layout
# ------------------------------------------------------------------------------------
def test_decode_tiles_group_query_heads_by_kv_head() -> None:
    """group 6 -> head tiles of 4 and 2; query (row r, head h) is row r * q_heads + h."""
    tiles = _tiles(np.array([0, 1]), np.array([5, 9]), q_heads=12, num_kv_heads=2,
                   row_words=16, rows_per_tile=1)
    assert tiles.shape == (2 * 2 * 2, TILE_COLUMNS)
    first = tiles[0]
    assert first[TILE_SEQ] == 0 and first[TILE_HEAD] == 0
    assert list(first[TILE_QUERY:TILE_QUERY + 4]) == [0, 1, 2, 3]
    assert list(first[TILE_LEN:TILE_LEN + 4]) == [5, 5, 5, 5]
    second = tiles[1]  # heads 4, 5 of KV head 0; two empty slots
    assert list(second[TILE_QUERY:TILE_QUERY + 2]) == [4, 5]
    assert list(second[TILE_LEN:TILE_LEN + 4]) == [5, 5, 0, 0]
    last = tiles[-1]  # row 1, KV head 1, heads 10, 11
    assert last[TILE_SEQ] == 1 and last[TILE_HEAD] == 16
    assert list(last[TILE_QUERY:TILE_QUERY + 2]) == [12 + 10, 12 + 11]
    assert list(last[TILE_LEN:TILE_LEN + 4]) == [9, 9, 0, 0]


def test_prefill_tiles_take_rows_times_heads() -> None:
    """group 2 -> 2 rows x 2 heads per tile; 5 rows leave the last tile half used."""
    tiles = _tiles(np.zeros(5, np.int64), np.arange(4, 9), q_heads=2, num_kv_heads=1,
                   row_words=8, rows_per_tile=2)
    assert tiles.shape == (3, TILE_COLUMNS)
    assert list(tiles[0, TILE_QUERY:TILE_QUERY + 4]) == [0, 1, 2, 3]
    assert list(tiles[0, TILE_LEN:TILE_LEN + 4]) == [4, 4, 5, 5]
    assert list(tiles[2, TILE_QUERY:TILE_QUERY + 2]) == [8, 9]
    assert list(tiles[2, TILE_LEN:TILE_LEN + 4]) == [8, 8, 0, 0]


@pytest.mark.parametrize("head_dim", [1, 8, 12, 64, 80, 128, 136, 256])
@pytest.mark.parametrize("itemsize", [2, 4])
def test_shared_rows_are_an_odd_number_of_words(head_dim, itemsize) -> None:
    stride = _stride(head_dim, itemsize)
    assert head_dim <= stride <= head_dim + 3
    assert (stride * itemsize) % 4 == 0 and (stride * itemsize // 4) % 2 == 1


# ------------------------------------------------------------------------------------
# refused before any launch
# ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_pool():
    return Pool(np.random.default_rng(1), "float16", 4, 2, 8, [6, 3])


@pytest.mark.parametrize(
    "change,match",
    [
        (dict(layer=2), r"layer 2 out of range \[0, 2\)"),
        (dict(layer=True), "layer must be an integer"),
        (dict(q=np.zeros((2, 4, 7), np.float32)), r"head_dim=8\], got \(2, 4, 7\)"),
        (dict(q=np.zeros((3, 4, 8), np.float32)), r"q must have shape \[2, q_heads"),
        (dict(q=np.zeros((2, 3, 8), np.float32)), "q_heads=3 must be a positive multiple"),
        (dict(q=np.zeros((2, 4, 8), np.int32)), "q must hold floats"),
        (dict(seq_lens=[6]), "seq_lens has 1 entries for 2 block tables"),
        (dict(seq_lens=[6, 0]), "sequence 1 has seq_len 0"),
        (dict(seq_lens=[6.0, 3.0]), "seq_lens must hold integers"),
        (dict(seq_lens=[9, 3]), "block table 0 has 2 entries, 9 tokens need 3 blocks"),
        (dict(block_tables=[[0, -1], [1]]), r"block_tables\[0\]\[1\] = -1 is padding"),
        (dict(block_tables=[[0, 99], [1]]), r"= 99 is out of range \(valid ids: \[0, 6\)\)"),
        (dict(scale=float("nan")), "scale must be finite"),
        (dict(scale="1"), "scale must be a number"),
    ],
)
def test_decode_refuses_bad_arguments(small_pool, change, match) -> None:
    args = dict(layer=0, q=np.zeros((2, 4, 8), np.float32), block_tables=small_pool.tables,
                seq_lens=[6, 3], scale=None)
    args.update(change)
    with pytest.raises(ValueError, match=match):
        decode_attention(small_pool.device, args["layer"], args["q"], args["block_tables"],
                         args["seq_lens"], scale=args["scale"])


@pytest.mark.parametrize(
    "change,match",
    [
        (dict(q_start=-1), "q_start must be an integer >= 0, got -1"),
        (dict(q_start=1.0), "q_start must be an integer"),
        (dict(q_start=5), "block table 0 has 2 entries, 9 tokens need 3 blocks"),
        (dict(block_table=[[0, 1]]), "block_table must be 1-D"),
        (dict(q=np.zeros((4, 4, 8), np.float64)[:, :3]), "q_heads=3"),
    ],
)
def test_prefill_refuses_bad_arguments(small_pool, change, match) -> None:
    args = dict(q=np.zeros((4, 4, 8), np.float32), block_table=small_pool.tables[0],
                q_start=2)
    args.update(change)
    with pytest.raises(ValueError, match=match):
        prefill_attention(small_pool.device, 0, args["q"], args["block_table"],
                          args["q_start"])


def test_pool_and_query_kinds_are_refused() -> None:
    q = np.zeros((1, 1, 8), np.float32)
    with pytest.raises(ValueError, match="pool must be a device or mapped array"):
        decode_attention(np.zeros((1, 2, 4, 4, 1, 8), np.float32), 0, q, [[0]], [1])
    with pytest.raises(ValueError, match="head_dim 264 exceeds the kernel's limit of 256"):
        decode_attention(cuda.device_array((1, 2, 1, 1, 1, 264), np.float32), 0,
                         np.zeros((1, 1, 264)), [[0]], [1])
    with pytest.raises(ValueError, match="a float16 pool needs an even head_dim, got 7"):
        decode_attention(cuda.device_array((1, 2, 1, 1, 1, 7), np.float16), 0,
                         np.zeros((1, 1, 7)), [[0]], [1])
    pool = cuda.device_array((1, 2, 1, 1, 1, 8), np.float32)
    with pytest.raises(ValueError, match="a device q must be float32, got float64"):
        decode_attention(pool, 0, cuda.to_device(q.astype(np.float64)), [[0]], [1])


# ------------------------------------------------------------------------------------
# device-resident block tables: checked for form on the host, ids guarded in the kernel
# ------------------------------------------------------------------------------------
def no_copy_back(arr):
    """`arr`, made to fail the test if anything copies it to the host."""

    def refuse(*args, **kwargs):
        raise AssertionError("a device-resident block table was copied back")

    arr.copy_to_host = refuse
    return arr


def device_table(rows, width, fill=-1):
    """Per-sequence lists as a padded int32 device table (padding `fill`)."""
    table = np.full((len(rows), width), fill, dtype=np.int32)
    for s, row in enumerate(rows):
        table[s, :len(row)] = row
    return no_copy_back(cuda.to_device(table))


@pytest.mark.skipif(not is_simulator(), reason="the no-copy wrapper is a simulator array")
def test_device_tables_give_the_host_result_and_are_not_copied_back(monkeypatch) -> None:
    rng = np.random.default_rng(21)
    lens = [7, 13, 2]
    pool = Pool(rng, "float16", 3, 2, 8, lens)
    shrink_tiles(monkeypatch, 4, 8, "float16")  # several KV tiles per sequence
    buffers = paged_attention.DeviceBuffers()
    q = rng.standard_normal((3, 4, 8)).astype(np.float32)
    # padding past the needed blocks holds ids the kernel must not read
    table = device_table(pool.tables, 7, fill=10**6)
    got = decode_attention(pool.device, 1, q, table, lens, buffers=buffers).copy_to_host()
    want = decode_attention(pool.device, 1, q, pool.tables, lens).copy_to_host()
    np.testing.assert_array_equal(got, want)
    qp = rng.standard_normal((5, 4, 8)).astype(np.float32)
    row = no_copy_back(cuda.to_device(np.asarray(pool.tables[1], dtype=np.int32)))
    got = prefill_attention(pool.device, 0, qp, row, 8, buffers=buffers).copy_to_host()
    want = prefill_attention(pool.device, 0, qp, pool.tables[1], 8).copy_to_host()
    np.testing.assert_array_equal(got, want)
    assert buffers.take_errors() == 0


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_out_of_range_device_ids_are_skipped_and_counted(monkeypatch, dtype) -> None:
    """A token in a bad block adds nothing (the others' softmax is over the good tokens
    only), is counted, and its id is never read; the other sequences are untouched.
    Block 0, where the kernel reads instead, holds NaN (which must not leak in)."""
    rng = np.random.default_rng(22)
    block_size, lens = 2, [9, 7, 3]
    pool = Pool(rng, dtype, block_size, 1, 8, lens, spare_blocks=1)
    free = sorted(set(range(pool.host.shape[2])) - {b for t in pool.tables for b in t})
    pool.tables = [[free[0] if b == 0 else b for b in t] for t in pool.tables]
    pool.host[:, :, 0] = np.nan  # no table holds block 0 now
    pool.device = cuda.to_device(pool.host)
    shrink_tiles(monkeypatch, 3, 8, dtype)
    rows = [list(t) for t in pool.tables]
    rows[1][1] = 10**6  # positions 2, 3 of sequence 1
    rows[1][3] = -1  # position 6
    rows[2] = [-5, 10**9]  # every key of sequence 2
    buffers = paged_attention.DeviceBuffers()
    q = rng.standard_normal((3, 1, 8)).astype(np.float32)
    got = decode_attention(pool.device, 1, q, device_table(rows, 5), lens,
                           buffers=buffers).copy_to_host()
    assert buffers.take_errors() == 3 + 3  # one query tile per sequence
    assert buffers.take_errors() == 0
    k, v = pool.kv(1, 0, lens[0])
    np.testing.assert_allclose(got[0], dense_attention(q[:1], k, v)[0], **TOL)
    k, v = pool.kv(1, 1, lens[1])
    keep = [0, 1, 4, 5]
    np.testing.assert_allclose(got[1], dense_attention(q[1:2], k[keep], v[keep])[0], **TOL)
    np.testing.assert_array_equal(got[2], np.zeros((1, 8), np.float32))
    # prefill: rows attend to their causal prefix minus the skipped positions 2, 3
    qp = rng.standard_normal((4, 1, 8)).astype(np.float32)
    row = cuda.to_device(np.asarray(rows[1], dtype=np.int32))
    got = prefill_attention(pool.device, 0, qp, row, 3, buffers=buffers).copy_to_host()
    assert buffers.take_errors() == 3  # one query tile (4 rows) reads positions 2, 3, 6
    k, v = pool.kv(0, 1, lens[1])
    for i in range(4):
        keep = [p for p in range(3 + i + 1) if p not in (2, 3, 6)]
        np.testing.assert_allclose(got[i], dense_attention(qp[i:i + 1], k[keep], v[keep])[0],
                                   **TOL)


@pytest.mark.parametrize(
    "table,lens,match",
    [
        (np.zeros((2, 3), np.int64), [6, 3], "a device block_tables must be a 2-D int32"),
        (np.zeros(3, np.int32), [6, 3], "a device block_tables must be a 2-D int32"),
        (np.zeros((1, 3), np.int32), [6, 3], "seq_lens has 2 entries for 1 block tables"),
        (np.zeros((2, 1), np.int32), [6, 3], "block table 0 has 1 entries, 6 tokens need 2"),
    ],
)
def test_device_decode_tables_of_the_wrong_form_are_refused(small_pool, table, lens,
                                                            match) -> None:
    with pytest.raises(ValueError, match=match):
        decode_attention(small_pool.device, 0, np.zeros((2, 4, 8), np.float32),
                         no_copy_back(cuda.to_device(table)), lens)


def test_a_device_table_over_a_pool_without_blocks_is_refused() -> None:
    pool = cuda.device_array((1, 2, 0, 4, 1, 8), np.float32)
    with pytest.raises(ValueError, match="the pool has no blocks to read"):
        decode_attention(pool, 0, np.zeros((1, 1, 8), np.float32),
                         no_copy_back(cuda.to_device(np.zeros((1, 1), np.int32))), [1])


@pytest.mark.parametrize(
    "table,match",
    [
        (np.zeros(3, np.float32), "a device block_table must be a 1-D int32"),
        (np.zeros((1, 3), np.int32), "a device block_table must be a 1-D int32"),
        (np.zeros(1, np.int32), "block table 0 has 1 entries, 6 tokens need 2"),
    ],
)
def test_device_prefill_tables_of_the_wrong_form_are_refused(small_pool, table,
                                                             match) -> None:
    with pytest.raises(ValueError, match=match):
        prefill_attention(small_pool.device, 0, np.zeros((4, 4, 8), np.float32),
                          no_copy_back(cuda.to_device(table)), 2)


# ------------------------------------------------------------------------------------
# realistic sizes (GPU only)
# ------------------------------------------------------------------------------------
@NEEDS_GPU
@pytest.mark.parametrize("dtype", ["float16", "float32"])
@pytest.mark.parametrize("block_size", [1, 16, 256])
def test_realistic_decode_and_prefill(dtype, block_size) -> None:
    rng = np.random.default_rng(block_size)
    lens = [int(x) for x in rng.integers(1, 700, size=16)]
    pool = Pool(rng, dtype, block_size, 8, 128, lens)
    q = rng.standard_normal((16, 32, 128)).astype(np.float32)  # GQA group 4
    got = decode_attention(pool.device, 1, q, pool.tables, lens).copy_to_host()
    for s, length in enumerate(lens):
        k, v = pool.kv(1, s, length)
        np.testing.assert_allclose(got[s], dense_attention(q[s:s + 1], k, v)[0], **TOL)
    q_start = lens[0] // 2
    qp = rng.standard_normal((lens[0] - q_start, 32, 128)).astype(np.float32)
    got = prefill_attention(pool.device, 0, qp, pool.tables[0], q_start).copy_to_host()
    k, v = pool.kv(0, 0, lens[0])
    np.testing.assert_allclose(got, dense_attention(qp, k, v, q_offset=q_start), **TOL)


def test_default_scale_is_one_over_sqrt_head_dim() -> None:
    assert paged_attention._scale(None, 64, "x") == np.float32(1 / math.sqrt(64))
