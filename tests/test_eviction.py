"""Eviction policies: hand-built orders, order() == repeated pop() against independent
reference models on random block lives, the policies through the real cache, Belady's
stale next uses and its optimality on random traces, and the registry's errors."""

from __future__ import annotations

import copy
import math
import random

import pytest

from paged_kv.cache import PagedKVCache
from paged_kv.core.config import CacheConfig
from paged_kv.core.eviction import (
    ONLINE_POLICIES,
    ARCPolicy,
    BeladyPolicy,
    ClockPolicy,
    FIFOPolicy,
    LFUPolicy,
    make_policy,
    policy_names,
)

BS = 4

# ====================================================================================
# hand-built hook sequences, expected orders written by hand
# ====================================================================================


def cache_blocks(policy, blocks, prefix="k"):
    for b in blocks:
        policy.on_cached(b, f"{prefix}{b}")


def test_fifo_evicts_in_caching_order_whatever_the_releases_and_hits():
    p = FIFOPolicy()
    cache_blocks(p, [0, 1, 2])  # cached in the order 0, 1, 2
    p.add(2)
    p.add(0)
    p.add(1)  # released in another order: irrelevant to FIFO
    p.remove(0)  # 0 revived by a hit ...
    p.on_hit(0)
    p.add(0)  # ... and released last: it keeps its caching position
    assert p.order() == [0, 1, 2]
    p.on_cached(3, "k3")
    p.add(3)
    assert p.pop() == 0
    p.on_cached(0, "k0-again")  # 0 cached again: a fresh stamp, behind 3
    p.add(0)
    assert [p.pop() for _ in range(4)] == [1, 2, 3, 0]
    with pytest.raises(IndexError):
        p.pop()


def test_lfu_evicts_fewest_uses_then_least_recently_released():
    p = LFUPolicy()
    cache_blocks(p, [0, 1, 2, 3])  # each used once by caching
    p.on_hit(1)
    p.on_hit(1)  # 1: 3 uses
    p.on_hit(2)  # 2: 2 uses (0 and 3: 1 use)
    for b in (3, 2, 1, 0):
        p.add(b)
    # frequency 1: 3 (released first), then 0; frequency 2: 2; frequency 3: 1
    assert p.order() == [3, 0, 2, 1]
    p.remove(3)  # 3 revived by a hit: 2 uses, released after everyone
    p.on_hit(3)
    p.add(3)
    assert p.frequency(3) == 2
    assert p.order() == [0, 2, 3, 1]  # 2 and 3 tie on 2 uses; 2 was released earlier
    p.on_hit(0)
    p.on_hit(0)  # a hit on a candidate reorders it at once: 0 now has 3 uses
    assert p.order() == [2, 3, 1, 0]  # 1 and 0 tie on 3 uses; 1 was released earlier
    assert p.pop() == 2
    assert p.frequency(2) is None  # forgotten when evicted
    p.on_cached(2, "k2-again")
    assert p.frequency(2) == 1  # a block cached again starts afresh


def test_clock_second_chance_sweep():
    p = ClockPolicy()
    cache_blocks(p, [0, 1, 2, 3])  # bits clear
    for b in (0, 1, 2, 3):
        p.add(b)  # ring, from the hand: 0 1 2 3
    p.remove(1)  # 1 revived by a hit (the cache calls remove, then on_hit) ...
    p.on_hit(1)
    p.add(1)  # ... and released: just behind the hand, bit set: ring 0 2 3 1
    p.on_hit(2)  # a hit on a candidate sets its bit, and does not move it
    assert [p.referenced(b) for b in range(4)] == [False, True, True, False]
    # clear bits in ring order (0, 3), then set bits in ring order (2, 1)
    assert p.order() == [0, 3, 2, 1]
    assert p.pop() == 0  # the hand is on 0, bit clear: evicted
    before = p.state()
    assert p.pop() == 3  # the hand passes 2 (clearing its bit), evicts 3
    assert p.state() != before
    assert p.referenced(2) is False and p.referenced(1) is True
    # the hand is now on 1 (the block after 3); 2 stands behind it with a clear bit
    assert p.order() == [2, 1]
    p.on_cached(4, "k4")
    p.add(4)  # behind the hand, after 2
    assert p.order() == [2, 4, 1]
    assert [p.pop() for _ in range(3)] == [2, 4, 1]


