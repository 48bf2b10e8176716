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

from paged_kv.core.eviction.base import EvictionPolicy
from paged_kv.core.eviction.lfu import LFUPolicy

#: a block's lead is its depth shifted past every release stamp (below 2**40)
_DEPTH_SHIFT = 40


class LengthAwarePolicy(LFUPolicy):
    """LFU; among equal frequencies the deepest block goes first, then LRU.

    `LFUPolicy` with a lead of ``depth * 2**40`` on each block: the candidates sit in its
    `LazyHeap` on ``(frequency, release stamp - depth * 2**40)``, which orders equal
    frequencies by depth, then release stamp (stamps stay below 2**40). A block added
    without ever being announced by `on_cached` counts as depth 0.
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
        super().__init__()

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

    def on_cached(self, block_id: int, key: Hashable) -> None:
        """A freshly cached block has been used once; remember its depth (its lead)."""
        depth = self.depth(key)
        super().on_cached(block_id, key)
        self._lead[block_id] = depth << _DEPTH_SHIFT

    def state(self) -> object:
        """Eviction order, frequencies, depths and release stamps."""
        lead, shift = self._lead, _DEPTH_SHIFT
        return (
            tuple(self.order()),
            tuple(sorted(self._freq.items())),
            tuple(sorted((block, value >> shift) for block, value in lead.items())),
            tuple(sorted((block, rank + lead.get(block, 0))
                         for block, rank in self._released.items())),
        )


def length_aware_needs_depths() -> EvictionPolicy:
    """The registry's factory for "length_aware": it needs each key's depth."""
    raise ValueError(
        "the 'length_aware' eviction policy needs each block key's depth (its block "
        "index in the prompt): construct LengthAwarePolicy(depths) with a mapping or "
        "function key -> depth and pass the instance itself (PagedKVCache(config, "
        "policy=...)); paged_kv.sim.replay builds it from the trace"
    )
