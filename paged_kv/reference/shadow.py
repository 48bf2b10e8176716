"""A NumPy shadow of what each sequence's KV should read back, to check a cache with storage.

`ShadowKV` drives a `PagedKVCache` that has storage: it allocates, appends, forks and
frees sequences through the cache, writes K and V for every new token of every layer
through the kernels (`PagedKVCache.write_kv`), and keeps, per sequence and layer, the
NumPy arrays that were written. `ShadowKV.verify` reads every sequence on the GPU back
through the kernels (`PagedKVCache.read_kv`, and one batched gather from given start
positions) and compares bytes. A fork shares the parent's arrays; copy-on-write, swap
and eviction must leave every sequence reading exactly its own history::

    shadow = ShadowKV(PagedKVCache(CacheConfig(block_size=4, num_gpu_blocks=16), "tiny"))
    a = shadow.allocate(6)
    b = shadow.fork(a)
    shadow.append(b)          # copy-on-write of the shared partial block
    assert all(shadow.verify().values())

**Prompts given by token ids** (prefix caching, and the tiers below the GPU). A token's K
and V are then not random but a function of its token prefix (`token_kv`), as a model's
are: every copy of a cached block, in any tier, must hold exactly what computing it
would write. A prompt's cached tokens (a hit, served from the GPU or loaded from a
tier) are not written; the shadow expects them to read back as `token_kv` says, and
`verify_tiers` checks every block the host and disk tiers hold the same way. Without
token ids, K and V are drawn from `rng` as before.
"""

from __future__ import annotations

import zlib
from collections.abc import Hashable, Iterable, Sequence

import numpy as np

