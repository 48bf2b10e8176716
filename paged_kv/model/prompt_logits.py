"""Last-token logits of prompts, kept with the prompt's last full block.

vLLM's prefix cache serves at most ``num_tokens - 1`` tokens of a prompt, rounded down
to whole blocks, because the logits after the last prompt token come out of computing
it: a prompt that is entirely cached still recomputes its whole last block. This store
instead keeps those logits with the block, so a prompt whose every block is cached
skips its prefill altogether and goes straight to its first decode step.

Where the logits live, and why. The prefix cache is the one owner of the key -> block
map, and eviction happens inside it. This store does not mirror that map: it keeps
``(salt, prompt tokens) -> logits`` and, before serving an entry, asks the cache
(`PagedKVCache.lookup_prefix`) whether every block of the prompt is cached *now*. So an
entry is served exactly while its prompt's last full block (and every block before it,
which the chained keys imply) is cached: once any of them is evicted, the entry is dead,
and it is dropped at the latest when the store outgrows the pool. Valid entries belong
to distinct cached blocks (different prompts end in blocks with different chained keys),
so after pruning the store never holds more entries than the GPU pool has blocks.

Logits depend only on the tokens and the weights, so if a prompt's blocks are evicted and
later computed and cached again, its entry is right again, and may be served.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from paged_kv.cache import PagedKVCache


class PromptLogits:
    """Logits after the last token of block-aligned prompts, served while cached."""

    def __init__(self, cache: PagedKVCache) -> None:
        if cache.prefix is None:
            raise ValueError("prompt logits need a cache with prefix caching enabled")
        self._cache = cache
        self._entries: dict[tuple[Hashable, tuple[int, ...]], np.ndarray] = {}

    def __len__(self) -> int:
        """Entries held, valid or not yet pruned."""
        return len(self._entries)

    def cached(self, prompt: Sequence[int], salt: Hashable | None = None) -> bool:
        """Whether every block of `prompt` (a whole number of blocks) is cached now."""
        n = len(prompt)
        if n == 0 or n % self._cache.block_size:
            return False
        # lookup_prefix leaves the last token of what it is asked about uncached (vLLM's
        # cap); asking about the prompt and one more token puts the cap past the prompt,
        # so the answer covers all of the prompt's own blocks. Only full blocks are keyed,
        # so the extra token's value does not matter.
        return self._cache.lookup_prefix(list(prompt) + [0], salt=salt) == n

    def put(self, prompt: Sequence[int], logits: np.ndarray,
            salt: Hashable | None = None) -> bool:
        """Keep `logits` (after the last token of `prompt`) while the prompt is cached.

        Only a prompt that fills whole blocks, all of them cached now, has a last full
        block to keep them with; returns whether they were kept.
        """
        prompt = tuple(int(t) for t in prompt)
        if not self.cached(prompt, salt):
            return False
        if len(self._entries) >= self._cache.config.num_gpu_blocks:
            self.prune()
        self._entries[(salt, prompt)] = np.array(logits, dtype=np.float64, copy=True)
        return True

    def get(self, prompt: Sequence[int], salt: Hashable | None = None) -> np.ndarray | None:
        """The logits after `prompt`, or None unless they were kept and every block of
        the prompt is still cached (an entry whose block was evicted is dropped)."""
        key = (salt, tuple(int(t) for t in prompt))
        logits = self._entries.get(key)
        if logits is None:
            return None
        if not self.cached(key[1], salt):
            del self._entries[key]
            return None
        return logits.copy()

    def prune(self) -> int:
        """Drop every entry whose prompt is no longer entirely cached; how many were."""
        dead = [key for key in self._entries if not self.cached(key[1], key[0])]
        for key in dead:
            del self._entries[key]
        return len(dead)
