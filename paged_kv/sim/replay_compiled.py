"""The compiled replay engine: `paged_kv.sim.replay`'s rules in one Numba-compiled loop.

`compiled_replay` replays a `TraceArrays` at one capacity with one policy and returns
the same `ReplayResult` as the manager replay, with *identical* per-request hit tokens
(tests/test_replay_compiled.py holds every policy to it). The manager replay
(`paged_kv.sim.replay.replay`) stays the reference; this engine is what sweeps run.

What it models, request by request, exactly as `PagedKVCache` does it in metadata-only
mode with precomputed block keys (see `paged_kv.sim.replay` for the rules and the
capacity rule for prompts longer than the cache):

1. (Belady) time advances to the request's first key; stale next uses are refreshed;
2. the hit is the longest cached prefix of the prompt's full blocks, capped so the last
   prompt token is computed;
3. the policy hears of each hit block in prompt order (``on_hit``: LFU, LengthAware,
   Clock, ARC), then the hit blocks are revived (they stop being candidates: a
   request's own blocks are held while it is served);
4. the rest of the prompt's blocks are taken from uncached free blocks first
   (``capacity - cached``), then by evicting candidates in the policy's order;
5. the new full blocks are published in prompt order (``on_cached``); a key that is
   still cached elsewhere (not hit: the prefix match stopped earlier, or the cap) keeps
   its first block, and the new block stays uncached;
6. the request is released tail first: its cached blocks become candidates from the
   last to the first.

The cache is modelled by key rather than by physical block: every policy orders
candidates by stamps, counts and next uses, never by block id, and between requests
every block is free, so which physical block holds a key cannot change a hit. State is
a set of arrays indexed by interned key: linked lists (LRU and Clock in release order,
FIFO in caching order, ARC's T1/T2 and ghost lists B1/B2) and an indexed binary heap
(LFU, LengthAware, Belady), each hook O(1) or O(log n).

Importing this module imports numba; the functions are compiled on first call and
cached on disk (``cache=True``), so a later process pays only the load. Metadata
modules never import it; `paged_kv.sim.replay_sweep` does, when a sweep asks for the
compiled engine.
"""

from __future__ import annotations

import time

import numpy as np
from numba import njit

from paged_kv.sim.replay import ReplayResult, check_capacity, check_policy, check_warmup
from paged_kv.sim.replay_arrays import NEVER, TraceArrays

#: policy name -> the code the kernel switches on
POLICY_CODES: dict[str, int] = {
    "lru": 0, "fifo": 1, "lfu": 2, "clock": 3, "arc": 4, "belady": 5, "length_aware": 6,
}
_LRU, _FIFO, _LFU, _CLOCK, _ARC, _BELADY, _LENGTH_AWARE = range(7)
_NIL = -1


# --- an indexed binary min-heap on one int64 priority per key ----------------------
# Slot i holds key hk[i] with priority hv[i]; pos[key] is the key's slot (-1: none).
# Keeping priorities beside the slots, not per key, keeps sifting within a few cache
# lines. Each policy packs its ordering into one int64 (see `_priority_layout`).

@njit(cache=True)
def _place(hk, hv, pos, i, key, value):
    hk[i] = key
    hv[i] = value
    pos[key] = i


@njit(cache=True)
def _sift(hk, hv, pos, i, n, key, value):
    """Put (key, value) into the hole at slot i of a heap of n slots, up or down."""
    while i > 0:
        parent = (i - 1) >> 1
        if hv[parent] <= value:
            break
        _place(hk, hv, pos, i, hk[parent], hv[parent])
        i = parent
    while True:
        child = 2 * i + 1
        if child >= n:
            break
        if child + 1 < n and hv[child + 1] < hv[child]:
            child += 1
        if hv[child] >= value:
            break
        _place(hk, hv, pos, i, hk[child], hv[child])
        i = child
    _place(hk, hv, pos, i, key, value)


@njit(cache=True)
def _heap_push(hk, hv, pos, n, key, value):
    _sift(hk, hv, pos, n, n + 1, key, value)
    return n + 1


@njit(cache=True)
def _heap_remove(hk, hv, pos, n, key):
    i = pos[key]
    pos[key] = _NIL
    n -= 1
    if i != n:
        _sift(hk, hv, pos, i, n, hk[n], hv[n])
    return n


_NEVER_FLOOR = -(2**62)


@njit(cache=True, inline="always")
def _belady_value(use, stamp):
    """Belady's heap value: the farthest next use first; never-again first of all,
    among those the least recently released (finite next uses are distinct)."""
    if use == NEVER:
        return _NEVER_FLOOR + stamp
    return -use


# --- doubly linked lists over keys; ends[2 * lst] = head, ends[2 * lst + 1] = tail --

