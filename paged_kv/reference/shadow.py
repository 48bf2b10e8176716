"""A NumPy shadow of what each sequence's KV should read back, to check a cache with storage.

`ShadowKV` drives a `PagedKVCache` that has storage: it allocates, appends, forks and
frees sequences through the cache, writes random K and V for every new token of every
layer through the kernels (`PagedKVCache.write_kv`), and keeps, per sequence and layer,
the NumPy arrays that were written. `ShadowKV.verify` reads every sequence back
through the kernels (`PagedKVCache.read_kv`, and one batched gather from given start
positions) and compares bytes. A fork shares the parent's arrays; copy-on-write, swap
and eviction must leave every sequence reading exactly its own history::

    shadow = ShadowKV(PagedKVCache(CacheConfig(block_size=4, num_gpu_blocks=16), "tiny"))
    a = shadow.allocate(6)
    b = shadow.fork(a)
    shadow.append(b)          # copy-on-write of the shared partial block
    assert all(shadow.verify().values())
"""

from __future__ import annotations

import numpy as np

from paged_kv.cache import PagedKVCache


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


class ShadowKV:
    """Random KV written through `cache` (which must have storage), with a NumPy copy.

    `rng` (a NumPy Generator, or a seed) draws the K and V values.
    """

    def __init__(self, cache: PagedKVCache, rng: np.random.Generator | int = 0) -> None:
        if cache.storage is None:
            raise ValueError("ShadowKV needs a cache with storage (give the cache a model)")
        #: the cache being driven
        self.cache = cache
        self.rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        model = cache.model
        self._shape = (model.num_kv_heads, model.head_dim)
        self._dtype = np.dtype(model.dtype)
        #: seq_id -> per layer, the (K, V) arrays written for its tokens so far
        self.expected: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}

    def _random(self, num_tokens: int) -> np.ndarray:
        shape = (num_tokens, *self._shape)
        return self.rng.standard_normal(shape).astype(self._dtype)

    def _write(self, seq_id: int, num_tokens: int) -> None:
        """Write random K, V for the last `num_tokens` tokens of `seq_id`, every layer."""
        for layer in range(self.cache.model.num_layers):
            k, v = self._random(num_tokens), self._random(num_tokens)
            self.cache.write_kv(seq_id, layer, k, v)
            old_k, old_v = self.expected[seq_id][layer]
            self.expected[seq_id][layer] = (np.concatenate([old_k, k]),
                                            np.concatenate([old_v, v]))

    def allocate(self, num_tokens: int) -> int:
        """A new sequence of `num_tokens` tokens, written; returns its id."""
        seq_id = self.cache.allocate(num_tokens)
        empty = np.empty((0, *self._shape), self._dtype)
        self.expected[seq_id] = [(empty, empty)] * self.cache.model.num_layers
        self._write(seq_id, num_tokens)
        return seq_id

    def append(self, seq_id: int, num_tokens: int = 1) -> None:
        """Append `num_tokens` tokens to `seq_id` and write them (copy-on-write of a
        shared partial block happens here)."""
        self.cache.append(seq_id, num_tokens)
        self._write(seq_id, num_tokens)

    def fork(self, seq_id: int) -> int:
        """A child of `seq_id` sharing its blocks (and, so far, its KV); returns its id."""
        child = self.cache.fork(seq_id)
        self.expected[child] = list(self.expected[seq_id])
        return child

    def free(self, seq_id: int) -> None:
        """Free `seq_id` and forget what it should read."""
        self.cache.free(seq_id)
        del self.expected[seq_id]

    def verify(self, starts: dict[int, int] | None = None) -> dict[str, bool]:
        """Read every sequence back and compare bytes; ``{check: passed}``, in order.

        Per layer: each sequence alone (`PagedKVCache.read_kv`), then all of them in one
        batched gather from `starts` (sequence id -> first position; default 0).
        """
        checks: dict[str, bool] = {}
        seqs = list(self.expected)
        starts = {s: 0 for s in seqs} | dict(starts or {})
        for layer in range(self.cache.model.num_layers):
            for seq in seqs:
                k, v = self.cache.read_kv(seq, layer)
                want_k, want_v = self.expected[seq][layer]
                checks[f"read_kv seq {seq}, layer {layer}: {len(k)} tokens"] = (
                    _same(k, want_k) and _same(v, want_v))
            if seqs:
                k, v, cu = self.cache.read_kv_batch(layer, seqs,
                                                    starts=[starts[s] for s in seqs])
                want_k = np.concatenate([self.expected[s][layer][0][starts[s]:] for s in seqs])
                want_v = np.concatenate([self.expected[s][layer][1][starts[s]:] for s in seqs])
                where = ", ".join(f"{s} from {starts[s]}" for s in seqs)
                checks[f"read_kv_batch [{where}], layer {layer}: rows {cu.tolist()}"] = (
                    _same(k, want_k) and _same(v, want_v))
        return checks
