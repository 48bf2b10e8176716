"""ARC: adaptive replacement between recency and frequency, steered by ghost lists."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable

from paged_kv.core.eviction.base import EvictionPolicy

#: the two classes of a cached block: used once since cached, or used again since
_T1, _T2 = 1, 2


class ARCPolicy(EvictionPolicy):
    """Adaptive Replacement Cache (Megiddo and Modha, "ARC: A Self-Tuning, Low Overhead
    Replacement Cache", USENIX FAST 2003), adapted to evictable cached KV blocks.

    ARC keeps the cache as two LRU lists, T1 (pages referenced once since they entered)
    and T2 (pages referenced at least twice), plus ghost lists B1 and B2 of the keys
    recently evicted from each, and a target ``p`` for the size of T1. A miss on a B1
    ghost means T1 was too small, so ``p`` grows by ``max(1, |B2|/|B1|)``; a miss on a
    B2 ghost shrinks it by ``max(1, |B1|/|B2|)``; either way the page enters T2. To make
    room, REPLACE evicts T1's LRU page when ``|T1| > p``, T2's otherwise.

    How it maps onto this interface, where only evictable blocks (ref count 0) can be
    evicted and a block leaves the candidates when a hit revives it:

    * *class*: every cached block, in use or not, is in T1 or T2. `on_cached` puts it in
      T1, or in T2 (after adapting ``p`` as above) when its key is in a ghost list; an
      `on_hit` moves it to T2. ``|T1|`` and ``|T2|`` count all cached blocks of the class,
      in use included, as ARC counts every resident page.
    * *recency*: as in this project's LRU, a block is "used" when released: the
      candidates of each class are kept in release (`add`) order; a hit on a candidate
      also makes it the most recent of T2. In-use blocks are in no candidate list.
    * *REPLACE*: `pop` evicts the least recently released T1 candidate if there is one
      and ``|T1| > p`` or there is no T2 candidate; otherwise the least recently
      released T2 candidate. ARC's extra rule "or ``|T1| == p`` and the missed page is in
      B2" needs the page being brought in, which `pop` does not know, so it is dropped.
      The victim's key goes to the most recent end of B1 or B2 by its class.
    * *capacity* ``c``: the allocator does not tell the policy its pool size, so ``c`` is
      the largest number of blocks ever cached at once (at least `capacity` when given;
      pass the pool's size to pin it). It bounds ``p`` to ``[0, c]`` and the ghosts as
      in ARC: ``|T1| + |B1| <= c`` and ``|T1| + |T2| + |B1| + |B2| <= 2c``, trimming the
      least recent ghosts first.

    Ties do not arise: each list is strictly ordered. Hooks are O(1) (ghost trimming
    amortized).
    """

    name = "arc"

    def __init__(self, capacity: int | None = None) -> None:
        if capacity is not None and (
            isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 0
        ):
            raise ValueError(f"capacity must be a non-negative integer or None, got {capacity!r}")
        self._floor = capacity or 0
        #: class (_T1 or _T2) of every cached block this policy knows
        self._cls: dict[int, int] = {}
        #: key of every cached block announced by `on_cached`
        self._key: dict[int, Hashable] = {}
        # candidates of each class, least recently released first; values unused
        self._t1: OrderedDict[int, None] = OrderedDict()
        self._t2: OrderedDict[int, None] = OrderedDict()
        # ghost keys, least recently evicted first; values unused
        self._b1: OrderedDict[Hashable, None] = OrderedDict()
        self._b2: OrderedDict[Hashable, None] = OrderedDict()
        self._n1 = 0  # |T1|: cached blocks of class T1, in use or not
        self._n2 = 0  # |T2|
        self._p = 0.0  # target for |T1|
        self._c = self._floor  # capacity estimate

    # -- bookkeeping -----------------------------------------------------------------
    def _enter(self, block_id: int, cls: int) -> None:
        self._cls[block_id] = cls
        if cls == _T1:
            self._n1 += 1
        else:
            self._n2 += 1
        self._c = max(self._c, self._n1 + self._n2)

    def _forget(self, block_id: int) -> int:
        cls = self._cls.pop(block_id)
        if cls == _T1:
            self._n1 -= 1
        else:
            self._n2 -= 1
        return cls

    def _trim_ghosts(self) -> None:
        b1, b2, c = self._b1, self._b2, self._c
        while b1 and self._n1 + len(b1) > c:
            b1.popitem(last=False)
        while b2 and self._n1 + self._n2 + len(b1) + len(b2) > 2 * c:
            b2.popitem(last=False)

    # -- hooks -----------------------------------------------------------------------
    def on_cached(self, block_id: int, key: Hashable) -> None:
        """Enter T1, or T2 after adapting ``p`` if `key` is a ghost."""
        if block_id in self._t1 or block_id in self._t2:
            raise ValueError(f"block {block_id} is an eviction candidate; it cannot be cached")
        if block_id in self._cls:
            self._forget(block_id)
        b1, b2 = self._b1, self._b2
        cls = _T1
        if key in b1:
            delta = max(1.0, len(b2) / len(b1))
            del b1[key]
            cls = _T2
            self._enter(block_id, cls)
            self._p = min(float(self._c), self._p + delta)
        elif key in b2:
            delta = max(1.0, len(b1) / len(b2))
            del b2[key]
            cls = _T2
            self._enter(block_id, cls)
            self._p = max(0.0, self._p - delta)
        else:
            self._enter(block_id, cls)
        self._key[block_id] = key
        self._trim_ghosts()

    def on_hit(self, block_id: int) -> None:
        """A second (or later) use: `block_id` moves to T2."""
        cls = self._cls.get(block_id)
        if cls is None:
            self._enter(block_id, _T2)
        elif cls == _T1:
            self._cls[block_id] = _T2
            self._n1 -= 1
            self._n2 += 1
        if block_id in self._t1:
            del self._t1[block_id]
            self._t2[block_id] = None
        elif block_id in self._t2:
            self._t2.move_to_end(block_id)

    def add(self, block_id: int) -> None:
        """`block_id` becomes the most recent candidate of its class."""
        if block_id in self._t1 or block_id in self._t2:
            raise ValueError(f"block {block_id} is already an eviction candidate")
        cls = self._cls.get(block_id)
        if cls is None:
            cls = _T1
            self._enter(block_id, cls)
            self._trim_ghosts()
        (self._t1 if cls == _T1 else self._t2)[block_id] = None

    def remove(self, block_id: int) -> None:
        """`block_id` is no longer a candidate; it stays in its class (O(1))."""
        if self._cls.get(block_id) == _T1:
            del self._t1[block_id]
        else:
            del self._t2[block_id]

    def _take_t1(self, n1: int, has_t1: bool, has_t2: bool) -> bool:
        """REPLACE's choice: evict from T1 (else T2)."""
        return has_t1 and (n1 > self._p or not has_t2)

    def pop(self) -> int:
        """Evict by REPLACE; the victim's key becomes the newest ghost of its class."""
        t1, t2 = self._t1, self._t2
        if not t1 and not t2:
            raise IndexError("no evictable block")
        if self._take_t1(self._n1, bool(t1), bool(t2)):
            block, ghosts = t1.popitem(last=False)[0], self._b1
        else:
            block, ghosts = t2.popitem(last=False)[0], self._b2
        self._forget(block)
        if block in self._key:
            key = self._key.pop(block)
            self._b1.pop(key, None)
            self._b2.pop(key, None)
            ghosts[key] = None
            self._trim_ghosts()
        return block

    def clear(self) -> None:
        """Drop every candidate, the ghosts and ``p``; blocks in use keep their class."""
        for block in [*self._t1, *self._t2]:
            self._forget(block)
            self._key.pop(block, None)
        self._t1.clear()
        self._t2.clear()
        self._b1.clear()
        self._b2.clear()
        self._p = 0.0
        self._c = max(self._floor, self._n1 + self._n2)

    # -- inspection ------------------------------------------------------------------
    def order(self) -> list[int]:
        """Replays REPLACE on the two candidate lists: ``|T1|`` falls with each T1 pop."""
        t1, t2 = list(self._t1), list(self._t2)
        out: list[int] = []
        i = j = 0
        n1 = self._n1
        while i < len(t1) or j < len(t2):
            if self._take_t1(n1, i < len(t1), j < len(t2)):
                out.append(t1[i])
                i += 1
                n1 -= 1
            else:
                out.append(t2[j])
                j += 1
        return out

    @property
    def target(self) -> float:
        """ARC's ``p``: the target number of T1 (used-once) blocks."""
        return self._p

    @property
    def capacity(self) -> int:
        """ARC's ``c`` as estimated now."""
        return self._c

    def __len__(self) -> int:
        return len(self._t1) + len(self._t2)

    def __contains__(self, block_id: object) -> bool:
        return block_id in self._t1 or block_id in self._t2

    def state(self) -> object:
        """Candidate lists, classes and keys, ghost lists, ``p`` and ``c``."""
        return (
            tuple(self._t1),
            tuple(self._t2),
            tuple(sorted(self._cls.items())),
            tuple(sorted(self._key.items(), key=lambda item: item[0])),
            tuple(self._b1),
            tuple(self._b2),
            self._p,
            self._c,
        )