def test_arc_adapts_between_recency_and_frequency():
    p = ARCPolicy()
    for b, key in enumerate("abcd"):
        p.on_cached(b, key)  # four blocks used once: T1, and c (capacity) grows to 4
    p.on_hit(2)
    p.on_hit(3)  # used again: T2
    for b in range(4):
        p.add(b)
    assert p.capacity == 4 and p.target == 0
    # |T1| = 2 > p = 0, so T1 goes first (0, 1); then T2 (2, 3)
    assert p.order() == [0, 1, 2, 3]
    assert p.pop() == 0  # key a -> ghost B1
    assert p.pop() == 1  # key b -> ghost B1
    p.on_cached(4, "a")  # a B1 ghost comes back: p grows by max(1, |B2|/|B1|) = 1
    assert p.target == 1
    p.on_cached(5, "e")  # a new key: T1
    p.add(5)
    p.add(4)  # 4 is in T2 (a ghost hit enters T2)
    # |T1| = 1 is not > p = 1: T2 first, in release order (2, 3, 4), then T1 (5)
    assert p.order() == [2, 3, 4, 5]
    assert p.pop() == 2  # key c -> ghost B2
    p.on_cached(6, "c")  # a B2 ghost: p shrinks by max(1, |B1|/|B2|) = max(1, 1/1)
    assert p.target == 0
    p.add(6)
    # |T1| = 1 > p = 0: T1 first again
    assert p.order() == [5, 3, 4, 6]


def test_arc_trims_its_ghost_lists_to_the_capacity():
    p = ARCPolicy()
    cache_blocks(p, [0, 1])
    p.add(0)
    p.add(1)
    assert [p.pop(), p.pop()] == [0, 1]  # ghosts k0, k1 in B1; c = 2
    cache_blocks(p, [2, 3], prefix="new")  # |T1| + |B1| = 4 > c: both ghosts dropped
    p.on_cached(4, "k0")  # so k0 is a plain miss: T1, p unchanged
    assert p.target == 0
    p.add(4)
    assert p.order() == [4]
    fixed = ARCPolicy(capacity=8)  # a capacity given up front keeps the ghosts
    cache_blocks(fixed, [0, 1])
    fixed.add(0)
    fixed.add(1)
    fixed.pop()
    fixed.pop()
    cache_blocks(fixed, [2, 3], prefix="new")
    fixed.on_cached(4, "k0")
    assert fixed.target == 1


def test_belady_evicts_the_farthest_next_use_and_refreshes_stale_ones():
    #           0    1    2    3    4    5    6
    trace = ["A", "B", "C", "B", "A", "C", "B"]
    p = BeladyPolicy(trace)
    p.on_cached(0, "A")
    p.on_cached(1, "B")
    p.add(1)
    p.add(0)
    p.advance(2)  # the request at 0..1 is done: A next at 4, B next at 3
    assert p.order() == [0, 1]
    p.on_cached(2, "C")
    p.add(2)  # released at time 2: C's next use is its own access at 2
    assert p.order() == [0, 1, 2]
    p.advance(3)  # C's stored next use (2) is stale: refreshed to 5
    assert p.order() == [2, 0, 1]
    # The request at 3 used B but did not revive block 1 (say its prefix match stopped
    # earlier). Stored at 3, B's next use is stale at time 4 and must become 6: B goes
    # from nearest to farthest.
    p.advance(4)
    assert p.next_use("B") == 6
    assert p.order() == [1, 2, 0]
    assert p.pop() == 1
    p.advance(7)  # the end: nobody is used again; ties go to the least recently released
    assert p.next_use("A") == math.inf and p.next_use("C") == math.inf
    assert p.order() == [0, 2]  # 0 was released at time 0, 2 at time 2
    with pytest.raises(ValueError, match="forward"):
        p.advance(6)


# ====================================================================================
# order() == repeated pop(), len / in, against independent reference models
# ====================================================================================


class ClockReference:
    """A literal ring with a hand, as in the textbooks, to check `ClockPolicy`."""

    def __init__(self) -> None:
        self.ring: list[int] = []
        self.hand = 0
        self.bit: dict[int, bool] = {}

    def _wrap(self) -> None:
        self.hand = self.hand % len(self.ring) if self.ring else 0

    def add(self, b: int) -> None:
        self.ring.insert(self.hand, b)  # just behind the hand: reached last
        self.hand += 1
        self._wrap()

    def remove(self, b: int) -> None:
        i = self.ring.index(b)
        del self.ring[i]
        if i < self.hand:
            self.hand -= 1
        self._wrap()

    def pop(self) -> int:
        while self.bit[self.ring[self.hand]]:
            self.bit[self.ring[self.hand]] = False
            self.hand = (self.hand + 1) % len(self.ring)
        b = self.ring.pop(self.hand)
        self._wrap()
        return b

    def order(self) -> list[int]:
        ring = self.ring[self.hand:] + self.ring[: self.hand]
        return [b for b in ring if not self.bit[b]] + [b for b in ring if self.bit[b]]


