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
q_heads // num_kv_heads``, as in `paged_kv.attention`.

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

Inside a CUDA block
-------------------
``threads`` = 32 (one warp) when ``head_dim <= 32``, 128 (four warps) when
``head_dim <= 128``, 256 when ``head_dim <= 256`` (`MAX_HEAD_DIM`): thread ``d`` owns
output dim ``d``. Six variants are compiled per pool kind: 32, 128 or 256 threads,
times tiles of 1 query (decode without GQA) or of up to 4. (The one-warp variant keeps
small test models cheap in the simulator, which pays per thread, and keeps 32-dim heads
from idling three warps of four on a GPU.) The block walks its KV stream in tiles of
``T <= min(128, threads)`` tokens (one score per thread), as many as fit one K or V
tile of `TILE_BYTES` (22 KiB) of shared memory in the pool's own dtype: 86 tokens at
float16 and head_dim 128, 43 at float32. Per tile, five barriers::

    1. all threads          stage K[t, :] in shared memory in 4-byte words (two halves
                            or one float): consecutive threads read consecutive words
                            (coalesced), and each issues the loads of STAGE_UNROLL
                            rows before its first store
    2. thread t             scores s_j = (scale * q_j) . K[t] for its token and each
                            query j of the tile (-inf past that query's row_len)
    3. threads j < queries  running max m_j, rescale alpha_j = exp(m_old - m_new);
       all threads          stage V over K (K is no longer needed)
    4. thread t             p_j = exp(s_j - m_j) (s_j kept in registers since step 2);
                            the next tile's token offsets (one block-table read each)
    5. thread d             acc_j = alpha_j * acc_j + sum_t p_j[t] * V[t, d]
                            l_j   = alpha_j * l_j   + sum_t p_j[t]

and at the end ``out_j[d] = acc_j / l_j``: the online softmax of FlashAttention /
FlashDecoding, in float32 (scores, probabilities, sums) whatever the pool's dtype. No
warp shuffles (Numba's CUDA simulator has none): barriers and shared memory run in the
simulator too, so the simulator checks this exact code. Shared rows are padded to an
odd number of 4-byte words (``stride``), so thread t reading row t hits its own bank.
Static shared arrays have compile-time sizes; the K/V tile is dynamic shared memory
sized at launch. ``launch_bounds = (threads, 1024 // threads)`` caps registers at 64,
so 1024 threads (8 blocks of 128) can be resident per SM, which is also what about
27 KiB of shared memory per block allows on an H100/H200 (228 KiB per SM).

Quantized pools
---------------
Variants ``..._int8`` and ``..._fp8`` read int8 codes or FP8 E4M3 bit patterns
(`paged_kv.kernels.quantized` has the pools and their scales). Staging is the same (a
row is ``head_dim`` bytes: ``head_dim / 4`` words), and so is the shared tile (bytes);
the element read in steps 2 and 5 is decoded to float32, and the scales are folded in
where they cost least:

* int8 (a scale per token and KV head): step 2 multiplies token t's dot products by
  its K scale; step 4 also stages its V scale, which step 5 applies per token
  (``acc += p * v_scale[t] * code``; the denominator sums ``p`` alone);
* FP8 (a static scale per KV head): the K scale multiplies the staged query, the V scale
  the final output; step 2 and 5 decode each pattern by bit fields
  (`paged_kv.kernels._quant_math.e4m3_decode`).

The float16/float32 variants are the same source with the quantized branches folded
away at compile time (the kind is a closure constant).

Limits (checked by the wrappers, ``ValueError`` before any launch): ``head_dim <= 256``,
and ``head_dim * itemsize`` a multiple of 4 (a row must be whole words: even for
float16, a multiple of 4 for 1-byte codes); ``q_heads`` a positive
multiple of ``num_kv_heads``; every row attends to at least one
key; every block id it reads inside the pool. Any block size works (1 to 256 tested),
partial last blocks included; pools in float16, float32, int8 or FP8, queries and
outputs in float32.

Not done here (next steps for a real GPU): splitting one long sequence across several
CUDA blocks (FlashDecoding, vLLM v2) when batch x heads is small, 16-byte vector loads,
and tensor-core prefill.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numba import float32, int64, types, uint64

from paged_kv import device
from paged_kv.fences import stream_arg
from paged_kv.kernels._launch import DeviceBuffers, default_buffers
from paged_kv.kernels._quant_math import (
    KIND_FLOAT,
    KIND_FP8,
    KIND_INT8,
    KIND_OF_STORAGE,
    e4m3_decode,
)
from paged_kv.kernels._units import flat_units
from paged_kv.kernels._validate import (
    STORED_DTYPES,
    check_layer,
    check_pool,
    host_int_array,
    is_cuda_array,
    require_c_contiguous,
    require_cuda_array,
)
from paged_kv.kernels.gather import pad_block_tables, read_blocks_only
from paged_kv.kernels.quantized import check_scales

from numba import cuda  # isort: skip  (kernel intrinsics; the simulator swaps this name)

#: Query vectors one CUDA block serves (GQA heads of one group and/or prefill rows).
MAX_QUERIES = 4
#: The largest head_dim (one output dim per thread, at most 256 threads).
MAX_HEAD_DIM = 256
#: Tokens per KV tile at most (one score per thread).
MAX_TILE = 128
#: Shared memory for one K or V tile, in bytes (dynamic shared memory).
TILE_BYTES = 22 * 1024
#: Global loads each thread issues before it stores any (memory-level parallelism).
STAGE_UNROLL = 8
#: Threads per CUDA block: the kernel variants, smallest first.
THREAD_VARIANTS = (32, 128, 256)
#: Queries per tile: 1 (decode without GQA) or MAX_QUERIES.
QUERY_VARIANTS = (1, MAX_QUERIES)

# Columns of the per-tile table the host builds (`_tiles`): the block-table row, the
# KV head's offset in a token (pool words), then MAX_QUERIES query rows and key counts.
TILE_SEQ = 0
TILE_HEAD = 1
TILE_QUERY = 2
TILE_LEN = TILE_QUERY + MAX_QUERIES
TILE_COLUMNS = TILE_LEN + MAX_QUERIES

_NEG_INF = float32(-math.inf)
_ZERO = float32(0.0)
_ONE = float32(1.0)


def _make_kernel(threads: int, queries: int, kind: int = KIND_FLOAT) -> Any:
    """The kernel for ``head_dim <= threads``, tiles of at most `queries` queries, and
    pools of `kind` (`KIND_FLOAT`, `KIND_INT8`, `KIND_FP8`: see "Quantized pools").

    Thread ``d`` owns output dim ``d``. A 1-query kernel keeps decode without GQA free
    of the per-query loops. Hot loops are ``while`` loops (Numba lowers ``range`` with
    extra 64-bit bookkeeping that defeats unrolling) over one query at a time (fewer
    live registers than all queries at once).
    """
    q_elems = queries * threads
    p_elems = queries * MAX_TILE
    token_scale_elems = MAX_TILE if kind == KIND_INT8 else 1  # int8's per-token scales
    # At most 64 registers (65536 / 1024) so that 1024 threads (eight 128-thread blocks,
    # 32 warps) stay resident per SM. The simulator's jit takes no such options.
    options = {} if device.is_simulator() else {
        "launch_bounds": (threads, 1024 // threads),
        "shared_memory_carveout": "MaxShared",
    }

    @device.jit(**options)
    def paged_attention_kernel(flat_pool, words, k_offset, v_offset, block_size, token_words,
                               row_words, stride, tile, q, scale, block_tables, tiles, out,
                               scales, k_scale_offset, v_scale_offset, num_kv_heads):
        """One CUDA block: one query tile (row ``cuda.blockIdx.x`` of `tiles`).

        `words` is the pool viewed as 1-D uint32 words: the ``row_words`` words of a K
        row start at word ``k_offset + slot * token_words + tiles[b, TILE_HEAD]``, V
        ``v_offset`` words further. `flat_pool` (the pool as elements) only types the
        shared tile. `q` and `out` are ``[query rows, head_dim]`` float32; `tiles` is
        ``[num_tiles, TILE_COLUMNS]``. The dynamic shared memory holds ``tile`` rows of
        ``stride`` pool elements, staged as words. Quantized kinds: `scales` is flat
        float32; KV head h's K scale is at ``k_scale_offset + slot * num_kv_heads + h``
        (int8) or ``k_scale_offset + h`` (FP8), its V scale ``v_scale_offset`` further.
        The float kind ignores the four scale arguments.
        Shared indices are cast to uint64: Numba adds no negative-index wrap-around
        to unsigned indices.
        """
        kv_sh = cuda.shared.array(0, flat_pool.dtype)  # [tile, stride]: K, then V
        kv_words_sh = cuda.shared.array(0, words.dtype)  # the same memory, as words
        q_sh = cuda.shared.array(q_elems, float32)  # [queries, threads], scaled
        p_sh = cuda.shared.array(p_elems, float32)  # [queries, MAX_TILE]
        base_sh = cuda.shared.array(MAX_TILE, int64)  # token t's K row, in pool words
        m_sh = cuda.shared.array(queries, float32)  # running max per query
        alpha_sh = cuda.shared.array(queries, float32)  # this tile's rescale
        scale_sh = cuda.shared.array(token_scale_elems, int64)  # int8: token t's K scale
        v_scale_sh = cuda.shared.array(token_scale_elems, float32)  # int8: its V scale
        s = cuda.local.array(queries, float32)  # my token's scores
        acc = cuda.local.array(queries, float32)  # my dim of each output
        l = cuda.local.array(queries, float32)  # softmax denominators
        vals = cuda.local.array(STAGE_UNROLL, words.dtype)

        tid = cuda.threadIdx.x
        b = cuda.blockIdx.x
        head_dim = q.shape[1]
        seq = tiles[b, TILE_SEQ]
        head_off = tiles[b, TILE_HEAD] + k_offset
        q_scale = scale
        out_scale = _ONE
        head_scale = k_scale_offset  # + the KV head: int8's offset in a slot, FP8's index
        if kind != KIND_FLOAT:
            head_scale += tiles[b, TILE_HEAD] // row_words
            if kind == KIND_FP8:
                q_scale = scale * scales[head_scale]
                out_scale = scales[head_scale + v_scale_offset]
        nq = 0
        kv_len = 0
        for j in range(queries):
            length = tiles[b, TILE_LEN + j]
            if length > 0:
                nq = j + 1
                kv_len = max(kv_len, length)
        for j in range(queries):
            if j < nq and tid < head_dim:
                q_sh[j * threads + tid] = q[tiles[b, TILE_QUERY + j], tid] * q_scale
            acc[j] = _ZERO
            l[j] = _ZERO
        if tid < queries:
            m_sh[tid] = _NEG_INF

        # Staging: thread tid moves word w_stage of rows t_stage, t_stage + rows_per_pass,
        # ... (threads past rows_per_pass * row_words idle when row_words does not
        # divide the block).
        stride_words = stride * row_words // head_dim
        rows_per_pass = threads // row_words
        t_stage = tid // row_words
        w_stage = tid - t_stage * row_words
        if t_stage >= rows_per_pass:
            t_stage = MAX_TILE
        # Thread tid finds token t0 + tid's slot; its block-table position advances by
        # `tile` tokens per tile without a division.
        logical = tid // block_size
        offset = tid - logical * block_size
        step_blocks = tile // block_size
        step_offset = tile - step_blocks * block_size
        if tid < min(tile, kv_len):
            slot = block_tables[seq, logical] * block_size + offset
            base_sh[tid] = slot * token_words + head_off
            if kind == KIND_INT8:
                scale_sh[tid] = slot * num_kv_heads + head_scale
        cuda.syncthreads()

        t0 = 0
        while t0 < kv_len:
            n = min(tile, kv_len - t0)
            for half in range(2):  # 0: K, then scores; 1: V, while the max is taken
                if half == 1 and tid < nq:
                    m_old = m_sh[tid]
                    m_new = m_old
                    for t in range(n):
                        m_new = max(m_new, p_sh[uint64(tid * MAX_TILE + t)])
                    alpha_sh[tid] = math.exp(m_old - m_new)  # 0 on the first tile
                    m_sh[tid] = m_new
                kv_off = half * v_offset + w_stage
                t_chunk = t_stage
                while t_chunk < n:
                    # No branch around the loads (rows past the tile reload row n - 1),
                    # so all STAGE_UNROLL of them are in flight before a store waits.
                    t = t_chunk
                    for u in range(STAGE_UNROLL):
                        vals[u] = words[uint64(base_sh[min(t, n - 1)] + kv_off)]
                        t += rows_per_pass
                    t = t_chunk
                    for u in range(STAGE_UNROLL):
                        if t < n:
                            kv_words_sh[uint64(t * stride_words + w_stage)] = vals[u]
                        t += rows_per_pass
                    t_chunk = t
                cuda.syncthreads()
                if half == 0:
                    if tid < n:
                        row = tid * stride
                        for j in range(queries):
                            dot = _ZERO
                            if j < nq:
                                d = 0
                                if kind == KIND_FP8:
                                    while d < head_dim:
                                        dot += q_sh[uint64(j * threads + d)] * e4m3_decode(
                                            kv_sh[uint64(row + d)])
                                        d += 1
                                else:
                                    while d < head_dim:
                                        dot += q_sh[uint64(j * threads + d)] * float32(
                                            kv_sh[uint64(row + d)])
                                        d += 1
                                if kind == KIND_INT8:
                                    dot *= scales[scale_sh[tid]]
                            s[j] = dot
                        for j in range(queries):
                            if j < nq:
                                if t0 + tid >= tiles[b, TILE_LEN + j]:
                                    s[j] = _NEG_INF  # causal mask (prefill rows)
                                p_sh[j * MAX_TILE + tid] = s[j]
                    cuda.syncthreads()
            if tid < n:
                for j in range(queries):
                    if j < nq:
                        p_sh[j * MAX_TILE + tid] = math.exp(s[j] - m_sh[j])
                if kind == KIND_INT8:
                    v_scale_sh[tid] = scales[scale_sh[tid] + v_scale_offset]
            # The next tile's offsets: base_sh is not read again in this tile.
            logical += step_blocks
            offset += step_offset
            if offset >= block_size:
                offset -= block_size
                logical += 1
            if tid < min(tile, kv_len - t0 - n):
                slot = block_tables[seq, logical] * block_size + offset
                base_sh[tid] = slot * token_words + head_off
                if kind == KIND_INT8:
                    scale_sh[tid] = slot * num_kv_heads + head_scale
            cuda.syncthreads()
            if tid < head_dim:
                for j in range(queries):
                    if j < nq:
                        a = acc[j] * alpha_sh[j]
                        total = l[j] * alpha_sh[j]
                        t = 0
                        while t < n:
                            p = p_sh[uint64(j * MAX_TILE + t)]
                            if kind == KIND_FP8:
                                a += p * e4m3_decode(kv_sh[uint64(t * stride + tid)])
                            elif kind == KIND_INT8:
                                a += p * v_scale_sh[t] * float32(kv_sh[uint64(t * stride + tid)])
                            else:
                                a += p * float32(kv_sh[uint64(t * stride + tid)])
                            total += p
                            t += 1
                        acc[j] = a
                        l[j] = total
            cuda.syncthreads()  # the V tile is read: the next K tile may overwrite it
            t0 += n

        if tid < head_dim:
            for j in range(queries):
                if j < nq:
                    out[tiles[b, TILE_QUERY + j], tid] = acc[j] / l[j] * out_scale

    return paged_attention_kernel


#: (threads per block, queries per tile) -> kernel; ``head_dim <= threads``.
KERNEL_VARIANTS = {
    (threads, queries): _make_kernel(threads, queries)
    for threads in THREAD_VARIANTS for queries in QUERY_VARIANTS
}
#: (threads, queries, quantized pool dtype: "int8" or "uint8" for FP8) -> kernel.
QUANTIZED_VARIANTS = {
    (threads, queries, storage): _make_kernel(threads, queries, KIND_OF_STORAGE[storage])
    for threads in THREAD_VARIANTS for queries in QUERY_VARIANTS
    for storage in ("int8", "uint8")
}


def signature(dtype: str) -> Any:
    """The Numba signature the wrappers launch a kernel variant with, per pool dtype."""
    elem = getattr(types, dtype)
    i64 = types.int64
    return types.void(
        types.Array(elem, 1, "C"),  # the pool as elements (types the shared tile)
        types.Array(types.uint32, 1, "C"),  # the pool as words
        i64, i64, i64, i64,  # k_offset, v_offset (words), block_size, token_words
        i64, i64, i64,  # row_words, stride (elements), tile
        types.Array(types.float32, 2, "C"),  # q [query rows, head_dim]
        types.float32,  # scale
        types.Array(types.int32, 2, "C"),  # block_tables
        types.Array(i64, 2, "C"),  # tiles
        types.Array(types.float32, 2, "C"),  # out [query rows, head_dim]
        types.Array(types.float32, 1, "C"),  # scales (flat)
        i64, i64, i64,  # k_scale_offset, v_scale_offset, num_kv_heads
    )


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
    require_cuda_array(pool, what, "pool")
    require_c_contiguous(pool, what, "pool")
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


def _checked_tables(table: np.ndarray, kv_lens: np.ndarray, num_blocks: int,
                    block_size: int, what: str) -> np.ndarray:
    """Check that table row ``s`` covers ``kv_lens[s]`` tokens with ids inside the pool;
    return it as int32 with every entry the kernel does not read set to -1."""
    needed = (kv_lens + block_size - 1) // block_size
    short = np.flatnonzero(needed > table.shape[1])
    if short.size:
        s = int(short[0])
        raise ValueError(
            f"{what}: block table {s} has {table.shape[1]} entries, {int(kv_lens[s])} "
            f"tokens need {int(needed[s])} blocks of {block_size}"
        )
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


class AttentionLaunch:
    """A checked paged-attention launch with its inputs on the device: calling it
    enqueues the kernel on its stream and returns `out`, the float32 device array
    ``[rows, q_heads, head_dim]`` it fills. `decode_attention` and `prefill_attention`
    call one once; `benchmarks/attention.py` calls one repeatedly to time the kernel
    without the host-side checks and uploads. Its inputs live in `DeviceBuffers`: it
    may be called again until the next launch is prepared with the same buffers and
    stream. A quantized pool comes with its checked `kv_scales`."""

    def __init__(self, pool: Any, dims: tuple[int, ...], q: Any, table: np.ndarray,
                 row_seq: np.ndarray, row_len: np.ndarray, rows_per_tile: int,
                 scale: np.float32, stream: Any, buffers: DeviceBuffers | None,
                 kv_scales: Any = None) -> None:
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
        tiles = _tiles(row_seq, row_len, q_heads, num_kv_heads, row_words, rows_per_tile)
        queries = 1 if tiles[:, TILE_LEN + 1].max() == 0 else MAX_QUERIES
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
        self._config = (tiles.shape[0], threads, stream_arg(stream), tile * stride * itemsize)
        self._args = (
            pool.reshape(pool.size), flat_units(pool, np.dtype(np.uint32)), layer * 2 * v_offset,
            v_offset, block_size, token_words, row_words, stride, tile,
            q_dev.reshape(rows * q_heads, head_dim), scale,
            buffers.upload("attention_tables", table, stream),
            buffers.upload("attention_tiles", tiles, stream),
            self.out.reshape(rows * q_heads, head_dim),
            *scale_args,
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
    table = pad_block_tables(block_tables, what)
    batch = table.shape[0]
    lens = host_int_array(seq_lens, what, "seq_lens", ndim=1)
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
    return AttentionLaunch(pool, dims, q, table, np.arange(batch, dtype=np.int64), lens, 1,
                           scale, stream, buffers, kv_scales)


def prepare_prefill(pool: Any, layer: int, q: Any, block_table: Any, q_start: int, *,
                    scale: float | None = None, kv_scales: Any = None, stream: Any = None,
                    buffers: DeviceBuffers | None = None) -> AttentionLaunch:
    """Check and upload `prefill_attention`'s arguments; return the launch, not yet run."""
    what = "prefill_attention"
    dims = _pool_dims(pool, layer, kv_scales, what)
    _, num_blocks, block_size, num_kv_heads, head_dim = dims
    table = host_int_array(block_table, what, "block_table", ndim=1)[None, :]
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
    return AttentionLaunch(pool, dims, q, table, np.zeros(n, dtype=np.int64), row_len,
                           MAX_QUERIES // heads, scale, stream, buffers, kv_scales)


def decode_attention(pool: Any, layer: int, q: Any, block_tables: Any, seq_lens: Any, *,
                     scale: float | None = None, kv_scales: Any = None, stream: Any = None,
                     buffers: DeviceBuffers | None = None) -> Any:
    """One decode step for a batch: sequence ``s``'s query attends to its ``seq_lens[s]``
    keys (positions ``0 .. seq_lens[s] - 1``, the last one its own).

    `pool` is a device pool ``[num_layers, 2, num_blocks, block_size, num_kv_heads,
    head_dim]``: float16 or float32, or a quantized pool (int8 codes, or FP8 E4M3
    patterns in uint8) with its device `kv_scales` (`paged_kv.kernels.quantized` has
    the layouts; ``KVStorage.gpu_scales``); `q` is ``[batch, q_heads, head_dim]`` (NumPy of
    any float dtype, or a float32 device array), ``q_heads`` a multiple of
    ``num_kv_heads``; `block_tables` is a padded 2-D integer array ``[batch,
    max_blocks]`` (-1 padding, never read) or a list of per-sequence lists; `seq_lens`
    is 1-D integer of length batch. `scale` multiplies ``q . k`` (default ``1 /
    sqrt(head_dim)``). The uploads (into `buffers`, default `default_buffers()`) and
    the launch are enqueued on `stream` (None: the default stream). Returns a new
    float32 device array ``[batch, q_heads, head_dim]``; block tables are needed on the
    host (to check every id read), so a device table is copied back.

    Raises `ValueError` before any launch when: the layer is out of range; head_dim >
    256; q has another shape or non-float values; q_heads is not a positive multiple
    of num_kv_heads; seq_lens is not 1-D integer of length batch or holds a length < 1;
    a table has fewer than ``ceil(seq_len / block_size)`` entries or one of those is
    outside ``[0, num_blocks)``; scale is not a finite number; a quantized pool comes
    without its scales or with scales of another shape, or a float pool with scales.
    """
    return prepare_decode(pool, layer, q, block_tables, seq_lens, scale=scale,
                          kv_scales=kv_scales, stream=stream, buffers=buffers)()


def prefill_attention(pool: Any, layer: int, q: Any, block_table: Any, q_start: int, *,
                      scale: float | None = None, kv_scales: Any = None, stream: Any = None,
                      buffers: DeviceBuffers | None = None) -> Any:
    """Causal attention of one sequence's new tokens over its cached prefix and themselves.

    `q` is ``[n, q_heads, head_dim]`` for positions ``q_start .. q_start + n - 1``; row
    ``i`` attends to keys ``0 .. q_start + i``, read through `block_table` (1-D
    integer: the sequence's physical blocks in logical order), so the K/V of all
    ``q_start + n`` positions must be in the pool. Other arguments as in
    `decode_attention`. Returns a new float32 device array ``[n, q_heads, head_dim]``.

    Raises `ValueError` before any launch when: q_start is not an integer >= 0; the
    table has fewer than ``ceil((q_start + n) / block_size)`` entries or one of those is
    outside ``[0, num_blocks)``; and for the reasons `decode_attention` gives.
    """
    return prepare_prefill(pool, layer, q, block_table, q_start, scale=scale,
                           kv_scales=kv_scales, stream=stream, buffers=buffers)()
