"""Every call the adapter makes on a cache's KV, in one place.

Writes go through `PagedKVCache.write_kv_batch` (the slot-write kernel, one launch per
layer and forward, copy-on-write and prefix publishing included). Reads are either a
gather of each row's K/V (`PagedKVCache.read_kv_batch`, or on a GPU the gather kernel
into device memory) or paged attention over the pool (`paged_kv.cache.attention.decode`
and ``prefill``, or on a GPU their kernels with the result left on the device). The
per-step arguments (slots, block tables, lengths) are built here from the manager's
sequences, once per layer; a step plan built once per forward would replace exactly
these functions.

Tensors arrive in HF's layout ``[batch, heads, tokens, head_dim]`` and leave in it;
`paged_kv.hf.exchange` decides whether they pass through NumPy or stay on the GPU.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from paged_kv.cache import PagedKVCache
from paged_kv.hf.exchange import Exchange
from paged_kv.hf.spec import TORCH_DTYPES


def write(kv: PagedKVCache, exchange: Exchange, layer: int, rows: Sequence[int],
          k: torch.Tensor, v: torch.Tensor, starts: Sequence[int],
          skip: Sequence[int]) -> None:
    """Write `layer`'s K/V ``[batch, kv_heads, tokens, head_dim]``: row ``i``'s tokens
    from its ``skip[i]``-th on, at positions ``starts[i] + skip[i] ..`` of sequence
    ``rows[i]`` (skipped tokens are ones the prefix cache holds already)."""
    tokens = k.shape[2]
    counts = [tokens - s for s in skip]
    if any(skip):
        k_rows = torch.cat([k[i, :, s:].transpose(0, 1) for i, s in enumerate(skip)])
        v_rows = torch.cat([v[i, :, s:].transpose(0, 1) for i, s in enumerate(skip)])
    else:
        k_rows = k.transpose(1, 2).reshape(-1, k.shape[1], k.shape[3])
        v_rows = v.transpose(1, 2).reshape(-1, v.shape[1], v.shape[3])
    dtype = kv.model.dtype
    # converted here, so that the tensors the pool's views read are the ones kept
    k_rows = k_rows.to(dtype=TORCH_DTYPES[dtype]).contiguous()
    v_rows = v_rows.to(dtype=TORCH_DTYPES[dtype]).contiguous()
    k_pool, v_pool = exchange.to_pool(k_rows, dtype), exchange.to_pool(v_rows, dtype)
    exchange.before_default_stream([k_rows, v_rows])
    kv.write_kv_batch(layer, rows, k_pool, v_pool, num_tokens=counts,
                      starts=[start + n for start, n in zip(starts, skip)])


def _tables(kv: PagedKVCache, rows: Sequence[int]) -> list[list[int]]:
    return [list(kv.get(row).block_table) for row in rows]


def gather(kv: PagedKVCache, exchange: Exchange, layer: int, rows: Sequence[int],
           length: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions ``0 .. length-1`` of every row's `layer` K/V as ``[batch, kv_heads,
    length, head_dim]`` tensors like `like` (device, dtype)."""
    batch, heads, dim = len(rows), kv.model.num_kv_heads, kv.model.head_dim
    if exchange.on_device:
        k, v = _gather_on_device(kv, exchange, layer, rows, length)
    else:
        k, v, _ = kv.read_kv_batch(layer, rows, ends=[length] * batch)
    shape = (batch, length, heads, dim)
    return (exchange.from_pool(k, like).view(shape).transpose(1, 2),
            exchange.from_pool(v, like).view(shape).transpose(1, 2))


def _gather_on_device(kv: PagedKVCache, exchange: Exchange, layer: int,
                      rows: Sequence[int], length: int) -> tuple:
    """The gather kernel (dequantizing for int8/FP8 pools) into new device arrays, on
    PyTorch's stream, fenced against other streams' writes of the blocks it reads."""
    from paged_kv.gpu.kernels import gather_kv, gather_kv_dequantized  # noqa: PLC0415

    storage, stream = kv.storage, exchange.kernel_stream()
    tables = _tables(kv, rows)
    lens = [length] * len(rows)
    with storage.access(stream, gpu_reads=[b for table in tables for b in table]):
        if storage.gpu_scales is None:
            return gather_kv(storage.gpu_pool, layer, tables, lens, stream=stream)
        return gather_kv_dequantized(storage.gpu_pool, storage.gpu_scales, layer, tables,
                                     lens, dtype=kv.model.dtype, stream=stream)


def decode(kv: PagedKVCache, exchange: Exchange, layer: int, rows: Sequence[int],
           q: torch.Tensor, scale: float) -> torch.Tensor:
    """Paged decode attention: query ``q[i]`` (``[q_heads, head_dim]``, at row i's last
    position) over all of row i's tokens; ``[batch, q_heads, head_dim]`` like `q`."""
    q32 = exchange.to_pool(q, "float32")
    if exchange.on_device:
        from paged_kv.gpu.kernels import decode_attention  # noqa: PLC0415

        storage, stream = kv.storage, exchange.kernel_stream()
        tables = _tables(kv, rows)
        lens = [kv.num_tokens(row) for row in rows]
        with storage.access(stream, gpu_reads=[b for table in tables for b in table]):
            out = decode_attention(storage.gpu_pool, layer, q32, tables, lens, scale=scale,
                                   kv_scales=storage.gpu_scales, stream=stream)
    else:
        from paged_kv.cache import attention  # noqa: PLC0415 - loads the kernels

        out = attention.decode(kv, layer, rows, q32, scale=scale)
    return exchange.from_pool(out, q)


def prefill(kv: PagedKVCache, exchange: Exchange, layer: int, row: int, q: torch.Tensor,
            q_start: int, scale: float) -> torch.Tensor:
    """Paged causal attention of one row's queries ``q`` (``[n, q_heads, head_dim]``, at
    positions ``q_start ..``) over its tokens up to each; ``[n, q_heads, head_dim]``."""
    q32 = exchange.to_pool(q, "float32")
    if exchange.on_device:
        from paged_kv.gpu.kernels import prefill_attention  # noqa: PLC0415

        storage, stream = kv.storage, exchange.kernel_stream()
        table = list(kv.get(row).block_table)
        with storage.access(stream, gpu_reads=table):
            out = prefill_attention(storage.gpu_pool, layer, q32, table, q_start,
                                    scale=scale, kv_scales=storage.gpu_scales, stream=stream)
    else:
        from paged_kv.cache import attention  # noqa: PLC0415

        out = attention.prefill(kv, layer, row, q32, q_start=q_start, scale=scale)
    return exchange.from_pool(out, q)