class Driver:
    """Drives a policy through random but valid block lives, as the allocator does, and
    keeps its own record of stamps, uses and bits to predict the eviction order."""

    def __init__(self, name: str, seed: int, num_blocks: int = 10, num_keys: int = 16):
        self.name = name
        self.rng = random.Random(seed)
        self.keys = [f"key{i}" for i in range(num_keys)]
        self.trace = [self.rng.choice(self.keys) for _ in range(300)]
        self.policy = BeladyPolicy(self.trace) if name == "belady" else make_policy(name)
        self.num_blocks = num_blocks
        self.free = list(range(num_blocks))  # uncached, not in use
        self.refs: dict[int, int] = {}  # in-use blocks
        self.key: dict[int, str] = {}  # cached blocks (in use or candidates)
        self.cands: set[int] = set()
        self.tick = 0
        self.cached_at: dict[int, int] = {}
        self.released_at: dict[int, int] = {}
        self.uses: dict[int, int] = {}
        self.clock = ClockReference()
        self.now = 0

    def _stamp(self) -> int:
        self.tick += 1
        return self.tick

    def _forget(self, b: int) -> None:
        self.cands.discard(b)
        for table in (self.key, self.cached_at, self.released_at, self.uses, self.clock.bit):
            table.pop(b, None)

    def next_use(self, key: str) -> float:
        return next((j for j in range(self.now, len(self.trace)) if self.trace[j] == key),
                    math.inf)

    def expected_order(self) -> list[int] | None:
        c = self.cands
        if self.name == "lru":
            return sorted(c, key=lambda b: self.released_at[b])
        if self.name == "fifo":
            return sorted(c, key=lambda b: self.cached_at[b])
        if self.name == "lfu":
            return sorted(c, key=lambda b: (self.uses[b], self.released_at[b]))
        if self.name == "clock":
            return self.clock.order()
        if self.name == "belady":
            return sorted(c, key=lambda b: (-self.next_use(self.key[b]), self.released_at[b]))
        return None  # arc: checked by its invariants and the hand-built tests

    # -- one random step ---------------------------------------------------------------
    def step(self) -> None:
        rng, p = self.rng, self.policy
        in_use_uncached = [b for b in self.refs if b not in self.key]
        ops = ["take"] * bool(self.free) + ["cache"] * bool(in_use_uncached) * 2
        ops += ["hit"] * bool(self.key) * 3 + ["release"] * bool(self.refs) * 3
        ops += ["pop"] * bool(self.cands) * 2 + ["peek_hit"] * bool(self.cands)
        ops += ["clear"] * (rng.random() < 0.02) + ["advance"] * (self.name == "belady") * 2
        op = rng.choice(ops)
        if op == "take":
            b = self.free.pop(rng.randrange(len(self.free)))
            self.refs[b] = 1
        elif op == "cache":  # a full block published under a key not cached now
            b = rng.choice(in_use_uncached)
            key = rng.choice([k for k in self.keys if k not in self.key.values()] or ["spare"])
            p.on_cached(b, key)
            self.key[b] = key
            self.cached_at[b] = self._stamp()
            self.uses[b] = 1
            self.clock.bit[b] = False
        elif op == "hit":  # a prefix hit: revives a candidate, or shares an in-use block
            b = rng.choice(sorted(self.key))
            if b in self.cands:
                # the cache removes then hits; the interface also allows hit then remove
                if rng.random() < 0.5:
                    p.remove(b)
                    p.on_hit(b)
                else:
                    p.on_hit(b)
                    p.remove(b)
                self.cands.remove(b)
                self.clock.remove(b)
                self.refs[b] = 0
            else:
                p.on_hit(b)
            self.refs[b] += 1
            self.uses[b] += 1
            self.clock.bit[b] = True
        elif op == "peek_hit":  # a hit reported on a candidate that stays one
            b = rng.choice(sorted(self.cands))
            p.on_hit(b)
            self.uses[b] += 1
            self.clock.bit[b] = True
        elif op == "release":
            b = rng.choice(sorted(self.refs))
            self.refs[b] -= 1
            if self.refs[b] == 0:
                del self.refs[b]
                if b in self.key:
                    p.add(b)
                    self.cands.add(b)
                    self.released_at[b] = self._stamp()
                    self.clock.add(b)
                else:
                    self.free.append(b)
        elif op == "pop":
            expected = self.expected_order()
            if self.name == "clock":
                expected = [self.clock.pop()]
            b = p.pop()
            if expected is not None:
                assert b == expected[0]
            self._forget(b)
            if rng.random() < 0.5:
                self.refs[b] = 1  # allocated at once
            else:
                self.free.append(b)  # evicted to the uncached free queue
        elif op == "clear":
            p.clear()
            for b in list(self.cands):
                self.clock.remove(b)
                self._forget(b)
                self.free.append(b)
        elif op == "advance":
            self.now = min(len(self.trace), self.now + rng.randrange(4))
            p.advance(self.now)

    # -- the checks after each step ----------------------------------------------------
    def check(self) -> None:
        p = self.policy
        assert len(p) == len(self.cands)
        for b in range(self.num_blocks):
            assert (b in p) == (b in self.cands)
        before = p.state()
        order = p.order()
        assert p.state() == before, "order() changed the state"
        assert list(p) == order
        assert sorted(order) == sorted(self.cands)
        expected = self.expected_order()
        if expected is not None:
            assert order == expected
        clone = copy.deepcopy(p)
        assert [clone.pop() for _ in range(len(order))] == order
        assert len(clone) == 0
        with pytest.raises(IndexError):
            clone.pop()
        if self.name == "arc":
            n1 = sum(1 for cls in p._cls.values() if cls == 1)
            c = p.capacity
            assert 0 <= p.target <= c
            assert n1 + len(p._b1) <= c
            assert len(p._cls) + len(p._b1) + len(p._b2) <= 2 * c