@njit(cache=True)
def _append(prev, nxt, ends, lst, key):
    tail = ends[2 * lst + 1]
    prev[key] = tail
    nxt[key] = _NIL
    if tail == _NIL:
        ends[2 * lst] = key
    else:
        nxt[tail] = key
    ends[2 * lst + 1] = key


@njit(cache=True)
def _unlink(prev, nxt, ends, lst, key):
    p, q = prev[key], nxt[key]
    if p == _NIL:
        ends[2 * lst] = q
    else:
        nxt[p] = q
    if q == _NIL:
        ends[2 * lst + 1] = p
    else:
        prev[q] = p


# --- the replay ----------------------------------------------------------------------

@njit(cache=True)
def _trim_ghosts(gprev, gnext, gends, ghost, n1, n2, b1, b2, arc_c):
    """ARC: |T1| + |B1| <= c and |T1| + |T2| + |B1| + |B2| <= 2c, oldest ghosts first."""
    while b1 > 0 and n1 + b1 > arc_c:
        g = gends[0]
        _unlink(gprev, gnext, gends, 0, g)
        ghost[g] = 0
        b1 -= 1
    while b2 > 0 and n1 + n2 + b1 + b2 > 2 * arc_c:
        g = gends[2]
        _unlink(gprev, gnext, gends, 1, g)
        ghost[g] = 0
        b2 -= 1
    return b1, b2


