"""The paged-attention kernel: what one CUDA block does for one query tile.

`paged_kv.gpu.kernels.paged_attention` has the contract (query rows, block tables, GQA),
the query tiles the host lays out, the checks and the wrappers; this module has the
``@cuda.jit`` source, its compiled variants and their signature.

Inside a CUDA block
-------------------
``threads`` = 32 (one warp) when ``head_dim <= 32``, 128 (four warps) when
``head_dim <= 128``, 256 when ``head_dim <= 256`` (the wrappers' ``MAX_HEAD_DIM``):
thread ``d`` owns output dim ``d``. Six variants are compiled per pool kind: 32, 128 or 256 threads,
times tiles of 1 query (decode without GQA) or of up to 4. (The one-warp variant keeps
small test models cheap in the simulator, which pays per thread, and keeps 32-dim heads
from idling three warps of four on a GPU.) The block walks its KV stream in tiles of
``T <= min(128, threads)`` tokens (one score per thread), as many as fit one K or V
tile of the wrappers' ``TILE_BYTES`` (22 KiB) of shared memory in the pool's own dtype:
86 tokens at float16 and head_dim 128, 43 at float32. Per tile, five barriers::

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
27 KiB of shared memory per block allows on an H100/H200 (228 KiB per SM);
``shared_memory_carveout="MaxShared"`` asks for that shared memory where numba-cuda
has the option (0.26 on; `paged_kv.gpu.device.jit_accepts`).

Quantized pools
---------------
Variants ``..._int8`` and ``..._fp8`` read int8 codes or FP8 E4M3 bit patterns
(`paged_kv.gpu.kernels.quantized` has the pools and their scales). Staging is the same (a
row is ``head_dim`` bytes: ``head_dim / 4`` words), and so is the shared tile (bytes);
the element read in steps 2 and 5 is decoded to float32, and the scales are folded in
where they cost least:

* int8 (a scale per token and KV head): step 2 multiplies token t's dot products by
  its K scale; step 4 also stages its V scale, which step 5 applies per token
  (``acc += p * v_scale[t] * code``; the denominator sums ``p`` alone);
* FP8 (a static scale per KV head): the K scale multiplies the staged query, the V scale
  the final output; step 2 and 5 decode each pattern by bit fields
  (`paged_kv.gpu.kernels._quant_math.e4m3_decode`).

The float16/float32 variants are the same source with the quantized branches folded
away at compile time (the kind is a closure constant).

"""

from __future__ import annotations

import math
from typing import Any

from numba import float32, int32, int64, types, uint64

from paged_kv.gpu import device
from paged_kv.gpu.kernels._quant_math import (
    KIND_FLOAT,
    KIND_FP8,
    KIND_INT8,
    KIND_OF_STORAGE,
    e4m3_decode,
)

from numba import cuda  # isort: skip  (kernel intrinsics; the simulator swaps this name)

#: Query vectors one CUDA block serves (GQA heads of one group and/or prefill rows).
MAX_QUERIES = 4
#: Tokens per KV tile at most (one score per thread).
MAX_TILE = 128
#: Global loads each thread issues before it stores any (memory-level parallelism).
STAGE_UNROLL = 8
#: Threads per CUDA block: the kernel variants, smallest first.
THREAD_VARIANTS = (32, 128, 256)
#: Queries per tile: 1 (decode without GQA) or MAX_QUERIES.
QUERY_VARIANTS = (1, MAX_QUERIES)

# Columns of the per-tile table the host builds (`paged_kv.gpu.kernels.paged_attention`):
# the block-table row, the KV head's offset in a token (pool words), then MAX_QUERIES
# query rows and key counts.
TILE_SEQ = 0
TILE_HEAD = 1
TILE_QUERY = 2
TILE_LEN = TILE_QUERY + MAX_QUERIES
TILE_COLUMNS = TILE_LEN + MAX_QUERIES

_NEG_INF = float32(-math.inf)
_ZERO = float32(0.0)
_ONE = float32(1.0)


