"""Hypothesis state machines over the cache: the data contract under every interleaving.

`CacheMachine` runs the cache with storage (kernels in the CUDA simulator) and prefix
caching. Rules allocate (token ids over a small alphabet: many shared prefixes), append,
fork, free, swap out and in, evict cached blocks, commit, and write KV: all layers of
what is not yet written (a prefill or decode step), one range of one layer, or the last
token of several sequences in one batched launch. Every write writes *fresh* bytes (a
counter seeds them), so a stale or unwritten read cannot pass for a right one.

The test keeps, per sequence, the bytes it must read back and which positions of which
layers are known (written by it, inherited by a fork, or served by a prefix hit). When
the cache publishes a block the test records that block's bytes; a later hit must
name a recorded block whose every layer was written: no hit may serve bytes nobody
wrote. After every step: the invariants hold; each sequence's computed tokens are
exactly its leading positions written in every layer; every GPU sequence reads back
its known positions exactly (one gather launch per layer for all of them). A refused
operation leaves the whole state, pool bytes included, unchanged.

`MetadataMachine` runs the metadata-only cache, where only `commit` computes tokens,
longer and faster: a hit covers only blocks some sequence with the same prefix
committed, and computed counts are exact.

`TieredMachine` runs the cache with storage and a host and a disk tier below the GPU
(placement and tier policies drawn per example), driven through `ShadowKV` in token
mode: a token's K/V is a function of its token prefix, so a block served from any tier
(a GPU hit, or a load from the host or the disk) must read back exactly what computing
it writes. Rules add GPU eviction (demotion under write-back), interrupted prefills
(one layer written: such a block is never published nor copied down), swap, and
damage to a block of the disk tier's file just before its prompt comes back (the load
must fail and the block be recomputed).
After every step, besides the invariants and every GPU sequence's bytes, every block
each tier holds is compared with the values of its key's tokens.
`TieredMetadataMachine` does the same bookkeeping without storage, longer: every key a
tier holds was committed by some sequence, and the statistics add up.

``PAGED_KV_FUZZ_EXAMPLES`` (default 20) and ``PAGED_KV_FUZZ_STEPS`` (default 20) scale
every machine (the metadata ones run 4x the examples, the tiered one half): e.g.
``PAGED_KV_FUZZ_EXAMPLES=500 pytest tests/test_cache_stateful.py`` for a long run.
"""

import os
import tempfile

import numpy as np
import pytest

pytest.importorskip("hypothesis")  # a dev extra: a GPU machine may lack it

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from paged_kv import CacheConfig, ImmutableBlockError, ModelSpec, OutOfBlocksError
from paged_kv.cache import PagedKVCache
from paged_kv.core.eviction import ONLINE_POLICIES
from paged_kv.core.tier import PLACEMENTS
from paged_kv.reference.shadow import ShadowKV

MODEL = ModelSpec("micro", num_layers=2, num_kv_heads=1, head_dim=2, dtype="float32")
LAYERS = MODEL.num_layers
ROW = (LAYERS, 2, MODEL.num_kv_heads, MODEL.head_dim)  # one position's KV, all layers
BS = 2
#: prompts: a prefix of one base prompt plus a short tail, so that many share blocks
BASE = [0, 1, 2, 0, 1, 2, 0]
TOKENS = st.builds(
    lambda n, tail: (BASE[:n] + tail) or [0],
    st.integers(0, len(BASE)), st.lists(st.integers(0, 2), max_size=3),
)
EXAMPLES = int(os.environ.get("PAGED_KV_FUZZ_EXAMPLES", "20"))
STEPS = int(os.environ.get("PAGED_KV_FUZZ_STEPS", "20"))


def _gpu(machine) -> list[int]:
    return [s for s in machine.tokens if machine.cache.get(s).location == "gpu"]


def _host(machine) -> list[int]:
    return [s for s in machine.tokens if machine.cache.get(s).location == "host"]


ON_GPU = precondition(lambda m: _gpu(m))
ON_HOST = precondition(lambda m: _host(m))
ANY = precondition(lambda m: m.tokens)


class CacheMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        config = CacheConfig(
            block_size=BS, num_gpu_blocks=10, num_host_blocks=6, enable_prefix_caching=True
        )
        self.cache = PagedKVCache(config, MODEL)
        self.tokens: dict[int, list[int]] = {}
        self.kv: dict[int, np.ndarray] = {}  # [position, *ROW]: the bytes to read back
        self.known: dict[int, np.ndarray] = {}  # [position, layer]: kv holds the truth
        self.published: dict[int, tuple] = {}  # block -> (key, its bytes, known)
        self.writes = 0

    # -- helpers ---------------------------------------------------------------------
    def fresh(self, n: int) -> np.ndarray:
        """Bytes never written before: a new seed for every write."""
        self.writes += 1
        return np.random.default_rng(self.writes).standard_normal((n, *ROW)).astype(np.float32)

    def pick(self, data, seqs: list[int]) -> int:
        return data.draw(st.sampled_from(sorted(seqs)))

    def refused(self, call, errors=(OutOfBlocksError,)) -> bool:
        before = self.cache.snapshot()
        try:
            call()
        except errors:
            assert self.cache.snapshot() == before, "a refused operation changed the state"
            return True
        return False

    def immutable(self, seq: int, start: int, end: int) -> bool:
        """Whether a write of positions start..end-1 must be refused (test's own rule)."""
        info, gpu = self.cache.get(seq), self.cache.gpu
        for i in range(start // BS, (end - 1) // BS + 1):
            block = info.block_table[i]
            full = (i + 1) * BS <= info.num_tokens
            if gpu.block_keys[block] is not None or (full and gpu.ref_counts[block] > 1):
                return True
        return False

    def write(self, seq: int, start: int, data: np.ndarray, layers) -> bool:
        """Write `data` [n, *ROW] at `start` into `layers`, one layer at a time; False if
        a layer was refused (a layer's write can publish a block the next one hits)."""
        end = start + len(data)
        for layer in layers:
            call = lambda layer=layer: self.cache.write_kv(  # noqa: E731
                seq, layer, data[:, layer, 0], data[:, layer, 1], start=start)
            if self.immutable(seq, start, end):
                assert self.refused(call, (ImmutableBlockError,)), "an immutable block changed"
                return False
            if self.refused(call):
                return False
            self.kv[seq][start:end, layer] = data[:, layer]
            self.known[seq][start:end, layer] = True
        return True

    def record_publications(self) -> None:
        """Remember the bytes of each newly published block; forget evicted ones."""
        keys = self.cache.gpu.block_keys
        self.published = {b: p for b, p in self.published.items() if keys[b] == p[0]}
        for seq in self.tokens:
            info = self.cache.get(seq)
            if info.location != "gpu":
                continue
            for i, block in enumerate(info.block_table):
                if keys[block] is not None and block not in self.published:
                    rows = slice(i * BS, (i + 1) * BS)
                    self.published[block] = (
                        keys[block], self.kv[seq][rows].copy(), self.known[seq][rows].copy())

    # -- rules -----------------------------------------------------------------------
    @initialize(tokens=TOKENS)
    def a_first_prompt_computed(self, tokens):
        self.allocate(tokens)
        self.compute_all(next(iter(self.tokens)))

    @rule(tokens=TOKENS)
    def allocate(self, tokens):
        box = []
        if self.refused(lambda: box.append(self.cache.allocate(token_ids=tokens))):
            return
        seq = box[0]
        n = len(tokens)
        self.tokens[seq] = list(tokens)
        self.kv[seq] = np.zeros((n, *ROW), np.float32)
        self.known[seq] = np.zeros((n, LAYERS), bool)
        hits = self.cache.num_cached_tokens(seq)
        for i, block in enumerate(self.cache.get(seq).block_table[: hits // BS]):
            assert block in self.published, f"hit on block {block}, never published"
            _, data, known = self.published[block]
            assert known.all(), f"hit on block {block}, whose KV was never all written"
            self.kv[seq][i * BS:(i + 1) * BS] = data
            self.known[seq][i * BS:(i + 1) * BS] = True

    @ON_GPU
    @rule(data=st.data(), token=st.integers(0, 2))
    def append(self, data, token):
        seq = self.pick(data, _gpu(self))
        if self.refused(lambda: self.cache.append(seq, token_ids=[token])):
            return
        self.tokens[seq].append(token)
        self.kv[seq] = np.concatenate([self.kv[seq], np.zeros((1, *ROW), np.float32)])
        self.known[seq] = np.concatenate([self.known[seq], np.zeros((1, LAYERS), bool)])

    def compute_all(self, seq: int) -> None:
        start = self.cache.num_computed_tokens(seq)
        n = len(self.tokens[seq]) - start
        if n:
            self.write(seq, start, self.fresh(n), range(LAYERS))

    @ON_GPU
    @rule(data=st.data())
    def compute(self, data):
        """What a model step does: write every layer of the positions not yet computed."""
        self.compute_all(self.pick(data, _gpu(self)))

    @ON_GPU
    @rule(data=st.data())
    def write_a_range_of_one_layer(self, data):
        seq = self.pick(data, _gpu(self))
        n = len(self.tokens[seq])
        start = data.draw(st.integers(0, n - 1))
        end = data.draw(st.integers(start + 1, n))
        self.write(seq, start, self.fresh(end - start), [data.draw(st.integers(0, LAYERS - 1))])

    @ON_GPU
    @rule(data=st.data())
    def rewrite_last_tokens_in_one_batch(self, data):
        """A decode-like batch write over several sequences, forks included (COW plan)."""
        chosen = data.draw(st.lists(st.sampled_from(sorted(_gpu(self))), min_size=1,
                                    unique=True))
        rows = self.fresh(len(chosen))
        starts = [len(self.tokens[s]) - 1 for s in chosen]
        for layer in range(LAYERS):
            call = lambda layer=layer: self.cache.write_kv_batch(  # noqa: E731
                layer, chosen, rows[:, layer, 0], rows[:, layer, 1],
                num_tokens=[1] * len(chosen), starts=starts)
            if any(self.immutable(s, p, p + 1) for s, p in zip(chosen, starts)):
                assert self.refused(call, (ImmutableBlockError,)), "an immutable block changed"
                return
            if self.refused(call):
                return
            for i, (s, p) in enumerate(zip(chosen, starts)):
                self.kv[s][p, layer] = rows[i, layer]
                self.known[s][p, layer] = True

    @ANY
    @rule(data=st.data())
    def commit_what_is_computed(self, data):
        """With storage, writes commit: an explicit commit of computed tokens is a no-op."""
        seq = self.pick(data, list(self.tokens))
        before = self.cache.snapshot()
        self.cache.commit(seq, data.draw(st.integers(0, self.cache.num_computed_tokens(seq))))
        assert self.cache.snapshot() == before

    @ON_GPU
    @rule(data=st.data())
    def fork(self, data):
        seq = self.pick(data, _gpu(self))
        child = self.cache.fork(seq)
        self.tokens[child] = list(self.tokens[seq])
        self.kv[child] = self.kv[seq].copy()
        self.known[child] = self.known[seq].copy()

    @ANY
    @rule(data=st.data())
    def free(self, data):
        seq = self.pick(data, list(self.tokens))
        self.cache.free(seq)
        for shadow in (self.tokens, self.kv, self.known):
            del shadow[seq]

    @ON_GPU
    @rule(data=st.data())
    def swap_out(self, data):
        group = data.draw(st.lists(st.sampled_from(sorted(_gpu(self))), min_size=1,
                                   unique=True))
        self.refused(lambda: self.cache.swap_out(group))

    @ON_HOST
    @rule(data=st.data())
    def swap_in(self, data):
        group = data.draw(st.lists(st.sampled_from(sorted(_host(self))), min_size=1,
                                   unique=True))
        self.refused(lambda: self.cache.swap_in(group))

    @rule(n=st.integers(0, 3))
    def evict(self, n):
        assert len(self.cache.evict_cached(n)) <= n

    # -- checks after every step ---------------------------------------------------------
    @invariant()
    def invariants_hold_and_publications_are_recorded(self):
        self.cache.check_invariants()
        self.record_publications()

    @invariant()
    def computed_tokens_are_the_positions_written_in_every_layer(self):
        for seq, known in self.known.items():
            complete = known.all(axis=1)
            expected = len(complete) if complete.all() else int(np.argmin(complete))
            assert self.cache.num_computed_tokens(seq) == expected, seq

    @invariant()
    def every_gpu_sequence_reads_back_what_it_knows(self):
        on_gpu = _gpu(self)
        if not on_gpu:
            return
        expected = np.concatenate([self.kv[s] for s in on_gpu])
        known = np.concatenate([self.known[s] for s in on_gpu])
        for layer in range(LAYERS):
            k, v, _ = self.cache.read_kv_batch(layer, on_gpu)
            rows = known[:, layer]
            np.testing.assert_array_equal(k[rows], expected[rows, layer, 0])
            np.testing.assert_array_equal(v[rows], expected[rows, layer, 1])


class MetadataMachine(RuleBasedStateMachine):
    """Metadata-only: nothing is computed but what is committed (or hit)."""

    def __init__(self):
        super().__init__()
        config = CacheConfig(
            block_size=BS, num_gpu_blocks=8, num_host_blocks=6, enable_prefix_caching=True,
            eviction_policy="fifo",
        )
        self.cache = PagedKVCache(config)
        self.tokens: dict[int, list[int]] = {}
        self.computed: dict[int, int] = {}
        self.committed: set[tuple] = set()  # token prefixes of blocks ever computed

    @rule(tokens=TOKENS)
    def allocate(self, tokens):
        seq = self.cache.try_allocate(token_ids=tokens)
        if seq is None:
            return
        hits = self.cache.num_cached_tokens(seq)
        for i in range(hits // BS):
            assert tuple(tokens[: (i + 1) * BS]) in self.committed, "a hit nobody computed"
        self.tokens[seq], self.computed[seq] = list(tokens), hits

    @ON_GPU
    @rule(data=st.data(), token=st.integers(0, 2))
    def append(self, data, token):
        seq = data.draw(st.sampled_from(sorted(_gpu(self))))
        try:
            self.cache.append(seq, token_ids=[token])
        except OutOfBlocksError:
            return
        self.tokens[seq].append(token)

    @ANY
    @rule(data=st.data())
    def commit(self, data):
        seq = data.draw(st.sampled_from(sorted(self.tokens)))
        tokens = self.tokens[seq]
        n = data.draw(st.integers(0, len(tokens)))
        self.cache.commit(seq, n)
        done = self.computed[seq] = max(self.computed[seq], n)
        self.committed.update(tuple(tokens[: (i + 1) * BS]) for i in range(done // BS))

    @ON_GPU
    @rule(data=st.data())
    def fork(self, data):
        seq = data.draw(st.sampled_from(sorted(_gpu(self))))
        child = self.cache.fork(seq)
        self.tokens[child], self.computed[child] = list(self.tokens[seq]), self.computed[seq]

    @ANY
    @rule(data=st.data())
    def free(self, data):
        seq = data.draw(st.sampled_from(sorted(self.tokens)))
        self.cache.free(seq)
        del self.tokens[seq], self.computed[seq]

    @ANY
    @rule(data=st.data())
    def swap(self, data):
        seq = data.draw(st.sampled_from(sorted(self.tokens)))
        move = self.cache.swap_out if self.cache.get(seq).location == "gpu" else (
            self.cache.swap_in)
        try:
            move(seq)
        except OutOfBlocksError:
            pass

    @rule(n=st.integers(0, 3))
    def evict(self, n):
        self.cache.evict_cached(n)

    @invariant()
    def invariants_and_computed_counts_hold(self):
        self.cache.check_invariants()
        for seq, computed in self.computed.items():
            assert self.cache.num_computed_tokens(seq) == computed
        stats = self.cache.stats()
        assert stats.prefix_cached_blocks == stats.prefix_stored_blocks - stats.prefix_evictions


TIER_SETTINGS = st.tuples(st.sampled_from(PLACEMENTS), st.sampled_from(ONLINE_POLICIES),
                          st.sampled_from(ONLINE_POLICIES))
#: shorter prompts for the tiered machines' smaller GPU (at most 4 blocks)
SHORT_TOKENS = st.builds(
    lambda n, tail: (BASE[:n] + tail) or [0],
    st.integers(0, 6), st.lists(st.integers(0, 2), max_size=2),
)


class TieredMachine(RuleBasedStateMachine):
    """Storage, a host tier of 1 block and a disk tier of 5 below a GPU of 5 (so that a
    prompt of two full blocks or more has blocks only the disk holds)."""

    @initialize(setting=TIER_SETTINGS, tokens=SHORT_TOKENS)
    def a_tiered_cache_and_a_first_prompt(self, setting, tokens):
        placement, host_policy, disk_policy = setting
        self.dir = tempfile.TemporaryDirectory()
        config = CacheConfig(
            block_size=BS, num_gpu_blocks=5, num_host_blocks=4, enable_prefix_caching=True,
            host_cache_blocks=1, host_cache_policy=host_policy, disk_cache_blocks=5,
            disk_cache_policy=disk_policy, disk_cache_dir=self.dir.name,
            tier_placement=placement)
        self.cache = PagedKVCache(config, MODEL)
        self.shadow = ShadowKV(self.cache)
        self.damaged: dict[int, object] = {}  # disk slot -> the key it held when damaged
        self.allocate(tokens)

    def teardown(self):
        if hasattr(self, "dir"):
            self.cache.tiers.pools.close()
            self.dir.cleanup()

    def seqs(self, location: str) -> list[int]:
        return sorted(s for s in self.shadow.expected if self.cache.get(s).location == location)

    @rule(tokens=SHORT_TOKENS, whole=st.booleans())
    def allocate(self, tokens, whole=True):
        """A prompt and its prefill: every layer, or (interrupted) only layer 0."""
        try:
            self.shadow.allocate(token_ids=tokens, layers=None if whole else [0])
        except OutOfBlocksError:
            pass

    @rule(tokens=SHORT_TOKENS, how=st.sampled_from(["once", "again", "again, damaged"]))
    def serve_a_request(self, tokens, how="once"):
        """A whole request: its prompt served (hits from any tier), prefilled, freed; with
        "again", the GPU then evicts every cached block it can and the same prompt comes
        back (so it is served from the tiers, as far as they kept it). "again, damaged":
        first a byte of the last of its servable blocks that only the disk tier holds is
        flipped in the file: that load must fail, and the block be recomputed."""
        for round in range(1 + (how != "once")):
            if round and how == "again, damaged":
                self.damage_the_last_block_only_on_disk(tokens)
            try:
                seq = self.shadow.allocate(token_ids=tokens)
            except OutOfBlocksError:
                return
            checks = self.shadow.verify()
            assert all(checks.values()), [c for c, ok in checks.items() if not ok]
            self.shadow.free(seq)
            self.cache.evict_cached(self.cache.gpu.num_evictable)

    def damage_the_last_block_only_on_disk(self, tokens: list[int]) -> None:
        tiers = self.cache.tiers
        keys = self.cache.prefix.token_keys(tokens)[: (len(tokens) - 1) // BS]  # servable
        only_on_disk = [k for k in keys if k in tiers.disk and k not in tiers.host
                        and self.cache.gpu.cached_block(k) is None]
        if not only_on_disk:
            return
        slot = tiers.disk.slot_of(only_on_disk[-1])
        offset = slot * BS * MODEL.num_kv_heads * MODEL.head_dim * 4  # layer 0, K
        with open(tiers.pools.disk.path, "r+b") as f:
            f.seek(offset)
            byte = f.read(1)
            f.seek(offset)
            f.write(bytes([byte[0] ^ 0x40]))
        self.damaged[slot] = only_on_disk[-1]

    @precondition(lambda m: m.seqs("gpu"))
    @rule(data=st.data())
    def finish_the_prefill(self, data):
        """(Refused, changing nothing, when it would write a full block a fork shares, or
        must copy a shared partial block with no free block.)"""
        try:
            self.shadow.write(data.draw(st.sampled_from(self.seqs("gpu"))))
        except (ImmutableBlockError, OutOfBlocksError):
            pass

    @precondition(lambda m: m.seqs("gpu"))
    @rule(data=st.data(), token=st.integers(0, 2))
    def decode(self, data, token):
        seq = data.draw(st.sampled_from(self.seqs("gpu")))
        written = [len(k) for k, _ in self.shadow.expected[seq]]
        if min(written) < self.cache.num_tokens(seq):
            return  # finish the prefill first
        try:
            self.shadow.append(seq, token_ids=[token])
        except OutOfBlocksError:
            return

    @precondition(lambda m: m.seqs("gpu"))
    @rule(data=st.data())
    def fork(self, data):
        self.shadow.fork(data.draw(st.sampled_from(self.seqs("gpu"))))

    @precondition(lambda m: m.shadow.expected)
    @rule(data=st.data())
    def free(self, data):
        self.shadow.free(data.draw(st.sampled_from(sorted(self.shadow.expected))))

    @precondition(lambda m: m.shadow.expected)
    @rule(data=st.data())
    def swap(self, data):
        seq = data.draw(st.sampled_from(sorted(self.shadow.expected)))
        gpu = self.cache.get(seq).location == "gpu"
        try:
            (self.cache.swap_out if gpu else self.cache.swap_in)(seq)
        except OutOfBlocksError:
            pass

    @rule(n=st.integers(1, 3))
    def evict_from_the_gpu(self, n):
        self.cache.evict_cached(n)

    @invariant()
    def invariants_hold(self):
        self.cache.check_invariants()

    @invariant()
    def every_gpu_sequence_reads_back_its_tokens_values(self):
        checks = self.shadow.verify()
        assert all(checks.values()), [c for c, ok in checks.items() if not ok]

    @invariant()
    def every_block_a_tier_holds_is_its_tokens_values(self):
        disk = self.cache.tiers.disk
        self.damaged = {s: k for s, k in self.damaged.items() if disk.allocator.block_keys[s] == k}
        checks = self.shadow.verify_tiers(skip=[("disk", s) for s in self.damaged])
        assert all(checks.values()), [c for c, ok in checks.items() if not ok]

    @invariant()
    def the_tier_figures_add_up(self):
        stats = self.cache.stats()
        assert stats.prefix_hit_tokens == (stats.prefix_gpu_hit_tokens
                                           + stats.prefix_host_hit_tokens
                                           + stats.prefix_disk_hit_tokens)
        assert stats.prefix_host_hit_tokens == BS * stats.host_tier_loads
        assert stats.prefix_disk_hit_tokens == BS * stats.disk_tier_loads
        assert stats.host_tier_held_blocks <= 1 and stats.disk_tier_held_blocks <= 5


class TieredMetadataMachine(MetadataMachine):
    """`MetadataMachine` with a host and a disk tier (placement and policies drawn)."""

    @rule(tokens=SHORT_TOKENS, again=st.booleans())
    def serve_a_request(self, tokens, again):
        """A whole request: allocated (hits from any tier), committed, freed; with
        `again`, the GPU evicts what it can and the same prompt comes back."""
        for _ in range(1 + again):
            seq = self.cache.try_allocate(token_ids=tokens)
            if seq is None:
                return
            hits = self.cache.num_cached_tokens(seq)
            for i in range(hits // BS):
                assert tuple(tokens[: (i + 1) * BS]) in self.committed, "a hit nobody computed"
            self.cache.commit(seq)
            self.committed.update(tuple(tokens[: (i + 1) * BS])
                                  for i in range(len(tokens) // BS))
            self.cache.free(seq)
            self.cache.evict_cached(self.cache.gpu.num_evictable)

    @initialize(setting=TIER_SETTINGS)
    def a_tiered_cache(self, setting):
        placement, host_policy, disk_policy = setting
        config = CacheConfig(
            block_size=BS, num_gpu_blocks=5, num_host_blocks=6, enable_prefix_caching=True,
            eviction_policy="fifo", host_cache_blocks=2, host_cache_policy=host_policy,
            disk_cache_blocks=5, disk_cache_policy=disk_policy, tier_placement=placement)
        self.cache = PagedKVCache(config)

    @invariant()
    def every_key_a_tier_holds_was_committed(self):
        tiers = self.cache.tiers
        if tiers is None:
            return  # before the initialize rule
        chain = self.cache.prefix.token_keys
        committed = {chain(list(c))[-1] for c in self.committed}
        for tier in tiers.lower:
            assert set(tier.keys().values()) <= committed
        stats = self.cache.stats()
        assert stats.prefix_hit_tokens >= (stats.prefix_host_hit_tokens
                                           + stats.prefix_disk_hit_tokens)
        assert stats.host_tier_held_blocks <= 2 and stats.disk_tier_held_blocks <= 5


def _settings(examples: int) -> settings:
    return settings(
        max_examples=examples,
        stateful_step_count=STEPS,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
        derandomize=True,
    )


CacheMachine.TestCase.settings = _settings(EXAMPLES)
MetadataMachine.TestCase.settings = _settings(4 * EXAMPLES)
TieredMachine.TestCase.settings = _settings(max(1, EXAMPLES // 2))
TieredMetadataMachine.TestCase.settings = _settings(4 * EXAMPLES)
TestCacheStateMachine = CacheMachine.TestCase
TestMetadataStateMachine = MetadataMachine.TestCase
TestTieredStateMachine = TieredMachine.TestCase
TestTieredMetadataStateMachine = TieredMetadataMachine.TestCase
