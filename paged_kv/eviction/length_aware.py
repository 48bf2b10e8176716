"""LengthAware: LFU that gives up the blocks lying deepest in their prompts first.

Mooncake's arXiv report (Qin et al., "Mooncake: A KVCache-centric Disaggregated
Architecture for LLM Serving", arXiv:2407.00079, §4.2 and Table 1) compares LRU, LFU
and a "LengthAwareCache", described in one sentence only: "similar to LFU but
prioritizing cache blocks occurring later in requests". The rule implemented here is
our reading of that sentence (a modelling choice, not the report's code, which is not
public):

* a block's *frequency* is LFU's: 1 when it is cached, plus one per prefix hit, kept
  while it stays cached, forgotten when it is evicted;
* its *depth* is its logical block index in the prompt (0 for a prompt's first block);
* the victim is the candidate with the lowest frequency; among equal frequencies, the
  deepest one ("occurring later in requests": a later block is useful only while every
  block before it is cached too, so it is the cheaper one to lose); among equal depths,
  the one released (`add`) longest ago, as in LFU.

The eviction-policy hooks carry block ids and keys, not positions, so the policy is told
each key's depth when it is built: ``depths`` maps a key to its depth, or is a function
returning it. Prefix-chained keys (Mooncake ``hash_ids``, this project's token keys)
name a whole prefix, so a key has one depth wherever it occurs; the replay builds the
map from the trace (`paged_kv.sim.replay`). Like Belady, the policy therefore cannot be
built from its name alone.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping

from paged_kv.eviction._heap import LazyHeap
from paged_kv.eviction.base import EvictionPolicy


class LengthAwarePolicy(EvictionPolicy):
    """LFU; among equal frequencies the deepest block goes first, then LRU.

    The candidates sit in a `LazyHeap` on ``(frequency, -depth, release stamp)``;
    entries made stale by a hit or a revival are skipped when they reach the top
    (O(log n) amortized per hook).
    """

    name = "length_aware"

    def __init__(self, depths: Mapping[Hashable, int] | Callable[[Hashable], int]) -> None:
        if isinstance(depths, Mapping):
            self._depth_of: Callable[[Hashable], int] = depths.__getitem__
        elif callable(depths):
            self._depth_of = depths
        else:
            raise ValueError(
                f"depths must map each key to its block index in the prompt (a mapping or "
                f"a function), got {depths!r}"
            )
        #: frequency and depth of every cached block this policy knows
        self._freq: dict[int, int] = {}
        self._depth: dict[int, int] = {}
        #: candidate -> release stamp (larger = released more recently)
        self._released: dict[int, int] = {}
        # (frequency, -depth, release stamp, block); live when it matches the block
        self._heap = LazyHeap()
        self._clock = 0

    def depth(self, key: Hashable) -> int:
        """The depth of `key`; ValueError when the map does not know it."""
        try:
            depth = self._depth_of(key)
        except (KeyError, IndexError) as err:
            raise ValueError(f"length_aware: no depth known for key {key!r}") from err
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 0:
            raise ValueError(f"length_aware: depth of key {key!r} must be an int >= 0, "
                             f"got {depth!r}")
        return depth

    def _entry(self, block: int) -> tuple[int, int, int, int]:
        return (self._freq[block], -self._depth.get(block, 0), self._released[block], block)

    def _push(self, block: int) -> None:
        if self._heap.push(self._entry(block), len(self._released)):
            self._heap.rebuild(self._entry(b) for b in self._released)

    def _take(self, entry: tuple[int, int, int, int]) -> bool:
        """Evict the entry's block if the entry is its current one (`LazyHeap.take`)."""
        block = entry[3]
        if block in self._released and self._entry(block) == entry:
            del self._released[block]
            del self._freq[block]
            self._depth.pop(block, None)
            return True
        return False

    def on_cached(self, block_id: int, key: Hashable) -> None:
        """A freshly cached block has been used once; remember its depth."""
        if block_id in self._released:
            raise ValueError(f"block {block_id} is an eviction candidate; it cannot be cached")
        self._depth[block_id] = self.depth(key)
        self._freq[block_id] = 1

    def on_hit(self, block_id: int) -> None:
        """One more use of `block_id` (a candidate is reordered at once)."""
        self._freq[block_id] = self._freq.get(block_id, 1) + 1
        if block_id in self._released:
            self._push(block_id)

    def add(self, block_id: int) -> None:
        """`block_id` becomes a candidate, the most recently released one."""
        if block_id in self._released:
            raise ValueError(f"block {block_id} is already an eviction candidate")
        self._freq.setdefault(block_id, 1)
        self._clock += 1
        self._released[block_id] = self._clock
        self._push(block_id)

    def remove(self, block_id: int) -> None:
        """`block_id` is no longer a candidate; it keeps its frequency (O(1))."""
        del self._released[block_id]

    def pop(self) -> int:
        """Evict by (frequency, deepest, least recently released); forget the block."""
        return self.pop_many(1)[0]

    def pop_many(self, n: int) -> list[int]:
        """`n` evictions in a row, in eviction order."""
        if n > len(self._released):
            raise IndexError(f"{n} evictions asked, {len(self._released)} candidates")
        return [entry[3] for entry in self._heap.take(n, self._take)]

    def clear(self) -> None:
        """Drop every candidate with its frequency and depth."""
        for block in self._released:
            del self._freq[block]
            self._depth.pop(block, None)
        self._released.clear()
        self._heap.clear()

    def order(self) -> list[int]:
        """Candidates in eviction order."""
        return sorted(self._released, key=self._entry)

    def __len__(self) -> int:
        return len(self._released)

    def __contains__(self, block_id: object) -> bool:
        return block_id in self._released

    def state(self) -> object:
        """Eviction order, frequencies, depths and release stamps."""
        return (
            tuple(self.order()),
            tuple(sorted(self._freq.items())),
            tuple(sorted(self._depth.items())),
            tuple(sorted(self._released.items())),
        )


def length_aware_needs_depths() -> EvictionPolicy:
    """The registry's factory for "length_aware": it needs each key's depth."""
    raise ValueError(
        "the 'length_aware' eviction policy needs each block key's depth (its block "
        "index in the prompt): construct LengthAwarePolicy(depths) with a mapping or "
        "function key -> depth and pass the instance itself (PagedKVCache(config, "
        "policy=...)); paged_kv.sim.replay builds it from the trace"
    )
