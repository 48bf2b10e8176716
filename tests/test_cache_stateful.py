"""A Hypothesis state machine over the cache with storage and prefix caching.

Rules allocate / append / fork / free / swap out / swap in / evict, each followed by the
KV a model would write (prefill: the uncached prompt positions; decode: the new token).
The KV of position p is a deterministic function of the token prefix ``tokens[:p+1]``,
so the expected bytes of every live sequence are known without a shadow pool, and a
prefix-cache hit must read what its first owner wrote. After every step the invariants
hold and every sequence on the GPU reads back exactly its expected KV (one gather
launch per layer for all of them). A refused operation must leave the whole state,
pool bytes included, unchanged.
"""

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    multiple,
    rule,
)

from paged_kv import CacheConfig, ModelSpec, OutOfBlocksError
from paged_kv.cache import PagedKVCache

MODEL = ModelSpec("micro", num_layers=2, num_kv_heads=1, head_dim=2, dtype="float32")
TOKENS = st.lists(st.integers(0, 2), min_size=1, max_size=7)  # small alphabet: many hits


def kv_of(prefix: tuple[int, ...]) -> np.ndarray:
    """[layers, 2, heads, head_dim] of the last token of `prefix`."""
    rng = np.random.default_rng(hash(prefix) & 0xFFFFFFFF)
    shape = (MODEL.num_layers, 2, MODEL.num_kv_heads, MODEL.head_dim)
    return rng.standard_normal(shape).astype(np.float32)


def expected_kv(tokens: list[int], start: int, end: int) -> np.ndarray:
    """[end-start, layers, 2, heads, head_dim]."""
    return np.stack([kv_of(tuple(tokens[: p + 1])) for p in range(start, end)])


class CacheMachine(RuleBasedStateMachine):
    seqs = Bundle("seqs")

    def __init__(self):
        super().__init__()
        config = CacheConfig(
            block_size=2, num_gpu_blocks=10, num_host_blocks=6, enable_prefix_caching=True
        )
        self.cache = PagedKVCache(config, MODEL)
        self.tokens: dict[int, list[int]] = {}

    # -- helpers ---------------------------------------------------------------------
    def write(self, seq: int, start: int) -> None:
        tokens = self.tokens[seq]
        if start >= len(tokens):
            return
        data = expected_kv(tokens, start, len(tokens))
        for layer in range(MODEL.num_layers):
            self.cache.write_kv(seq, layer, data[:, layer, 0], data[:, layer, 1], start=start)

    def refused(self, call, errors=(OutOfBlocksError,)) -> bool:
        before = self.cache.snapshot()
        try:
            call()
        except errors:
            assert self.cache.snapshot() == before, "a refused operation changed the state"
            return True
        return False

    # -- rules -----------------------------------------------------------------------
    @rule(target=seqs, tokens=TOKENS)
    def allocate(self, tokens):
        box = []
        if self.refused(lambda: box.append(self.cache.allocate(token_ids=tokens))):
            return multiple()  # nothing to add
        seq = box[0]
        self.tokens[seq] = list(tokens)
        self.write(seq, self.cache.num_cached_tokens(seq))
        return seq

    @rule(seq=seqs, token=st.integers(0, 2))
    def append(self, seq, token):
        if seq not in self.tokens or self.cache.get(seq).location != "gpu":
            return
        if self.refused(lambda: self.cache.append(seq, token_ids=[token])):
            return
        self.tokens[seq].append(token)
        self.write(seq, len(self.tokens[seq]) - 1)

    @rule(target=seqs, seq=seqs)
    def fork(self, seq):
        if seq not in self.tokens or self.cache.get(seq).location != "gpu":
            return multiple()
        child = self.cache.fork(seq)
        self.tokens[child] = list(self.tokens[seq])
        return child

    @rule(seq=consumes(seqs))
    def free(self, seq):
        if seq in self.tokens:
            self.cache.free(seq)
            del self.tokens[seq]

    @rule(seq=seqs)
    def swap_out(self, seq):
        if seq in self.tokens and self.cache.get(seq).location == "gpu":
            self.refused(lambda: self.cache.swap_out(seq))

    @rule(seq=seqs)
    def swap_in(self, seq):
        if seq in self.tokens and self.cache.get(seq).location == "host":
            self.refused(lambda: self.cache.swap_in(seq))

    @rule(data=st.data())
    def rewrite_last_tokens_in_one_batch(self, data):
        """A decode-like batch write over several sequences, forks included (COW plan)."""
        on_gpu = [s for s in self.tokens if self.cache.get(s).location == "gpu"]
        if not on_gpu:
            return
        chosen = data.draw(st.lists(st.sampled_from(on_gpu), min_size=1, unique=True))
        rows = np.stack([expected_kv(self.tokens[s], len(self.tokens[s]) - 1,
                                     len(self.tokens[s]))[0] for s in chosen])
        starts = [len(self.tokens[s]) - 1 for s in chosen]
        refs, bs = self.cache.gpu.ref_counts, self.cache.block_size
        immutable = any(  # its last token sits in a full block that another holds
            len(self.tokens[s]) % bs == 0 and refs[self.cache.get(s).block_table[-1]] > 1
            for s in chosen
        )
        for layer in range(MODEL.num_layers):
            call = lambda layer=layer: self.cache.write_kv_batch(  # noqa: E731
                layer, chosen, rows[:, layer, 0], rows[:, layer, 1],
                num_tokens=[1] * len(chosen), starts=starts)
            if immutable:
                assert self.refused(call, (ValueError,)), "a shared full block was written"
                return
            if self.refused(call):
                return

    @rule(n=st.integers(0, 3))
    def evict(self, n):
        self.cache.evict_cached(n)

    # -- checks after every step ---------------------------------------------------------
    @invariant()
    def invariants_hold(self):
        self.cache.check_invariants()

    @invariant()
    def every_gpu_sequence_reads_back_its_kv(self):
        on_gpu = [s for s in self.tokens if self.cache.get(s).location == "gpu"]
        if not on_gpu:
            return
        expected = np.concatenate(
            [expected_kv(self.tokens[s], 0, len(self.tokens[s])) for s in on_gpu]
        )
        for layer in range(MODEL.num_layers):
            k, v, _ = self.cache.read_kv_batch(layer, on_gpu)
            np.testing.assert_array_equal(k, expected[:, layer, 0])
            np.testing.assert_array_equal(v, expected[:, layer, 1])


CacheMachine.TestCase.settings = settings(
    max_examples=25,
    stateful_step_count=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
)
TestCacheStateMachine = CacheMachine.TestCase
