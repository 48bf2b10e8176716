"""A minimal OrderedDict LRU prefix-cache replay: the baseline the manager is timed against.

It follows the same rules as `paged_kv.sim.replay` (requests one at a time; a hit is the
longest cached prefix of full blocks, capped so the last token is computed; new blocks
take uncached free ones before evicting the least recently released; a request's blocks
are released tail first; a key already cached is not cached twice) so that both must
report the same hit rate, which `benchmarks/replay.py` checks.
"""

from collections import OrderedDict


def minimal_lru_replay(requests, capacity: int, block_size: int) -> int:
    """Total hit tokens of replaying `requests` (with block_keys) at `capacity` blocks."""
    cached: OrderedDict = OrderedDict()  # evictable cached keys, least recent first
    hit_tokens = 0
    for request in requests:
        keys = request.block_keys
        n = request.prompt_len
        full = n // block_size
        cap = (n - 1) // block_size
        h = 0
        while h < cap and keys[h] in cached:
            h += 1
        for key in keys[:h]:
            del cached[key]
        # uncached free blocks: capacity minus cached minus the h revived blocks
        shortfall = len(keys) - h - (capacity - len(cached) - h)
        for _ in range(shortfall):
            cached.popitem(last=False)
        mine = keys[:h] + tuple(k for k in keys[h:full] if k not in cached)
        own = set(mine)
        for key in reversed(keys[:full]):
            if key in own:
                cached[key] = None
                own.discard(key)
        hit_tokens += h * block_size
    return hit_tokens