@device.jitable
def _slot(block, num_blocks, errors, skip_sh, tid, block_size, offset):
    """Token ``tid``'s pool slot in `block` at `offset`; an out-of-range `block` is
    counted in ``errors[0]``, flagged in ``skip_sh[tid]`` and replaced by block 0."""
    skip = block < 0 or block >= num_blocks
    skip_sh[tid] = 1 if skip else 0
    if skip:
        cuda.atomic.add(errors, 0, 1)
        block = 0
    return block * block_size + offset


@device.jitable
def _zero_row(words_sh, first, count):
    """Zero `count` words of shared memory from `first`."""
    w = 0
    while w < count:
        words_sh[uint64(first + w)] = 0
        w += 1


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
    # 32 warps) stay resident per SM. The simulator's jit takes no such options; the
    # carveout (a preference for shared memory over L1) only where numba-cuda has it.
    options = {} if device.is_simulator() else {"launch_bounds": (threads, 1024 // threads)}
    if device.jit_accepts("shared_memory_carveout"):
        options["shared_memory_carveout"] = "MaxShared"

    @device.jit(**options)
    def paged_attention_kernel(flat_pool, words, k_offset, v_offset, block_size, token_words,
                               row_words, stride, tile, q, scale, block_tables, tiles, out,
                               scales, k_scale_offset, v_scale_offset, num_kv_heads,
                               num_blocks, errors):
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
        A block id outside ``[0, num_blocks)`` (only a device-resident table can hold
        one) is never read: the token reads slot 0 instead, is masked (score -inf, V
        row and int8 V scale zeroed, so it adds nothing) and counted in ``errors[0]``;
        a query with no key left gets zeros.
        Shared indices are cast to uint64: Numba adds no negative-index wrap-around
        to unsigned indices.
        """
        kv_sh = cuda.shared.array(0, flat_pool.dtype)  # [tile, stride]: K, then V
        kv_words_sh = cuda.shared.array(0, words.dtype)  # the same memory, as words
        q_sh = cuda.shared.array(q_elems, float32)  # [queries, threads], scaled
        p_sh = cuda.shared.array(p_elems, float32)  # [queries, MAX_TILE]
        base_sh = cuda.shared.array(MAX_TILE, int64)  # token t's K row, in pool words
        skip_sh = cuda.shared.array(MAX_TILE, int32)  # 1: token t's block id is out of range
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
            slot = _slot(block_tables[seq, logical], num_blocks, errors, skip_sh, tid,
                         block_size, offset)
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
                    # 0 on the first tile; 1 while every key so far was skipped
                    alpha_sh[tid] = _ONE if m_new == _NEG_INF else math.exp(m_old - m_new)
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
                                if t0 + tid >= tiles[b, TILE_LEN + j] or skip_sh[tid]:
                                    s[j] = _NEG_INF  # causal mask (prefill rows), skipped
                                p_sh[j * MAX_TILE + tid] = s[j]
                    cuda.syncthreads()
            if tid < n:
                for j in range(queries):
                    if j < nq:
                        # exp(-inf - -inf) would be NaN when every key so far was skipped
                        p_sh[j * MAX_TILE + tid] = (
                            _ZERO if s[j] == _NEG_INF else math.exp(s[j] - m_sh[j]))
                if kind == KIND_INT8:
                    v_scale_sh[tid] = scales[scale_sh[tid] + v_scale_offset]
                if skip_sh[tid]:  # slot 0's V (maybe NaN) must not meet p = 0
                    _zero_row(kv_words_sh, tid * stride_words, row_words)
                    if kind == KIND_INT8:
                        v_scale_sh[tid] = _ZERO
            # The next tile's offsets: base_sh is not read again in this tile.
            logical += step_blocks
            offset += step_offset
            if offset >= block_size:
                offset -= block_size
                logical += 1
            if tid < min(tile, kv_len - t0 - n):
                slot = _slot(block_tables[seq, logical], num_blocks, errors, skip_sh, tid,
                             block_size, offset)
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
                    # l = 0: every key of this query was skipped
                    out[tiles[b, TILE_QUERY + j], tid] = (
                        acc[j] / l[j] * out_scale if l[j] > _ZERO else _ZERO)

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
        i64,  # num_blocks
        types.Array(types.int32, 1, "C"),  # errors (out-of-range block ids skipped)
    )
