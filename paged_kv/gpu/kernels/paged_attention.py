"""Paged attention: queries attend to K and V read through block tables, in the pool.

One kernel family serves decode and prefill over a cached prefix. The unit of work is
a **query row**: one token of one sequence at position ``row_len - 1``, attending
causally to that sequence's keys ``0 .. row_len - 1``, read through its block table::

    block  = block_tables[seq, pos // block_size]
    K[pos] = pool[layer, 0, block, pos % block_size, kv_head]      # [head_dim]
    V[pos] = pool[layer, 1, block, pos % block_size, kv_head]

* decode (`decode_attention`): row ``s`` is sequence ``s``'s newest token,
  ``row_len = seq_len``;
* prefill (`prefill_attention`): the ``n`` new tokens of one sequence at positions
  ``q_start .. q_start + n - 1``, ``row_len = q_start + i + 1``. Their K/V must be in
  the pool already (the slot-write kernel), and so must the prefix ``0 .. q_start - 1``
  (a prefix-cache hit, or an earlier chunk). Only the new rows are computed: a hit of
  ``q_start`` tokens saves ``q_start * (q_start + 1) / 2`` query-key products per head.

Grouped-query attention: query head ``h`` reads KV head ``h // group`` with ``group =
q_heads // num_kv_heads``, as in `paged_kv.reference.attention`.

Why one kernel family
---------------------
Decode (one query per sequence, memory-bound) and prefill over a prefix (many queries of
one sequence) differ only in how many query vectors read the same stream of K/V. So a
CUDA block takes a **query tile**: up to ``MAX_QUERIES`` (4) query vectors that read the
same KV head of the same sequence, and it streams that KV once for all of them. In
decode the tile is up to 4 query heads of one GQA group (a KV head is read once per 4
query heads, not once per head); in prefill it is ``4 // heads`` consecutive rows times
``heads`` heads of a group. With ``group = 1`` (OPT, Llama-2-7B) a decode tile is one
query: vLLM v1's shape, one CUDA block per (sequence, head). The host lays the tiles
out (`_tiles`), so the kernel does no index arithmetic on heads or rows.

The kernel (what a CUDA block does, its barriers and shared memory, how quantized
pools are read) is `paged_kv.gpu.kernels._attention_kernel`; this module lays out the
tiles, checks the arguments and launches it.

Limits (checked by the wrappers, ``ValueError`` before any launch): ``head_dim <= 256``,
and ``head_dim * itemsize`` a multiple of 4 (a row must be whole words: even for
float16, a multiple of 4 for 1-byte codes); ``q_heads`` a positive
multiple of ``num_kv_heads``; every row attends to at least one
key; every block id it reads inside the pool (host tables; a device-resident table is
checked for form only, and the kernel skips and counts an id outside the pool: see
`decode_attention`). Any block size works (1 to 256 tested),
partial last blocks included; pools in float16, float32, int8 or FP8, queries and
outputs in float32.

Not done here (next steps for a real GPU): splitting one long sequence across several
CUDA blocks (FlashDecoding, vLLM v2) when batch x heads is small, 16-byte vector loads,
and tensor-core prefill.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from paged_kv.gpu import device
from paged_kv.gpu.fences import stream_arg
from paged_kv.gpu.kernels._attention_kernel import (
    KERNEL_VARIANTS,
    MAX_QUERIES,
    MAX_TILE,
    QUANTIZED_VARIANTS,
    THREAD_VARIANTS,
    TILE_COLUMNS,
    TILE_HEAD,
    TILE_LEN,
    TILE_QUERY,
    TILE_SEQ,
)
from paged_kv.gpu.kernels._launch import DeviceBuffers, default_buffers
from paged_kv.gpu.kernels._quant_math import KIND_FLOAT, KIND_INT8, KIND_OF_STORAGE
from paged_kv.gpu.kernels._units import flat_units
from paged_kv.gpu.kernels._validate import (
    STORED_DTYPES,
    check_layer,
    check_pool,
    device_index_array,
    host_int_array,
    is_cuda_array,
    require_c_contiguous,
)
from paged_kv.gpu.kernels.gather import pad_block_tables, read_blocks_only
from paged_kv.gpu.kernels.quantized import check_scales

#: The largest head_dim (one output dim per thread, at most 256 threads).
MAX_HEAD_DIM = 256
#: Shared memory for one K or V tile, in bytes (dynamic shared memory).
TILE_BYTES = 22 * 1024


# -- host side -------------------------------------------------------------------------


def _pool_dims(pool: Any, layer: Any, kv_scales: Any, what: str) -> tuple[int, ...]:
    """Check the pool (and a quantized pool's scales) and layer; return ``(layer,
    num_blocks, block_size, num_kv_heads, head_dim)``."""
    shape = check_pool(pool, what, dtypes=STORED_DTYPES)
    num_layers, _, num_blocks, block_size, num_kv_heads, head_dim = shape
    if KIND_OF_STORAGE[np.dtype(pool.dtype).name] != KIND_FLOAT:
        check_scales(pool, kv_scales, shape, what)
    elif kv_scales is not None:
        raise ValueError(f"{what}: a {np.dtype(pool.dtype).name} pool takes no kv_scales")
    layer = check_layer(layer, num_layers, what)
    if head_dim > MAX_HEAD_DIM:
        raise ValueError(
            f"{what}: head_dim {head_dim} exceeds the kernel's limit of {MAX_HEAD_DIM} "
            f"(one output dim per thread, at most {THREAD_VARIANTS[-1]} threads)"
        )
    if (head_dim * np.dtype(pool.dtype).itemsize) % 4:
        multiple = 4 // np.dtype(pool.dtype).itemsize
        need = "an even head_dim" if multiple == 2 else f"head_dim a multiple of {multiple}"
        raise ValueError(
            f"{what}: a {np.dtype(pool.dtype).name} pool needs {need}, got {head_dim} "
            f"(the kernel stages K and V in 4-byte words)"
        )
    return layer, num_blocks, block_size, num_kv_heads, head_dim


def _query(q: Any, rows: int | None, num_kv_heads: int, head_dim: int, what: str) -> Any:
    """Check ``q[rows, q_heads, head_dim]``; return it as float32 (a device array as it
    is, a host array cast and kept on the host until launch)."""
    if is_cuda_array(q):
        if np.dtype(q.dtype) != np.float32:
            raise ValueError(f"{what}: a device q must be float32, got {np.dtype(q.dtype).name}")
        require_c_contiguous(q, what, "q")
    else:
        q = np.asarray(q)
        if q.dtype.kind != "f":
            raise ValueError(f"{what}: q must hold floats, got dtype {q.dtype}")
    shape = tuple(int(n) for n in q.shape)
    if len(shape) != 3 or shape[2] != head_dim or (rows is not None and shape[0] != rows):
        want = "num_tokens" if rows is None else str(rows)
        raise ValueError(
            f"{what}: q must have shape [{want}, q_heads, head_dim={head_dim}], got {shape}"
        )
    q_heads = shape[1]
    if q_heads == 0 or q_heads % num_kv_heads:
        raise ValueError(
            f"{what}: q_heads={q_heads} must be a positive multiple of the pool's "
            f"num_kv_heads={num_kv_heads}"
        )
    return q if is_cuda_array(q) else np.ascontiguousarray(q, dtype=np.float32)


def _scale(scale: Any, head_dim: int, what: str) -> np.float32:
    """The softmax scale as float32; default ``1 / sqrt(head_dim)``."""
    if scale is None:
        return np.float32(1.0 / math.sqrt(head_dim))
    if isinstance(scale, (bool, np.bool_)) or not isinstance(scale, (int, float, np.number)):
        raise ValueError(f"{what}: scale must be a number, got {scale!r}")
    if not math.isfinite(float(scale)):
        raise ValueError(f"{what}: scale must be finite, got {scale!r}")
    return np.float32(scale)


def _host_or_device_table(table: Any, ndim: int, what: str, name: str) -> Any:
    """A device table checked for form only (int32, `ndim`-D, C-contiguous: its ids are
    not copied back, the kernel guards them); a host one as an int64 2-D array."""
    if is_cuda_array(table):
        table = device_index_array(table, what, name, np.int32, ndim=ndim)
        return table.reshape(1, int(table.shape[0])) if ndim == 1 else table
    if ndim == 1:
        return host_int_array(table, what, name, ndim=1)[None, :]
    return pad_block_tables(table, what)


def _checked_tables(table: Any, kv_lens: np.ndarray, num_blocks: int,
                    block_size: int, what: str) -> Any:
    """Check that table row ``s`` covers ``kv_lens[s]`` tokens; for a host table also
    that those ids are inside the pool, and return it as int32 with every entry the
    kernel does not read set to -1. A device table is returned as it is."""
    needed = (kv_lens + block_size - 1) // block_size
    short = np.flatnonzero(needed > table.shape[1])
    if short.size:
        s = int(short[0])
        raise ValueError(
            f"{what}: block table {s} has {table.shape[1]} entries, {int(kv_lens[s])} "
            f"tokens need {int(needed[s])} blocks of {block_size}"
        )
    if is_cuda_array(table):
        if num_blocks == 0 and kv_lens.size and kv_lens.max() > 0:
            raise ValueError(f"{what}: the pool has no blocks to read")
        return table
    return read_blocks_only(table, np.zeros_like(kv_lens), kv_lens, block_size, num_blocks,
                            what)


def _tiles(row_seq: np.ndarray, row_len: np.ndarray, q_heads: int, num_kv_heads: int,
           row_words: int, rows_per_tile: int) -> np.ndarray:
    """The query tiles: ``[num_tiles, TILE_COLUMNS]`` int64 (columns: see TILE_*).

    A KV head's row is `row_words` pool words; TILE_HEAD is its offset in a token.

    Query ``(row r, head h)`` is row ``r * q_heads + h`` of the kernel's 2-D q and out.
    A tile takes ``rows_per_tile`` consecutive rows (the caller guarantees they share a
    sequence) times ``heads = min(group, MAX_QUERIES)`` heads of one KV group, with
    ``rows_per_tile * heads <= MAX_QUERIES``; unused slots have key count 0.
    """
    group = q_heads // num_kv_heads
    heads = min(group, MAX_QUERIES)
    rows = row_seq.shape[0]
    row_tiles = -(-rows // rows_per_tile)
    chunks = -(-group // heads)
    # tile (rt, kv_head, chunk) -> its slots (ri, hi), flattened in that order
    rt, kvh, chunk, ri, hi = np.meshgrid(
        np.arange(row_tiles), np.arange(num_kv_heads), np.arange(chunks),
        np.arange(rows_per_tile), np.arange(heads), indexing="ij",
    )
    row = rt * rows_per_tile + ri
    in_group = chunk * heads + hi
    used = (row < rows) & (in_group < group)
    row = np.minimum(row, rows - 1)
    shape = (row_tiles * num_kv_heads * chunks, rows_per_tile * heads)
    table = np.zeros((shape[0], TILE_COLUMNS), dtype=np.int64)
    table[:, TILE_SEQ] = row_seq[row[..., 0, 0]].reshape(-1)
    table[:, TILE_HEAD] = (kvh[..., 0, 0] * row_words).reshape(-1)
    head = kvh * group + np.minimum(in_group, group - 1)
    table[:, TILE_QUERY:TILE_QUERY + shape[1]] = (row * q_heads + head).reshape(shape)
    table[:, TILE_LEN:TILE_LEN + shape[1]] = np.where(used, row_len[row], 0).reshape(shape)
    # A tile's used slots come first (the kernel takes slots 0 .. nq - 1).
    order = np.argsort(table[:, TILE_LEN:TILE_LEN + shape[1]] == 0, axis=1, kind="stable")
    for first in (TILE_QUERY, TILE_LEN):
        block = table[:, first:first + shape[1]]
        table[:, first:first + shape[1]] = np.take_along_axis(block, order, axis=1)
    return table


def _stride(head_dim: int, itemsize: int) -> int:
    """Elements per shared row: at least head_dim, an odd number of 4-byte words."""
    stride = head_dim
    while (stride * itemsize) % 4 or (stride * itemsize // 4) % 2 == 0:
        stride += 1
    return stride


@dataclass(frozen=True)
class QueryTiles:
    """The query tiles of a launch (`query_tiles`): laid out on the host, kept there or
    uploaded once and reused by every layer of a step (`planned_attention`)."""

    #: ``[num_tiles, TILE_COLUMNS]`` int64 (columns: see TILE_*), NumPy or on the device
    table: Any
    #: query vectors per tile the kernel variant takes: 1, or MAX_QUERIES
    queries: int
    #: query rows the tiles cover (q's first axis)
    rows: int
    #: query heads per row (q's second axis)
    q_heads: int
    #: block-table rows the tiles read: 1 + the largest sequence index of a row
    num_seqs: int
    #: the longest row's key count (a table needs ``ceil(max_len / block_size)`` columns)
    max_len: int

    @property
    def num_tiles(self) -> int:
        """Tiles, one CUDA block each."""
        return int(self.table.shape[0])

    def on_device(self, table: Any) -> QueryTiles:
        """The same tiles with `table` (their device copy) in place of the host array."""
        return dataclasses.replace(self, table=table)


def query_tiles(pool: Any, q_heads: int, row_seq: np.ndarray, row_len: np.ndarray,
                rows_per_tile: int | None = None) -> QueryTiles:
    """The query tiles (host) of query rows over `pool`: row ``r`` belongs to block-table
    row ``row_seq[r]`` and attends to its keys ``0 .. row_len[r] - 1``.

    `rows_per_tile` (rows of one sequence that share a tile) defaults to decode's
    layout (1) unless every row belongs to one sequence, then to prefill's (as many as
    fit ``MAX_QUERIES`` with a GQA group's heads). The pool gives the KV heads, head_dim
    and element size; `q_heads` must be a positive multiple of the KV heads.
    """
    row_seq = np.asarray(row_seq, dtype=np.int64)
    row_len = np.asarray(row_len, dtype=np.int64)
    _, _, _, _, num_kv_heads, head_dim = (int(n) for n in pool.shape)
    rows = int(row_seq.shape[0])
    if rows == 0:
        return QueryTiles(np.zeros((0, TILE_COLUMNS), dtype=np.int64), 1, 0, q_heads, 0, 0)
    heads = min(q_heads // num_kv_heads, MAX_QUERIES)
    if rows_per_tile is None:
        one_seq = rows > 1 and bool(np.all(row_seq == row_seq[0]))
        rows_per_tile = MAX_QUERIES // heads if one_seq else 1
    row_words = head_dim * np.dtype(pool.dtype).itemsize // 4
    tiles = _tiles(row_seq, row_len, q_heads, num_kv_heads, row_words, rows_per_tile)
    queries = 1 if tiles[:, TILE_LEN + 1].max() == 0 else MAX_QUERIES
    return QueryTiles(tiles, queries, rows, q_heads, int(row_seq.max()) + 1,
                      int(row_len.max()))


class AttentionLaunch:
    """A checked paged-attention launch with its inputs on the device: calling it
    enqueues the kernel on its stream and returns `out`, the float32 device array
    ``[rows, q_heads, head_dim]`` it fills. `decode_attention` and `prefill_attention`
    call one once; `benchmarks/attention.py` calls one repeatedly to time the kernel
    without the host-side checks and uploads. Its inputs live in `DeviceBuffers`: it
    may be called again until the next launch is prepared with the same buffers and
    stream. A quantized pool comes with its checked `kv_scales`."""

    def __init__(self, pool: Any, dims: tuple[int, ...], q: Any, table: Any,
                 tiles: QueryTiles, scale: np.float32, stream: Any,
                 buffers: DeviceBuffers | None, kv_scales: Any = None) -> None:
        layer, num_blocks, block_size, num_kv_heads, head_dim = dims
        rows, q_heads = int(q.shape[0]), int(q.shape[1])
        api = device.cuda_api()
        self.out = api.device_array((rows, q_heads, head_dim), dtype=np.float32,
                                    stream=stream_arg(stream))
        self._kernel = None
        if rows == 0:
            return  # nothing to launch
        threads = next(t for t in THREAD_VARIANTS if head_dim <= t)
        itemsize = np.dtype(pool.dtype).itemsize
        stride = _stride(head_dim, itemsize)
        # one score per thread: a tile has at most `threads` tokens
        tile = max(1, min(MAX_TILE, threads, TILE_BYTES // (stride * itemsize)))
        row_words = head_dim * itemsize // 4  # float16: two elements per word
        token_words = num_kv_heads * row_words
        v_offset = num_blocks * block_size * token_words
        queries = tiles.queries
        buffers = default_buffers() if buffers is None else buffers
        q_dev = q if is_cuda_array(q) else buffers.upload("attention_q", q, stream)
        storage = np.dtype(pool.dtype).name
        kind = KIND_OF_STORAGE[storage]
        if kind == KIND_FLOAT:
            self._kernel = KERNEL_VARIANTS[threads, queries]
            # no scales: the output array stands in for the unused scale array
            scale_args = (self.out.reshape(self.out.size), 0, 0, num_kv_heads)
        else:
            self._kernel = QUANTIZED_VARIANTS[threads, queries, storage]
            per_side = num_kv_heads * (num_blocks * block_size if kind == KIND_INT8 else 1)
            scale_args = (kv_scales.reshape(kv_scales.size), layer * 2 * per_side, per_side,
                          num_kv_heads)
        self._config = (tiles.num_tiles, threads, stream_arg(stream), tile * stride * itemsize)
        self._args = (
            pool.reshape(pool.size), flat_units(pool, np.dtype(np.uint32)), layer * 2 * v_offset,
            v_offset, block_size, token_words, row_words, stride, tile,
            q_dev.reshape(rows * q_heads, head_dim), scale,
            table if is_cuda_array(table) else buffers.upload("attention_tables", table, stream),
            tiles.table if is_cuda_array(tiles.table)
            else buffers.upload("attention_tiles", tiles.table, stream),
            self.out.reshape(rows * q_heads, head_dim),
            *scale_args,
            num_blocks,
            buffers.errors,
        )

    def __call__(self) -> Any:
        if self._kernel is not None:
            self._kernel[self._config](*self._args)
        return self.out


def prepare_decode(pool: Any, layer: int, q: Any, block_tables: Any, seq_lens: Any, *,
                   scale: float | None = None, kv_scales: Any = None, stream: Any = None,
                   buffers: DeviceBuffers | None = None) -> AttentionLaunch:
    """Check and upload `decode_attention`'s arguments; return the launch, not yet run."""
    what = "decode_attention"
    dims = _pool_dims(pool, layer, kv_scales, what)
    _, num_blocks, block_size, num_kv_heads, head_dim = dims
    table = _host_or_device_table(block_tables, 2, what, "block_tables")
    batch = int(table.shape[0])
    lens = host_int_array(seq_lens, what, "seq_lens", ndim=1, stream=stream)
    if lens.shape[0] != batch:
        raise ValueError(f"{what}: seq_lens has {lens.shape[0]} entries for {batch} block tables")
    q = _query(q, batch, num_kv_heads, head_dim, what)
    empty = np.flatnonzero(lens < 1)
    if empty.size:
        s = int(empty[0])
        raise ValueError(
            f"{what}: sequence {s} has seq_len {int(lens[s])}; a query needs at least one "
            f"key (write the new token's K/V first)"
        )
    scale = _scale(scale, head_dim, what)
    table = _checked_tables(table, lens, num_blocks, block_size, what)
    tiles = query_tiles(pool, int(q.shape[1]), np.arange(batch, dtype=np.int64), lens, 1)
    return AttentionLaunch(pool, dims, q, table, tiles, scale, stream, buffers, kv_scales)


