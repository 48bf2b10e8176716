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

**Tiers below the GPU** (`paged_kv.sim.replay_compiled_tiers`: a host and a disk tier,
LRU or ARC each; the manager's rules are in `paged_kv.cache.tiers`): step 2 goes on past
the GPU prefix, each block served by the GPU (revived with the hits), the host or the
disk tier, up to the first block none holds; the tiers' hits are pinned (each policy
hears of them) while step 4 allocates, where write-back copies each GPU victim down;
the pins are released last block first; step 5 publishes the loaded blocks, then the
computed ones, and write-through copies each batch down (selective: every block the
prompt was served from), each from its last block; after step 6 each tier refreshes
the prompt's blocks it holds, last block first. The per-request counts are
`MOVED_COLUMNS`.

The cache is modelled by key rather than by physical block: every policy orders
candidates by stamps, counts and next uses, never by block id, and between requests
every block is free, so which physical block holds a key cannot change a hit. State is
a set of arrays indexed by interned key: linked lists (LRU and Clock in release order,
FIFO in caching order, ARC's T1/T2 and ghost lists B1/B2) and an indexed binary heap
(LFU, LengthAware, Belady), each hook O(1) or O(log n).

The kernel takes every array it is given as `paged_kv.sim.borrowed.borrowed` views, and
its per-request tier step and the tiers' functions are inlined: with both, a tiered
sweep costs 1.2-1.5 times an untiered one, without them over 2 times with ARC tiers
(`benchmarks/tiers.py`, `benchmarks/RESULTS.md`).

Importing this module imports numba; the functions are compiled on first call and
cached on disk (``cache=True``), so a later process pays only the load. Metadata
modules never import it; `paged_kv.sim.replay_sweep` does, when a sweep asks for the
compiled engine.
"""

from __future__ import annotations

import time

import numpy as np
from numba import njit

from paged_kv.sim.borrowed import borrowed
from paged_kv.sim.replay import (
    ReplayResult,
    TierSetting,
    check_capacity,
    check_policy,
    check_warmup,
)
from paged_kv.sim.replay_arrays import NEVER, TraceArrays
from paged_kv.sim.replay_compiled_tiers import (
    REFUSED,
    TIER_POLICY_CODES,
    load_counters,
    save_counters,
    tier_arrays,
    tier_counters,
    tier_holds,
    tier_pin,
    tier_refresh,
    tier_store,
    tier_unpin,
)

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


# --- placement into the lower tiers ---------------------------------------------------

#: placement policy name -> the code the kernel switches on
PLACEMENT_CODES: dict[str, int] = {"write_through": 0, "write_back": 1, "selective": 2}
_WRITE_THROUGH, _WRITE_BACK, _SELECTIVE = range(3)
#: columns of the per-request block counts a tiered replay returns
MOVED_COLUMNS = ("host_hit_blocks", "disk_hit_blocks", "stored_gpu_host", "stored_gpu_disk",
                 "stored_host_disk")
_HOST_HITS, _DISK_HITS, _GPU_HOST, _GPU_DISK, _HOST_DISK = range(5)
# where a served block came from
_FROM_GPU, _FROM_HOST, _FROM_DISK = 1, 2, 3


@njit(cache=True, inline="always")
def _lower_tiers(r, keys, start, h, served, full, source, batch, count, write_back, nodes,
                 ends, counts, tier_p, moved):
    """Everything one request does to the lower tiers, in the manager's order.

    1. the hits of blocks ``h .. served-1`` are pinned, each tier's in prompt order
       (its policy hears of each);
    2. write-back (`write_back`): ``batch[:count]`` are the keys the GPU evicted, in
       eviction order: each goes to the first lower tier if it lacks it, and the key the
       host tier evicts for it goes on to the disk tier if that lacks it;
    3. the pins are released, from the last block to the first;
    4. copy-down (write-through, selective): ``batch[:count]``, in that order, go to every
       lower tier that lacks them, the host first; a tier's victims are dropped;
    5. each tier refreshes the prompt's full blocks it holds, the last block first.

    The kernel calls this once per request, after its own work for the request: the
    GPU's allocations and publications never look at the lower tiers, and the lower
    tiers see only these steps, so the order between the two does not matter. It is
    inlined into the kernel at its one call site, as is the one store it makes."""
    has_host = counts[0, 1] > 0
    has_disk = counts[1, 1] > 0
    hc = load_counters(counts, tier_p, 0)
    dc = load_counters(counts, tier_p, 1)
    lower_hits = False
    for j in range(h, served):
        if source[j] == _FROM_HOST:
            hc = tier_pin(nodes, ends, 0, hc, keys[start + j])
            lower_hits = True
    for j in range(h, served):
        if source[j] == _FROM_DISK:
            dc = tier_pin(nodes, ends, 1, dc, keys[start + j])
            lower_hits = True
    for phase in range(2):  # 0: write-back stores, then the pins go; 1: copy-down stores
        if phase == 1 and lower_hits:
            for j in range(served - 1, h - 1, -1):
                if source[j] == _FROM_HOST:
                    tier_unpin(nodes, ends, 0, keys[start + j])
            for j in range(served - 1, h - 1, -1):
                if source[j] == _FROM_DISK:
                    tier_unpin(nodes, ends, 1, keys[start + j])
        if write_back != (phase == 0):
            continue
        for i in range(count):
            key = batch[i]
            t = 0 if has_host else 1
            column = _GPU_HOST if has_host else _GPU_DISK
            while t < 2 and (t == 0 or has_disk):
                victim = REFUSED
                if not tier_holds(nodes, t, key):
                    victim, stored = tier_store(nodes, ends, t, hc if t == 0 else dc, key)
                    if t == 0:
                        hc = stored
                    else:
                        dc = stored
                    if victim != REFUSED:
                        moved[r, column] += 1
                if write_back:  # only the host's victim goes on, to the disk
                    if t == 1 or victim == REFUSED or victim == _NIL:
                        break
                    key = victim
                    column = _HOST_DISK
                else:
                    column = _GPU_DISK
                t += 1
    if has_host:
        tier_refresh(nodes, ends, 0, keys, start, start + full)
    if has_disk:
        tier_refresh(nodes, ends, 1, keys, start, start + full)
    save_counters(counts, tier_p, 0, hc)
    save_counters(counts, tier_p, 1, dc)


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
                   depth, num_keys, shift_freq, shift_depth, max_depth, hit_blocks,
                   placement, nodes, ends_t, counts, tier_p, moved):
    """Replay every request; writes hit blocks per request (with lower tiers, also the
    per-request `MOVED_COLUMNS` counts), returns the GPU evictions. The arguments are
    the caller's, alive for the whole call, so they are used as borrowed views."""
    offsets = borrowed(offsets)
    keys = borrowed(keys)
    prompt_lens = borrowed(prompt_lens)
    next_access = borrowed(next_access)
    depth = borrowed(depth)
    hit_blocks = borrowed(hit_blocks)
    nodes = borrowed(nodes)
    ends_t = borrowed(ends_t)
    counts = borrowed(counts)
    tier_p = borrowed(tier_p)
    moved = borrowed(moved)
    num_requests = len(prompt_lens)
    has_host = counts[0, 1] > 0
    has_disk = counts[1, 1] > 0
    tiered = has_host or has_disk
    write_back = tiered and placement == _WRITE_BACK
    write_through = tiered and placement == _WRITE_THROUGH
    selective = tiered and placement == _SELECTIVE
    uses_heap = policy == _LFU or policy == _BELADY or policy == _LENGTH_AWARE
    k_heap = num_keys if uses_heap else 1
    k_list = 1 if uses_heap else num_keys
    k_arc = num_keys if policy == _ARC else 1
    k_freq = num_keys if policy == _LFU or policy == _LENGTH_AWARE else 1
    k_next = num_keys if policy == _BELADY else 1

    cached = np.zeros(num_keys, np.uint8)  # key held by a block
    is_cand = np.zeros(num_keys, np.uint8)  # ... that is an eviction candidate
    stored = np.zeros(max(1, int(np.diff(offsets).max())), np.uint8)
    source = np.zeros(len(stored) if tiered else 1, np.uint8)  # where a hit came from
    # keys copied down together: a prompt's blocks, or the GPU blocks it evicts (at most
    # its blocks, which may outnumber its keys)
    most_blocks = min(capacity, (prompt_lens.max() + block_size - 1) // block_size)
    batch = np.empty(max(len(stored), most_blocks) if tiered else 1, keys.dtype)
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

        # 2. the longest cached prefix on the GPU; with lower tiers, continued block by
        # block from the fastest tier holding each (GPU, host, disk)
        h = 0
        while h < limit and cached[keys[start + h]]:
            h += 1
        served = h
        gpu_hits = h
        if tiered:
            while served < limit:
                key = keys[start + served]
                if cached[key]:
                    source[served] = _FROM_GPU
                    gpu_hits += 1
                elif has_host and tier_holds(nodes, 0, key):
                    source[served] = _FROM_HOST
                    moved[r, _HOST_HITS] += 1
                elif has_disk and tier_holds(nodes, 1, key):
                    source[served] = _FROM_DISK
                    moved[r, _DISK_HITS] += 1
                else:
                    break
                served += 1
        hit_blocks[r] = served

        # 3. on_hit in prompt order, then revival: a hit block stops being a candidate
        # (key by key: leaving the heap or list first keeps both consistent)
        for j in range(served):
            if j >= h and source[j] != _FROM_GPU:
                continue
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
        shortfall = (nblocks - gpu_hits) - (capacity - num_cached)
        shortfall_done = 0
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
            if write_back:  # the evicted block is copied down, in this order (step 7)
                batch[shortfall_done] = victim
                shortfall_done += 1

        # 5. publish the new full blocks (loaded, then computed) in prompt order
        for j in range(h, full):
            key = keys[start + j]
            if j < served and source[j] == _FROM_GPU:
                stored[j] = 1  # revived: released with the others below
                continue
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

        # copies down, each batch from its last block to its first: write-through copies
        # the loaded blocks (published when loaded), then the computed ones (published
        # at commit); selective copies every block the prompt was served from
        count = 0
        if write_through:
            for j in range(served - 1, h - 1, -1):
                if source[j] != _FROM_GPU:
                    batch[count] = keys[start + j]
                    count += 1
            for j in range(full - 1, served - 1, -1):
                if stored[j]:
                    batch[count] = keys[start + j]
                    count += 1
        elif selective:
            for j in range(served - 1, -1, -1):
                batch[count] = keys[start + j]
                count += 1

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
        if tiered:  # 7. the lower tiers' part of the request (see `_lower_tiers`)
            _lower_tiers(r, keys, start, h, served, full, source, batch,
                         shortfall_done if write_back else count, write_back, nodes, ends_t,
                         counts, tier_p, moved)
    return evictions


def _kernel_arguments(trace: TraceArrays, policy: str):
    """The derived arrays a policy needs (small stand-ins for the others), read-only as
    the trace's own are, so that every policy calls the kernel with one signature."""
    stand_in = np.zeros(1, np.int64)
    stand_in.flags.writeable = False
    nxt = trace.next_access if policy == "belady" else stand_in
    depth = trace.depth if policy == "length_aware" else stand_in
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
    """Hit blocks per request and the number of evictions (checked arguments; any
    capacity, however large: see `replay_tiered_blocks`)."""
    hit_blocks, _, evictions = replay_tiered_blocks(trace, capacity, policy)
    return hit_blocks, evictions


def check_tiers(tiers: TierSetting) -> TierSetting:
    """`tiers` if the compiled engine runs its tier policies (`TIER_POLICY_CODES`), else
    ValueError naming the policy (the manager replay runs every online policy)."""
    for tier in ("host", "disk"):
        policy = getattr(tiers, f"{tier}_policy")
        if getattr(tiers, f"{tier}_capacity") and policy not in TIER_POLICY_CODES:
            raise ValueError(
                f"{tier}_policy {policy!r}: the compiled engine runs the {tier} tier with "
                f"{' or '.join(TIER_POLICY_CODES)}; use the manager replay "
                f"(paged_kv.sim.replay.replay, or engine='manager') for other policies"
            )
    return tiers


def replay_tiered_blocks(
    trace: TraceArrays, capacity: int, policy: str, tiers: TierSetting | None = None,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Hit blocks per request (all tiers), the per-request `MOVED_COLUMNS` counts (an
    ``R x 5`` int64 array; ``1 x 5`` of zeros without tiers) and the GPU evictions
    (checked arguments). A GPU capacity past `TraceArrays.unbounded_capacity` evicts
    nothing, as that one does, and runs as that one (so any Python int does)."""
    tiers = TierSetting() if tiers is None else tiers
    capacity = min(capacity, trace.unbounded_capacity())
    nxt, depth = _kernel_arguments(trace, policy)
    shift_freq, shift_depth, max_depth = _priority_layout(trace)
    hit_blocks = np.zeros(len(trace), dtype=np.int64)
    host, disk = tiers.host_capacity, tiers.disk_capacity
    host_code = TIER_POLICY_CODES.get(tiers.host_policy, 0)
    disk_code = TIER_POLICY_CODES.get(tiers.disk_policy, 0)
    moved = np.zeros((len(trace) if tiers.enabled else 1, len(MOVED_COLUMNS)), dtype=np.int64)
    evictions = _replay_kernel(
        POLICY_CODES[policy], int(capacity), int(trace.block_size), trace.offsets,
        trace.keys, trace.prompt_lens, nxt, depth, int(trace.num_keys), shift_freq,
        shift_depth, max_depth, hit_blocks, PLACEMENT_CODES[tiers.placement],
        *tier_arrays(trace.num_keys if tiers.enabled else 1, (host_code, disk_code)),
        *tier_counters((host_code, host), (disk_code, disk)),
        moved,
    )
    return hit_blocks, moved, int(evictions)


def tier_blocks(moved: np.ndarray) -> dict[str, np.ndarray]:
    """`paged_kv.sim.replay.TIER_COLUMNS` from `replay_tiered_blocks`'s counts (metadata
    loads never fail: a hit block is a loaded block)."""
    host, disk, gpu_host, gpu_disk, host_disk = moved.T
    return {"host_hit_blocks": host, "disk_hit_blocks": disk, "loaded_host": host,
            "loaded_disk": disk, "stored_gpu_host": gpu_host, "stored_gpu_disk": gpu_disk,
            "stored_host_disk": host_disk}


def compiled_replay(
    trace: TraceArrays,
    capacity: int | None,
    policy: str = "lru",
    *,
    warmup: float = 0.0,
    host_capacity: int = 0,
    host_policy: str = "lru",
    disk_capacity: int = 0,
    disk_policy: str = "lru",
    placement: str = "write_through",
) -> ReplayResult:
    """Replay `trace` at `capacity` GPU blocks (None: unbounded) with the compiled engine,
    with a host and/or disk tier below the GPU when their capacities are not 0.

    Same arguments, rules and result as `paged_kv.sim.replay.replay`, whose per-request
    frame it reproduces exactly; the tiers' policies are ``lru`` or ``arc`` here.
    """
    if not isinstance(trace, TraceArrays):
        raise ValueError(f"trace must be a TraceArrays, got {trace!r}")
    policy = check_policy(policy)
    check_warmup(warmup)
    label = check_capacity(capacity)
    tiers = check_tiers(TierSetting(host_capacity, host_policy, disk_capacity, disk_policy,
                                    placement))
    capacity = trace.unbounded_capacity() if label is None else label
    hit_blocks, moved, evictions = replay_tiered_blocks(trace, capacity, policy, tiers)
    return ReplayResult.from_hits(
        trace=trace.name, policy=policy, capacity=label, block_size=trace.block_size,
        request_ids=trace.request_ids, prompt_lens=trace.prompt_lens,
        num_blocks=np.diff(trace.offsets), hit_blocks=hit_blocks,
        evictions=evictions, warmup=warmup, tiers=tiers,
        tier_blocks=tier_blocks(moved) if tiers.enabled else None,
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


__all__ = ["MOVED_COLUMNS", "NEVER", "PLACEMENT_CODES", "POLICY_CODES", "check_tiers",
           "compile_engine", "compiled_replay", "replay_hit_blocks", "replay_tiered_blocks",
           "tier_blocks"]
