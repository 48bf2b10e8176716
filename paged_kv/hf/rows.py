"""The sequences behind a batch's rows: admission, growth, beam reordering, sharing.

Row ``i`` of the tensors a model hands its cache is sequence ``ids[i]`` of one
`PagedKVCache`. Every row holds the same number of positions (HF's batch is a
rectangle: left padding is stored, and the model's mask hides it), so one number, the
layer's length, says where the next tokens go in every row. What beam search and
batch edits do to rows is done to sequences, never to bytes:

* reorder (beam search, each step): row ``i`` continues old row ``order[i]``; every new
  row is a `PagedKVCache.fork` of its source, then the old rows are freed. Beams share
  their common blocks; the first write into a shared partial block copies it
  (copy-on-write, inside the manager);
* identical rows (``num_return_sequences`` or beams of one prompt): after a prefill,
  rows whose K/V are equal bit for bit in every layer become forks of the first of
  them (`IdenticalRows`), so the prompt is stored once, as vLLM stores it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from paged_kv.cache import PagedKVCache
from paged_kv.core.errors import OutOfBlocksError


class Rows:
    """Sequence ids of a batch's rows in one `PagedKVCache`, and their operations."""

    def __init__(self, kv: PagedKVCache) -> None:
        #: the manager holding the sequences
        self.kv = kv
        #: row -> sequence id
        self.ids: list[int] = []
        #: row -> leading positions that held KV when the row was admitted (prefix hits)
        self.present: list[int] = []
        #: forks made for reorders, repeats and identical rows
        self.forks = 0

    def __len__(self) -> int:
        return len(self.ids)

    def _allocate_all(self, requests: Sequence[tuple[int, list | None]]) -> list[int]:
        """One sequence per ``(num_tokens, block_keys)``; all or none (the ones made
        are freed again when one does not fit)."""
        made: list[int] = []
        try:
            for num_tokens, keys in requests:
                made.append(self.kv.allocate(num_tokens, block_keys=keys))
        except OutOfBlocksError:
            for seq in made:
                self.kv.free(seq)
            raise
        return made

    def admit(self, prompts: Sequence[Sequence[int]], pads: Sequence[int],
              copies: int = 1) -> int:
        """Admit each prompt `copies` times in a row (rows ``b * copies + j``), its full
        blocks keyed by their token ids, so that the prefix cache serves what it holds
        and publishes the rest once computed. A prompt with ``pads[b]`` leading pads is
        keyed in a namespace of its own (the same tokens at other positions are other
        K/V). Returns the positions every row holds already (the smallest hit).
        """
        if self.ids:
            raise ValueError("this cache holds sequences already; admit prompts into a new "
                             "cache (PagedHFCache.new)")
        prefix = self.kv.prefix
        requests = []
        for prompt, pad in zip(prompts, pads):
            keys = None
            if prefix is not None:
                keys = prefix.token_keys(list(prompt), salt=("left pad", pad) if pad else None)
            requests.extend([(len(prompt), keys)] * copies)
        self.ids = self._allocate_all(requests)
        self.present = [self.kv.num_cached_tokens(seq) for seq in self.ids]
        return min(self.present, default=0)

    def start(self, count: int, num_tokens: int) -> None:
        """Rows for a batch the cache meets first in a forward: `count` new sequences of
        `num_tokens` tokens each (nothing cached)."""
        self.ids = self._allocate_all([(num_tokens, None)] * count)
        self.present = [0] * count

    def grow(self, num_tokens: int) -> None:
        """Make every row hold `num_tokens` positions (all rows or none:
        `OutOfBlocksError` changes nothing)."""
        have = self.kv.num_tokens(self.ids[0])
        if num_tokens > have:
            self.kv.append_many(self.ids, num_tokens - have)

    def reorder(self, order: Sequence[int]) -> None:
        """Row ``i`` continues old row ``order[i]`` (module docstring); an identity
        order changes nothing."""
        order = [int(i) for i in order]
        if order == list(range(len(self.ids))):
            return
        bad = [i for i in order if not 0 <= i < len(self.ids)]
        if bad:
            raise ValueError(f"row {bad[0]} does not exist: this cache holds "
                             f"{len(self.ids)} rows")
        old = self.ids
        self.ids = [self.kv.fork(old[i]) for i in order]
        self.present = [self.present[i] for i in order]
        self.forks += len(order)
        for seq in old:
            self.kv.free(seq)

    def share(self, leader: dict[int, int]) -> None:
        """Row ``f`` becomes a fork of row ``leader[f]`` (equal K/V), its own blocks freed."""
        for follower, first in leader.items():
            self.kv.free(self.ids[follower])
            self.ids[follower] = self.kv.fork(self.ids[first])
            self.forks += 1

    def release(self) -> None:
        """Free every row's sequence (cached prefix blocks stay evictable)."""
        for seq in self.ids:
            self.kv.free(seq)
        self.ids, self.present = [], []

    def tables(self) -> list[tuple[int, ...]]:
        """Each row's block table."""
        return [self.kv.get(seq).block_table for seq in self.ids]

    def blocks_held(self) -> int:
        """Physical blocks the rows hold, each counted once however many rows share it."""
        return len({block for table in self.tables() for block in table})

    def blocks_unshared(self) -> int:
        """Blocks the rows would hold if none were shared (the sum of their tables)."""
        return sum(len(table) for table in self.tables())


class IdenticalRows:
    """Rows of one prefill whose K/V have been equal, bit for bit, in every layer so far.

    `first` groups the rows by the first layer's K/V (each row's leader is the first
    row equal to it); `check` drops a follower whose K/V differ from its leader's in a
    later layer. After the last layer, `leaders` maps each follower to its leader.
    """

    def __init__(self) -> None:
        self._leader: dict[int, int] = {}

    def first(self, k: torch.Tensor, v: torch.Tensor) -> None:
        """Group rows by layer 0's ``k, v[batch, heads, tokens, head_dim]``."""
        self._leader = {}
        firsts: list[int] = []
        for row in range(k.shape[0]):
            for lead in firsts:
                if torch.equal(k[row], k[lead]) and torch.equal(v[row], v[lead]):
                    self._leader[row] = lead
                    break
            else:
                firsts.append(row)

    def check(self, k: torch.Tensor, v: torch.Tensor) -> None:
        """Keep only the followers equal to their leaders in this layer too."""
        self._leader = {row: lead for row, lead in self._leader.items()
                        if torch.equal(k[row], k[lead]) and torch.equal(v[row], v[lead])}

    @property
    def leaders(self) -> dict[int, int]:
        """Follower row -> leader row."""
        return dict(self._leader)