ALL_POLICIES = (*ONLINE_POLICIES, "belady")


@pytest.mark.parametrize("name", ALL_POLICIES)
def test_order_equals_repeated_pop_on_random_hook_sequences(name):
    for seed in range(25):
        driver = Driver(name, seed)
        for _ in range(150):
            driver.step()
            driver.check()


@pytest.mark.parametrize("name", ALL_POLICIES)
def test_state_sees_history_that_the_order_does_not_show(name):
    p = BeladyPolicy(["x", "y", "x"]) if name == "belady" else make_policy(name)
    empty = p.state()
    p.on_cached(0, "x")  # an in-use block: no candidate yet
    if name != "lru":  # LRU keeps no history beyond its order
        assert p.state() != empty
    before = p.state()
    p.on_hit(0)
    if name in ("lfu", "clock", "arc"):  # a use count, a reference bit, a class
        assert p.state() != before
    p.add(0)
    assert p.pop() == 0
    if name == "arc":  # the ghost of x outlives the block
        assert p.state() != empty
    else:
        assert p.state() == empty


# ====================================================================================
# through the real cache
# ====================================================================================


def make_cache(num_blocks: int, policy: str = "lru", instance=None) -> PagedKVCache:
    config = CacheConfig(
        block_size=BS, num_gpu_blocks=num_blocks, enable_prefix_caching=True,
        eviction_policy=policy if instance is None else instance.name,
    )
    cache = PagedKVCache(config, policy=instance)
    assert instance is None or cache.gpu.policy is instance, "PagedKVCache ignored policy="
    return cache


def run(cache: PagedKVCache, keys: list, belady: BeladyPolicy | None = None, at: int = 0):
    """One request whose full blocks have `keys`, plus one partial block; then freed."""
    if belady is not None:
        belady.advance(at)
    seq = cache.allocate(block_keys=keys, num_tokens=len(keys) * BS + 1)
    cache.commit(seq)  # the prompt is computed: its full blocks are published
    cache.free(seq)


@pytest.mark.parametrize(
    ("name", "evicted"),
    [
        ("lru", "B"),  # released longest ago (B at request 3, C at 4, A at 5)
        ("fifo", "A"),  # cached first, although revived last
        ("lfu", "C"),  # the only block used once (A and B: cached + one hit)
        ("clock", "C"),  # the hand passes B (bit set by its hit), C's bit is clear
        ("arc", "C"),  # C alone is in T1 (used once) and |T1| = 1 > p = 0
    ],
)
def test_policies_evict_different_blocks_in_the_cache(name, evicted):
    cache = make_cache(4, name)
    # each request takes one cached block plus an uncached partial one
    for keys in (["A"], ["B"], ["B"], ["C"], ["A"]):
        run(cache, keys)
    assert cache.gpu.num_evictable == 3 and cache.gpu.num_free == 4
    run(cache, ["D"])  # needs 2 blocks: the uncached one and one eviction
    assert cache.stats().prefix_evictions == 1
    survivors = {k: cache.lookup_prefix(block_keys=[k], num_tokens=BS + 1) for k in "ABCD"}
    assert survivors == {k: 0 if k == evicted else BS for k in "ABCD"}
    cache.check_invariants()


