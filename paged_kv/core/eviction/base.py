"""The eviction-policy interface: which evictable cached block is reused next.

A block is *evictable* when its reference count is 0 but it still holds a full cached
block (a prefix-cache entry): it sits in the free pool, and a later prefix hit can revive
it. When the allocator needs a block and no uncached free block is left, it asks the
policy for a victim. A policy changes only that choice; it never decides whether a block
is cached, nor touches reference counts.

Hooks, in the order a block's life calls them::

    on_cached(b, key)   b now holds a cached full block (it is in use: ref >= 1)
    on_hit(b)           a prefix lookup matched b (in use or evictable)
    add(b)              b's reference count fell to 0: it becomes an eviction candidate
    add_many(bs)        add for each, in order (the allocator's batch path)
    remove(b)           b was revived by a hit: no longer a candidate
    pop() -> b          choose a victim among the candidates and drop it
    pop_many(n)         n pops in a row (the allocator's batch path)
    clear()             every candidate is dropped (prefix cache reset)

After `pop` or `clear` the block is no longer cached, and the policy forgets it (a later
`on_cached` for the same id starts afresh). Policies see block ids and keys only: they
never import numba or touch KV bytes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Hashable, Iterable, Iterator


class EvictionPolicy(ABC):
    """Base class of eviction policies; subclasses set `name` and implement the hooks."""

    #: the name `make_policy` knows the policy by
    name: str = ""

    # -- life-cycle hooks ------------------------------------------------------------
    def on_cached(self, block_id: int, key: Hashable) -> None:  # noqa: B027 - optional hook
        """`block_id` now holds the cached block `key` (and is in use)."""

    def on_hit(self, block_id: int) -> None:  # noqa: B027 - optional hook
        """A prefix lookup matched `block_id` (called before it is revived)."""

    @abstractmethod
    def add(self, block_id: int) -> None:
        """`block_id` became evictable (its reference count fell to 0)."""

    @abstractmethod
    def remove(self, block_id: int) -> None:
        """`block_id` was revived by a hit; it is no longer an eviction candidate."""

    @abstractmethod
    def pop(self) -> int:
        """Choose a victim among the candidates, drop it and return its id.

        Raises `IndexError` when there is no candidate.
        """

    def add_many(self, block_ids: Iterable[int]) -> None:
        """`add` each block, in order (policies may override with a faster loop)."""
        for block_id in block_ids:
            self.add(block_id)

    def pop_many(self, n: int) -> list[int]:
        """`pop` `n` victims, in order (policies may override with a faster loop)."""
        return [self.pop() for _ in range(n)]

    @abstractmethod
    def clear(self) -> None:
        """Drop every candidate and all history (the prefix cache was reset)."""

    # -- inspection ------------------------------------------------------------------
    @abstractmethod
    def order(self) -> list[int]:
        """The candidates in the order they would be evicted, were nothing else to happen.

        Does not change the policy's state.
        """

    @abstractmethod
    def __len__(self) -> int:
        """Number of eviction candidates."""

    @abstractmethod
    def __contains__(self, block_id: object) -> bool:
        """Whether `block_id` is an eviction candidate."""

    def __bool__(self) -> bool:
        """Always True: a policy is an object, not a container, even with no candidates.

        Without this, `__len__` would make a policy with no candidate yet (an empty
        `BeladyPolicy` before the replay starts) falsy, and ``policy or default`` wrong.
        """
        return True

    def __iter__(self) -> Iterator[int]:
        """Iterate the candidates in eviction order."""
        return iter(self.order())

    def state(self) -> object:
        """A comparable picture of the whole internal state (tests snapshot it).

        The default is the eviction order; policies with more history extend it.
        """
        return tuple(self.order())

    def __repr__(self) -> str:
        return f"{type(self).__name__}(candidates={len(self)})"
