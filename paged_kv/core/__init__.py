"""The metadata core: block ids, reference counts and keys, never a byte of KV.

It owns the model and cache configuration (`config`: `ModelSpec`, the model registry,
`CacheConfig`), the KV element types (`kv_dtype`), the errors every layer raises
(`errors`), argument checks (`validate`), the block allocator with its free queue, ref
counts and key <-> block map (`block_allocator`), the eviction policies (`eviction`),
the prefix cache (`prefix_cache`), sequences and their block tables (`sequence`,
`block_table`), memory pressure (`pressure`) and statistics snapshots (`stats`).

It imports nothing else from paged_kv and never imports numba or touches arrays, so the
simulator runs the real bookkeeping at realistic sizes. The import contracts in
``pyproject.toml`` (``make lint``) hold this.
"""