@njit(cache=True)
def _replay_kernel(policy, capacity, block_size, offsets, keys, prompt_lens, next_access,
                   depth, num_keys, shift_freq, shift_depth, max_depth, hit_blocks):
    """Replay every request; writes hit blocks per request, returns the evictions."""
    num_requests = len(prompt_lens)
    uses_heap = policy == _LFU or policy == _BELADY or policy == _LENGTH_AWARE
    k_heap = num_keys if uses_heap else 1
    k_list = 1 if uses_heap else num_keys
    k_arc = num_keys if policy == _ARC else 1
    k_freq = num_keys if policy == _LFU or policy == _LENGTH_AWARE else 1
    k_next = num_keys if policy == _BELADY else 1

    cached = np.zeros(num_keys, np.uint8)  # key held by a block
    is_cand = np.zeros(num_keys, np.uint8)  # ... that is an eviction candidate
    stored = np.zeros(max(1, int(np.diff(offsets).max())), np.uint8)
    # heap policies (LFU, LengthAware, Belady)
    hk = np.empty(k_heap, np.int32)
    hv = np.empty(k_heap, np.int64)
    pos = np.full(k_heap, _NIL, np.int32)
    n_heap = 0
    freq = np.zeros(k_freq, np.int64)  # LFU, LengthAware: uses since cached
    next_use = np.zeros(k_next, np.int64)  # Belady: each candidate's stored next use
    released = np.zeros(k_next, np.int64)  # ... and its release stamp
    # list policies: LRU (list 0, release order), FIFO (list 0: every cached key in
    # caching order, in use or not), Clock (list 0: the ring, head = the hand),
    # ARC (T1 = list 0, T2 = list 1, each in release order)
    prev = np.empty(k_list, np.int32)
    nxt = np.empty(k_list, np.int32)
    ends = np.full(4, _NIL, np.int64)
    bit = np.zeros(k_list if policy == _CLOCK else 1, np.uint8)  # Clock reference bits
    # ARC: class (1 = T1, 2 = T2), ghost lists B1 (0) / B2 (1) and membership
    cls = np.zeros(k_arc, np.uint8)
    gprev = np.empty(k_arc, np.int32)
    gnext = np.empty(k_arc, np.int32)
    gends = np.full(4, _NIL, np.int64)
    ghost = np.zeros(k_arc, np.uint8)  # 0: none, 1: in B1, 2: in B2
    n1 = 0
    n2 = 0
    b1 = 0
    b2 = 0
    arc_p = 0.0
    arc_c = 0
    clock = 0  # release stamps (LFU, LengthAware, Belady)
    num_cached = 0
    evictions = 0
    last_position = 0

    for r in range(num_requests):
        start = offsets[r]
        end = offsets[r + 1]
        n = prompt_lens[r]
        if (n + block_size - 1) // block_size > capacity:
            n = capacity * block_size  # a prompt longer than the cache: what fits
        nkeys = min(end - start, (n + block_size - 1) // block_size)
        full = min(n // block_size, nkeys)
        limit = min(full, (n - 1) // block_size)
        nblocks = (n + block_size - 1) // block_size

        if policy == _BELADY:
            # 1. time moves to this request's first key: candidates whose stored next
            # use has passed (accessed since, without a hit) look up the following one
            for j in range(last_position, start):
                key = keys[j]
                if is_cand[key] and next_use[key] == j:
                    use = next_access[j]
                    while use < start:
                        use = next_access[use]
                    next_use[key] = use
                    _sift(hk, hv, pos, pos[key], n_heap, key,
                          _belady_value(use, released[key]))
            last_position = start

        # 2. the longest cached prefix
        h = 0
        while h < limit and cached[keys[start + h]]:
            h += 1
        hit_blocks[r] = h

        # 3. on_hit in prompt order, then revival: a hit block stops being a candidate
        # (key by key: leaving the heap or list first keeps both consistent)
        for j in range(h):
            key = keys[start + j]
            is_cand[key] = 0
            if uses_heap:
                n_heap = _heap_remove(hk, hv, pos, n_heap, key)
                if policy != _BELADY:
                    freq[key] += 1
            elif policy == _ARC:
                if cls[key] == 1:
                    _unlink(prev, nxt, ends, 0, key)
                    cls[key] = 2  # a second use: T1 -> T2
                    n1 -= 1
                    n2 += 1
                else:
                    _unlink(prev, nxt, ends, 1, key)
            elif policy == _CLOCK:
                _unlink(prev, nxt, ends, 0, key)
                bit[key] = 1
            elif policy == _LRU:
                _unlink(prev, nxt, ends, 0, key)
            # FIFO: the key stays in the caching-order list, now in use

        # 4. new blocks: uncached free ones first, then evictions
        shortfall = (nblocks - h) - (capacity - num_cached)
        cursor = ends[0]  # FIFO: keys before the cursor are in use
        for _ in range(shortfall):
            if uses_heap:
                victim = hk[0]
                n_heap = _heap_remove(hk, hv, pos, n_heap, victim)
            elif policy == _LRU:
                victim = ends[0]
                _unlink(prev, nxt, ends, 0, victim)
            elif policy == _FIFO:
                while not is_cand[cursor]:
                    cursor = nxt[cursor]
                victim = cursor
                cursor = nxt[cursor]
                _unlink(prev, nxt, ends, 0, victim)
            elif policy == _CLOCK:
                while True:
                    victim = ends[0]
                    _unlink(prev, nxt, ends, 0, victim)
                    if bit[victim] == 0:
                        break
                    bit[victim] = 0  # second chance: to the back of the ring
                    _append(prev, nxt, ends, 0, victim)
            else:  # ARC's REPLACE; the victim's key becomes the newest ghost of its class
                lst = 0 if ends[0] != _NIL and (n1 > arc_p or ends[2] == _NIL) else 1
                victim = ends[2 * lst]
                _unlink(prev, nxt, ends, lst, victim)
                _append(gprev, gnext, gends, lst, victim)
                ghost[victim] = lst + 1
                cls[victim] = 0
                if lst == 0:
                    n1 -= 1
                    b1 += 1
                else:
                    n2 -= 1
                    b2 += 1
                b1, b2 = _trim_ghosts(gprev, gnext, gends, ghost, n1, n2, b1, b2, arc_c)
            is_cand[victim] = 0
            cached[victim] = 0
            num_cached -= 1
            evictions += 1

        # 5. publish the new full blocks in prompt order
        for j in range(h, full):
            key = keys[start + j]
            if cached[key]:
                stored[j] = 0
                continue
            stored[j] = 1
            cached[key] = 1
            num_cached += 1
            if policy == _FIFO:
                _append(prev, nxt, ends, 0, key)
            elif policy == _LFU or policy == _LENGTH_AWARE:
                freq[key] = 1
            elif policy == _CLOCK:
                bit[key] = 0
            elif policy == _ARC:
                if ghost[key] == 0:
                    n1 += 1
                    arc_c = max(arc_c, n1 + n2)
                    cls[key] = 1
                else:  # a ghost: its list was too small, so p moves towards it
                    in_b1 = ghost[key] == 1
                    delta = max(1.0, b2 / b1) if in_b1 else max(1.0, b1 / b2)
                    _unlink(gprev, gnext, gends, 0 if in_b1 else 1, key)
                    if in_b1:
                        b1 -= 1
                    else:
                        b2 -= 1
                    n2 += 1
                    arc_c = max(arc_c, n1 + n2)
                    arc_p = min(float(arc_c), arc_p + delta) if in_b1 else max(0.0, arc_p - delta)
                    cls[key] = 2
                ghost[key] = 0
                b1, b2 = _trim_ghosts(gprev, gnext, gends, ghost, n1, n2, b1, b2, arc_c)

        # 6. release tail first: cached blocks become candidates, last block first
        for j in range(nblocks - 1, -1, -1):
            if j >= full or (j >= h and stored[j] == 0):
                continue
            key = keys[start + j]
            is_cand[key] = 1
            if policy == _LRU or policy == _CLOCK:
                _append(prev, nxt, ends, 0, key)
            elif policy == _ARC:
                _append(prev, nxt, ends, 0 if cls[key] == 1 else 1, key)
            elif uses_heap:
                clock += 1
                if policy == _BELADY:  # next use from now: its own access in this request
                    next_use[key] = start + j
                    released[key] = clock
                    value = _belady_value(start + j, clock)
                elif policy == _LFU:
                    value = (freq[key] << shift_freq) | clock
                else:
                    value = (freq[key] << shift_freq) | ((max_depth - depth[key]) << shift_depth) \
                        | clock
                n_heap = _heap_push(hk, hv, pos, n_heap, key, value)
            # FIFO: already in the caching-order list
    return evictions


def _kernel_arguments(trace: TraceArrays, policy: str):
    """The derived arrays a policy needs (small stand-ins for the others)."""
    nxt = trace.next_access if policy == "belady" else np.zeros(1, np.int64)
    depth = trace.depth if policy == "length_aware" else np.zeros(1, np.int64)
    return nxt, depth


def _priority_layout(trace: TraceArrays) -> tuple[int, int, int]:
    """How LFU and LengthAware pack their order into one int64 heap value.

    ``value = freq << shift_freq | (max_depth - depth) << shift_depth | release stamp``:
    a release stamp never exceeds the trace's block keys, a frequency its requests + 1,
    a depth its longest request. Returns ``(shift_freq, shift_depth, max_depth)``.
    """
    stamp_bits = int(trace.num_accesses + 1).bit_length()
    max_depth = trace.longest - 1
    depth_bits = max(1, max_depth.bit_length())
    freq_bits = int(len(trace) + 1).bit_length()
    if stamp_bits + depth_bits + freq_bits > 62:
        raise ValueError(
            f"trace {trace.name!r} is too large for the compiled engine's packed LFU order "
            f"({len(trace)} requests, {trace.num_accesses} keys)"
        )
    return stamp_bits + depth_bits, stamp_bits, max_depth


def replay_hit_blocks(trace: TraceArrays, capacity: int, policy: str) -> tuple[np.ndarray, int]:
    """Hit blocks per request and the number of evictions (checked arguments). A
    capacity past `TraceArrays.unbounded_capacity` evicts nothing, as that one does,
    and runs as that one (so any Python int does, however large)."""
    capacity = min(capacity, trace.unbounded_capacity())
    nxt, depth = _kernel_arguments(trace, policy)
    shift_freq, shift_depth, max_depth = _priority_layout(trace)
    hit_blocks = np.zeros(len(trace), dtype=np.int64)
    evictions = _replay_kernel(
        POLICY_CODES[policy], int(capacity), int(trace.block_size), trace.offsets,
        trace.keys, trace.prompt_lens, nxt, depth, int(trace.num_keys), shift_freq,
        shift_depth, max_depth, hit_blocks,
    )
    return hit_blocks, int(evictions)


def compiled_replay(
    trace: TraceArrays,
    capacity: int | None,
    policy: str = "lru",
    *,
    warmup: float = 0.0,
) -> ReplayResult:
    """Replay `trace` at `capacity` blocks (None: unbounded) with the compiled engine.

    Same arguments, rules and result as `paged_kv.sim.replay.replay`, whose per-request
    hit tokens it reproduces exactly.
    """
    if not isinstance(trace, TraceArrays):
        raise ValueError(f"trace must be a TraceArrays, got {trace!r}")
    policy = check_policy(policy)
    check_warmup(warmup)
    label = check_capacity(capacity)
    capacity = trace.unbounded_capacity() if label is None else label
    hit_blocks, evictions = replay_hit_blocks(trace, capacity, policy)
    return ReplayResult.from_hits(
        trace=trace.name, policy=policy, capacity=label, block_size=trace.block_size,
        request_ids=trace.request_ids, prompt_lens=trace.prompt_lens,
        num_blocks=np.diff(trace.offsets), hit_blocks=hit_blocks,
        evictions=evictions, warmup=warmup,
    )


def compile_engine() -> float:
    """Compile (or load from the on-disk cache) the kernel for every policy; seconds taken."""
    start = time.perf_counter()
    tiny = TraceArrays(
        name="compile", block_size=2, offsets=np.array([0, 2, 4]),
        keys=np.array([0, 1, 0, 2]), prompt_lens=np.array([4, 3]),
        request_ids=np.array([0, 1]),
    )
    for policy in POLICY_CODES:
        replay_hit_blocks(tiny, 2, policy)
    return time.perf_counter() - start


__all__ = ["NEVER", "POLICY_CODES", "compile_engine", "compiled_replay", "replay_hit_blocks"]