from paged_kv.cache import PagedKVCache


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def token_kv(prefix: Sequence[int], layer: int, shape: tuple[int, int],
             dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """The K and V (each `shape`, ``[num_kv_heads, head_dim]``) of the last token of
    `prefix` in `layer`: standard normal values seeded by the token ids and the layer."""
    seed = zlib.crc32(np.asarray(prefix, dtype=np.int64).tobytes())
    k, v = np.random.default_rng([seed, layer]).standard_normal((2, *shape)).astype(dtype)
    return k, v


class ShadowKV:
    """K and V written through `cache` (which must have storage), with a NumPy copy.

    `rng` (a NumPy Generator, or a seed) draws the K and V of sequences given without
    token ids; sequences given token ids get `token_kv` values (module docstring).
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
        #: seq_id -> per layer, the (K, V) arrays of its positions written so far
        self.expected: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}
        #: seq_id -> its token ids (sequences given token ids only)
        self.tokens: dict[int, list[int]] = {}
        #: prefix-cache key -> the token ids from the prompt's start to the block's end
        self.key_tokens: dict[Hashable, tuple[int, ...]] = {}

    # -- values ------------------------------------------------------------------------
    def _values(self, seq_id: int, layer: int, start: int, end: int
                ) -> tuple[np.ndarray, np.ndarray]:
        """K, V of positions ``start .. end-1`` of `seq_id` in `layer`."""
        if seq_id not in self.tokens:
            shape = (end - start, *self._shape)
            return (self.rng.standard_normal(shape).astype(self._dtype),
                    self.rng.standard_normal(shape).astype(self._dtype))
        tokens = self.tokens[seq_id]
        pairs = [token_kv(tokens[:p + 1], layer, self._shape, self._dtype)
                 for p in range(start, end)]
        empty = np.empty((0, *self._shape), self._dtype)
        return (np.stack([k for k, _ in pairs]) if pairs else empty,
                np.stack([v for _, v in pairs]) if pairs else empty)

    def _learn_keys(self, seq_id: int) -> None:
        """Remember the token prefix behind each full block's key (for `verify_tiers`)."""
        prefix = self.cache.prefix
        if prefix is None or seq_id not in self.tokens:
            return
        tokens = self.tokens[seq_id]
        bs = self.cache.block_size
        for i, key in enumerate(prefix.token_keys(tokens)):
            self.key_tokens.setdefault(key, tuple(tokens[: (i + 1) * bs]))

    # -- driving the cache -------------------------------------------------------------
    def write(self, seq_id: int, layers: Iterable[int] | None = None) -> None:
        """Write every position of `seq_id` not yet written in each of `layers` (default:
        all): a prefill or decode step, or, for some layers only, an interrupted one."""
        num_tokens = self.cache.num_tokens(seq_id)
        for layer in range(self.cache.model.num_layers) if layers is None else layers:
            old_k, old_v = self.expected[seq_id][layer]
            start = len(old_k)
            if start == num_tokens:
                continue
            k, v = self._values(seq_id, layer, start, num_tokens)
            self.cache.write_kv(seq_id, layer, k, v, start=start)
            self.expected[seq_id][layer] = (np.concatenate([old_k, k]),
                                            np.concatenate([old_v, v]))

    def allocate(self, num_tokens: int | None = None, *, token_ids: Sequence[int] | None = None,
                 layers: Iterable[int] | None = None) -> int:
        """A new sequence of `num_tokens` tokens, or of `token_ids` (whose cached prefix
        the cache may serve); its uncached positions written in `layers` (default all).
        Returns its id."""
        seq_id = self.cache.allocate(num_tokens, token_ids=token_ids)
        num_layers = self.cache.model.num_layers
        if token_ids is not None:
            self.tokens[seq_id] = list(token_ids)
            self._learn_keys(seq_id)
        cached = self.cache.num_cached_tokens(seq_id)
        self.expected[seq_id] = [self._values(seq_id, layer, 0, cached)
                                 if token_ids is not None and cached else
                                 (np.empty((0, *self._shape), self._dtype),) * 2
                                 for layer in range(num_layers)]
        self.write(seq_id, layers)
        return seq_id

    def append(self, seq_id: int, num_tokens: int = 1, *,
               token_ids: Sequence[int] | None = None) -> None:
        """Append `num_tokens` tokens (or `token_ids`) to `seq_id` and write them
        (copy-on-write of a shared partial block happens here)."""
        if token_ids is not None:
            self.cache.append(seq_id, token_ids=token_ids)
            self.tokens[seq_id].extend(token_ids)
            self._learn_keys(seq_id)
        else:
            self.cache.append(seq_id, num_tokens)
        self.write(seq_id)

    def fork(self, seq_id: int) -> int:
        """A child of `seq_id` sharing its blocks (and, so far, its KV); returns its id."""
        child = self.cache.fork(seq_id)
        self.expected[child] = list(self.expected[seq_id])
        if seq_id in self.tokens:
            self.tokens[child] = list(self.tokens[seq_id])
        return child

    def free(self, seq_id: int) -> None:
        """Free `seq_id` and forget what it should read."""
        self.cache.free(seq_id)
        del self.expected[seq_id]
        self.tokens.pop(seq_id, None)

    # -- checking ----------------------------------------------------------------------
    def verify(self, starts: dict[int, int] | None = None) -> dict[str, bool]:
        """Read every sequence on the GPU back and compare bytes; ``{check: passed}``.

        Per layer: each sequence alone (`PagedKVCache.read_kv`, the positions written in
        that layer), then all of them in one batched gather from `starts` (sequence id
        -> first position; default 0) to the positions written in every layer.
        """
        checks: dict[str, bool] = {}
        seqs = [s for s in self.expected if self.cache.get(s).location == "gpu"]
        starts = {s: 0 for s in seqs} | dict(starts or {})
        num_layers = self.cache.model.num_layers
        ends = {s: min(len(self.expected[s][layer][0]) for layer in range(num_layers))
                for s in seqs}
        for layer in range(num_layers):
            for seq in seqs:
                want_k, want_v = self.expected[seq][layer]
                k, v = self.cache.read_kv(seq, layer, end=len(want_k))
                checks[f"read_kv seq {seq}, layer {layer}: {len(k)} tokens"] = (
                    _same(k, want_k) and _same(v, want_v))
            batch = [s for s in seqs if starts[s] <= ends[s]]
            if batch:
                k, v, cu = self.cache.read_kv_batch(layer, batch,
                                                    starts=[starts[s] for s in batch],
                                                    ends=[ends[s] for s in batch])
                want_k = np.concatenate([self.expected[s][layer][0][starts[s]:ends[s]]
                                         for s in batch])
                want_v = np.concatenate([self.expected[s][layer][1][starts[s]:ends[s]]
                                         for s in batch])
                where = ", ".join(f"{s} from {starts[s]}" for s in batch)
                checks[f"read_kv_batch [{where}], layer {layer}: rows {cu.tolist()}"] = (
                    _same(k, want_k) and _same(v, want_v))
        return checks

    def verify_tiers(self, skip: Iterable[tuple[str, int]] = ()) -> dict[str, bool]:
        """Compare every block the host and disk tiers hold with `token_kv` of its key's
        tokens; ``{check: passed}``. `skip`: ``(tier, slot)`` pairs to leave out (slots a
        test damaged on purpose). Unquantized KV only (a quantized tier holds codes:
        compare them with the GPU's, as tests/test_tiers_storage.py does)."""
        cache = self.cache
        if cache.model.kv.quantized:
            raise ValueError("verify_tiers compares values: the cache's KV is quantized")
        tiers = cache.tiers
        checks: dict[str, bool] = {}
        if tiers is None:
            return checks
        skip = set(skip)
        bs, num_layers = cache.block_size, cache.model.num_layers
        for tier, snapshot in ((tiers.host, tiers.pools.host_snapshot),
                               (tiers.disk, tiers.pools.disk_snapshot)):
            if tier is None or not len(tier):
                continue
            codes, _ = snapshot()
            for slot, key in sorted(tier.keys().items()):
                if (tier.name, slot) in skip:
                    continue
                tokens = self.key_tokens.get(key)
                if tokens is None:
                    checks[f"{tier.name} tier slot {slot}: a key no sequence computed"] = False
                    continue
                want = np.empty((num_layers, 2, bs, *self._shape), self._dtype)
                for layer in range(num_layers):
                    for offset, p in enumerate(range(len(tokens) - bs, len(tokens))):
                        want[layer, :, offset] = token_kv(tokens[:p + 1], layer, self._shape,
                                                          self._dtype)
                checks[f"{tier.name} tier slot {slot}: {len(tokens)} tokens"] = _same(
                    np.ascontiguousarray(codes[:, :, slot]), want)
        return checks