def prepare_prefill(pool: Any, layer: int, q: Any, block_table: Any, q_start: int, *,
                    scale: float | None = None, kv_scales: Any = None, stream: Any = None,
                    buffers: DeviceBuffers | None = None) -> AttentionLaunch:
    """Check and upload `prefill_attention`'s arguments; return the launch, not yet run."""
    what = "prefill_attention"
    dims = _pool_dims(pool, layer, kv_scales, what)
    _, num_blocks, block_size, num_kv_heads, head_dim = dims
    table = _host_or_device_table(block_table, 1, what, "block_table")
    if isinstance(q_start, (bool, np.bool_)) or not isinstance(q_start, (int, np.integer)) \
            or q_start < 0:
        raise ValueError(f"{what}: q_start must be an integer >= 0, got {q_start!r}")
    q_start = int(q_start)
    q = _query(q, None, num_kv_heads, head_dim, what)
    scale = _scale(scale, head_dim, what)
    n = int(q.shape[0])
    kv_len = q_start + n if n else 0  # no query reads nothing
    table = _checked_tables(table, np.array([kv_len], dtype=np.int64), num_blocks, block_size,
                            what)
    heads = min(int(q.shape[1]) // num_kv_heads, MAX_QUERIES)
    row_len = np.arange(q_start + 1, q_start + n + 1, dtype=np.int64)
    tiles = query_tiles(pool, int(q.shape[1]), np.zeros(n, dtype=np.int64), row_len,
                        MAX_QUERIES // heads)
    return AttentionLaunch(pool, dims, q, table, tiles, scale, stream, buffers, kv_scales)


def decode_attention(pool: Any, layer: int, q: Any, block_tables: Any, seq_lens: Any, *,
                     scale: float | None = None, kv_scales: Any = None, stream: Any = None,
                     buffers: DeviceBuffers | None = None) -> Any:
    """One decode step for a batch: sequence ``s``'s query attends to its ``seq_lens[s]``
    keys (positions ``0 .. seq_lens[s] - 1``, the last one its own).

    `pool` is a device pool ``[num_layers, 2, num_blocks, block_size, num_kv_heads,
    head_dim]``: float16 or float32, or a quantized pool (int8 codes, or FP8 E4M3
    patterns in uint8) with its device `kv_scales` (`paged_kv.gpu.kernels.quantized` has
    the layouts; ``KVStorage.gpu_scales``); `q` is ``[batch, q_heads, head_dim]`` (NumPy of
    any float dtype, or a float32 device array), ``q_heads`` a multiple of
    ``num_kv_heads``; `block_tables` is a padded 2-D integer array ``[batch,
    max_blocks]`` (-1 padding, never read) or a list of per-sequence lists, or a device
    int32 ``[batch, max_blocks]`` array; `seq_lens` is 1-D integer of length batch.
    `scale` multiplies ``q . k`` (default ``1 / sqrt(head_dim)``). The uploads (into
    `buffers`, default `default_buffers()`) and the launch are enqueued on `stream`
    (None: the default stream). Returns a new float32 device array ``[batch, q_heads,
    head_dim]``. `seq_lens` lays out the work, so it is needed on the host (a device
    array there is copied back).

    Index arrays may also live on the device: a device block table is not copied back
    to be checked. Its form is checked on the host; the kernel never reads a block id
    outside ``[0, num_blocks)``: the token is skipped (it adds nothing to the softmax;
    a query with no key left gets zeros) and counted in ``buffers.errors``, once per
    query tile that reads it (`DeviceBuffers.take_errors` reads and resets the count).

    Raises `ValueError` before any launch when: the layer is out of range; head_dim >
    256; q has another shape or non-float values; q_heads is not a positive multiple
    of num_kv_heads; seq_lens is not 1-D integer of length batch or holds a length < 1;
    a table has fewer than ``ceil(seq_len / block_size)`` entries or, for a host table,
    one of those is outside ``[0, num_blocks)``; a device table is not a C-contiguous
    2-D int32 array with a row per sequence; scale is not a finite number; a quantized
    pool comes without its scales or with scales of another shape, or a float pool with
    scales.
    """
    return prepare_decode(pool, layer, q, block_tables, seq_lens, scale=scale,
                          kv_scales=kv_scales, stream=stream, buffers=buffers)()


def prefill_attention(pool: Any, layer: int, q: Any, block_table: Any, q_start: int, *,
                      scale: float | None = None, kv_scales: Any = None, stream: Any = None,
                      buffers: DeviceBuffers | None = None) -> Any:
    """Causal attention of one sequence's new tokens over its cached prefix and themselves.

    `q` is ``[n, q_heads, head_dim]`` for positions ``q_start .. q_start + n - 1``; row
    ``i`` attends to keys ``0 .. q_start + i``, read through `block_table` (1-D
    integer, or a device int32 array: the sequence's physical blocks in logical order;
    a device table is guarded in the kernel as in `decode_attention`), so the K/V of all
    ``q_start + n`` positions must be in the pool. Other arguments as in
    `decode_attention`. Returns a new float32 device array ``[n, q_heads, head_dim]``.

    Raises `ValueError` before any launch when: q_start is not an integer >= 0; the
    table has fewer than ``ceil((q_start + n) / block_size)`` entries or, for a host
    table, one of those is outside ``[0, num_blocks)``; a device table is not 1-D int32;
    and for the reasons `decode_attention` gives.
    """
    return prepare_prefill(pool, layer, q, block_table, q_start, scale=scale,
                           kv_scales=kv_scales, stream=stream, buffers=buffers)()


def planned_attention(pool: Any, layer: int, q: Any, block_tables: Any, tiles: QueryTiles, *,
                      scale: float | None = None, kv_scales: Any = None, stream: Any = None,
                      buffers: DeviceBuffers | None = None) -> Any:
    """Attention of the query rows that `tiles` lay out, through device-resident
    `block_tables`: a step's tables and tiles are made and uploaded once
    (`paged_kv.gpu.step_indices`) and every layer's launch reuses them.

    `block_tables` is a device int32 ``[num_seqs, max_blocks]`` array (the form is
    checked; the ids are guarded by the kernel as in `decode_attention`, and were
    checked on the host when the step was made); `tiles` comes from `query_tiles`
    (host or device table); `q` is ``[tiles.rows, tiles.q_heads, head_dim]``. Other
    arguments as in `decode_attention`. Returns a new float32 device array ``[rows,
    q_heads, head_dim]``.

    Raises `ValueError` before any launch for a q of another shape, a table with fewer
    rows or columns than the tiles read, and for the pool, layer and scale reasons of
    `decode_attention`.
    """
    what = "planned_attention"
    dims = _pool_dims(pool, layer, kv_scales, what)
    _, num_blocks, block_size, num_kv_heads, head_dim = dims
    table = device_index_array(block_tables, what, "block_tables", np.int32, ndim=2)
    q = _query(q, tiles.rows, num_kv_heads, head_dim, what)
    if int(q.shape[1]) != tiles.q_heads:
        raise ValueError(f"{what}: q has {int(q.shape[1])} heads, the tiles were laid out "
                         f"for {tiles.q_heads}")
    needed = -(-tiles.max_len // block_size)
    if int(table.shape[0]) < tiles.num_seqs or int(table.shape[1]) < needed:
        raise ValueError(
            f"{what}: block_tables has shape {tuple(table.shape)}; the tiles read "
            f"{tiles.num_seqs} rows of at least {needed} blocks of {block_size}"
        )
    if num_blocks == 0 and tiles.max_len > 0:
        raise ValueError(f"{what}: the pool has no blocks to read")
    scale = _scale(scale, head_dim, what)
    return AttentionLaunch(pool, dims, q, table, tiles, scale, stream, buffers, kv_scales)()