def test_belady_in_the_cache_keeps_what_the_trace_needs_next():
    requests = [["A"], ["B"], ["C"], ["D"], ["B"], ["C"], ["A"]]
    accesses = [k for r in requests for k in r]
    belady = BeladyPolicy(accesses)
    cache = make_cache(4, instance=belady)
    for i, keys in enumerate(requests[:3]):
        run(cache, keys, belady, at=i)
    # at request 3 (D), A is next used at 6, B at 4, C at 5: A goes (LRU would take A
    # too, so evict once more to tell them apart)
    run(cache, ["D"], belady, at=3)
    assert cache.lookup_prefix(block_keys=["A"], num_tokens=BS + 1) == 0
    # At time 3, D's next use is its own access at 3. Once the request is over (time
    # 4), D is never used again while B (4) and C (5) are: D is the next victim, where
    # LRU would evict B.
    belady.advance(4)
    cache.evict_cached(1)
    assert [cache.lookup_prefix(block_keys=[k], num_tokens=BS + 1) for k in "BCD"] == [
        BS, BS, 0,
    ]


def random_trace(seed: int, num_requests: int = 120) -> list[list]:
    """Requests sharing prefixes of a few templates, then a unique tail.

    A key names its whole prefix, as chained keys do: ``(template, i)`` is the i-th
    block of a template, ``(request, j)`` a block of one request's own tail.
    """
    rng = random.Random(seed)
    templates = [rng.randint(2, 8) for _ in range(6)]
    weights = [1 / (t + 1) for t in range(len(templates))]  # a few popular templates
    requests = []
    for r in range(num_requests):
        t = rng.choices(range(len(templates)), weights)[0]
        shared = [("t", t, i) for i in range(rng.randint(1, templates[t]))]
        requests.append(shared + [("r", r, j) for j in range(rng.randint(0, 3))])
    return requests


def replay_hits(requests: list[list], capacity: int, name: str) -> int:
    """Blocks served from the cache when the requests run one after another."""
    accesses = [k for r in requests for k in r]
    belady = BeladyPolicy(accesses) if name == "belady" else None
    cache = make_cache(capacity, name if belady is None else "lru", belady)
    position = 0
    for keys in requests:
        run(cache, keys, belady, at=position)
        position += len(keys)
    cache.check_invariants()
    return cache.stats().prefix_hit_tokens // BS


@pytest.mark.parametrize("seed", range(6))
def test_belady_hits_at_least_as_often_as_every_online_policy(seed):
    requests = random_trace(seed)
    for capacity in (14, 20, 28):
        best = replay_hits(requests, capacity, "belady")
        others = {name: replay_hits(requests, capacity, name) for name in ONLINE_POLICIES}
        assert all(best >= hits for hits in others.values()), (capacity, best, others)
        if capacity == 14:  # a tight cache: the future must help
            assert best > others["lru"], (best, others)


# ====================================================================================
# the registry
# ====================================================================================


def test_unknown_policy_name_lists_every_valid_name():
    with pytest.raises(ValueError) as info:
        make_policy("mru")
    for name in policy_names():
        assert repr(name) in repr(str(info.value)) or name in str(info.value)
    assert set(policy_names()) == {"arc", "belady", "clock", "fifo", "length_aware", "lfu",
                                   "lru"}
    with pytest.raises(ValueError,
                       match="valid names: arc, belady, clock, fifo, length_aware, lfu, lru"):
        PagedKVCache(CacheConfig(enable_prefix_caching=True, eviction_policy="mru"))


def test_belady_by_name_explains_how_to_build_it():
    with pytest.raises(ValueError, match=r"BeladyPolicy\(accesses\).*advance"):
        make_policy("belady")


@pytest.mark.parametrize("name", ONLINE_POLICIES)
def test_every_online_policy_is_built_fresh_by_name(name):
    a, b = make_policy(name), make_policy(name.upper())
    assert a.name == name and type(a) is type(b) and a is not b
    assert make_policy(a) is a
