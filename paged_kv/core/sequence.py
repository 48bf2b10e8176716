"""Sequences inside the cache manager: the per-sequence record, which of its positions
hold written KV, the read-only view users get, and the registry that owns the records
and hands out ids."""

from __future__ import annotations

from collections.abc import Hashable, Iterable, ValuesView
from dataclasses import dataclass

from paged_kv.core.block_table import BlockTable
from paged_kv.core.errors import SequenceStateError, UnknownSequenceError
from paged_kv.core.validate import (
    is_int,
    require_int,
    require_seq_id,
    require_seq_ids,
    require_token_ids,
)

GPU = "gpu"
HOST = "host"


class WrittenExtents:
    """Which positions of one sequence hold written KV, per layer.

    Per layer, the *frontier*: positions ``0 .. frontier-1`` are all written. A write
    that starts past the frontier is kept aside until the gap is filled. The sequence's
    KV is complete up to the smallest frontier (`complete`).
    """

    __slots__ = ("frontier", "pending")

    def __init__(self, num_layers: int, written: int = 0) -> None:
        #: per layer: every position below it is written
        self.frontier = [written] * num_layers
        #: per layer: written ranges ``(start, end)`` past the frontier, or None
        self.pending: list[list[tuple[int, int]] | None] = [None] * num_layers

    def add(self, layer: int, start: int, end: int) -> None:
        """Positions ``start .. end-1`` of `layer` were written."""
        if end <= start:
            return
        frontier = self.frontier[layer]
        if start > frontier:
            pending = self.pending[layer]
            if pending is None:
                self.pending[layer] = [(start, end)]
            else:
                pending.append((start, end))
            return
        if end <= frontier:
            return
        pending = self.pending[layer]
        if pending:  # absorb the ranges the new frontier reaches, in order of start
            keep = []
            for s, e in sorted(pending):
                if s <= end:
                    end = max(end, e)
                else:
                    keep.append((s, e))
            pending = keep or None
        self.pending[layer] = pending
        self.frontier[layer] = end

    def complete(self) -> int:
        """Leading positions written in every layer."""
        return min(self.frontier)

    def copy(self) -> WrittenExtents:
        """An independent copy (fork)."""
        out = WrittenExtents(0)
        out.frontier = list(self.frontier)
        out.pending = [None if p is None else list(p) for p in self.pending]
        return out

    def state(self) -> tuple:
        """A comparable picture (snapshots)."""
        return (tuple(self.frontier), tuple(None if p is None else tuple(p) for p in self.pending))


@dataclass(slots=True)
class SequenceRecord:
    """Mutable per-sequence state the manager keeps (not part of the public API).

    ``num_cached_tokens <= num_computed_tokens <= table.num_tokens`` always holds.
    """

    #: the handle users name the sequence by
    seq_id: int
    #: logical -> physical blocks on the pool named by `location`
    table: BlockTable
    #: "gpu" or "host" (swapped out)
    location: str
    #: every token id, when the sequence was allocated with token ids; else None
    token_ids: list[int] | None
    #: prefix-cache keys of its full blocks, as far as they are known
    keys: list[Hashable]
    #: namespace of its prefix-cache keys
    salt: Hashable | None
    #: prompt tokens that were served from the prefix cache at allocation
    num_cached_tokens: int = 0
    #: leading tokens whose KV is computed (vLLM's num_computed_tokens): prefix hits,
    #: committed tokens, and with storage the positions written in every layer. Only
    #: full blocks inside this prefix are ever published to the prefix cache.
    num_computed_tokens: int = 0
    #: which positions hold written KV per layer (`WrittenExtents`);
    #: None in metadata-only mode
    written: WrittenExtents | None = None

    def fork(self, child_id: int) -> SequenceRecord:
        """A record for a child sharing every block and all computed state."""
        return SequenceRecord(  # positional: the fork + free cycle is a hot path
            child_id,
            BlockTable(self.table.block_size, self.table.blocks, self.table.num_tokens),
            self.location,
            None if self.token_ids is None else list(self.token_ids),
            list(self.keys),
            self.salt,
            self.num_cached_tokens,
            self.num_computed_tokens,
            None if self.written is None else self.written.copy(),
        )


def require_growth(
    num_tokens: object, token_ids: object, record: SequenceRecord
) -> tuple[int, list[int] | None]:
    """Check an append to `record`: ``(tokens to add, checked token ids or None)``.

    A sequence that tracks token ids must be given them (and only they say how many);
    one that does not takes counts only (default 1).
    """
    if token_ids is not None:
        token_ids = require_token_ids(token_ids)
        if num_tokens is not None and require_int("num_tokens", num_tokens) != len(token_ids):
            raise ValueError(f"num_tokens={num_tokens} disagrees with {len(token_ids)} token_ids")
        if record.token_ids is None:
            raise ValueError(
                f"sequence {record.seq_id} was allocated without token ids; append counts only"
            )
        return len(token_ids), token_ids
    if record.token_ids is not None:
        raise ValueError(f"sequence {record.seq_id} tracks token ids; pass token_ids")
    return (1 if num_tokens is None else require_int("num_tokens", num_tokens)), None


@dataclass(frozen=True)
class SequenceInfo:
    """A read-only picture of one live sequence (what `PagedKVCache.get` returns)."""

    #: the sequence's handle
    seq_id: int
    #: tokens stored
    num_tokens: int
    #: physical block ids, logical order, on the pool named by `location`
    block_table: tuple[int, ...]
    #: "gpu" or "host"
    location: str
    #: prompt tokens served from the prefix cache when it was allocated
    num_cached_tokens: int
    #: its token ids, if it tracks them
    token_ids: tuple[int, ...] | None
    #: leading tokens whose KV is computed (hits, commits, complete writes)
    num_computed_tokens: int = 0

    @property
    def num_blocks(self) -> int:
        """Blocks held."""
        return len(self.block_table)

    @classmethod
    def of(cls, record: SequenceRecord) -> SequenceInfo:
        """The view of `record` at this moment."""
        return cls(
            seq_id=record.seq_id,
            num_tokens=record.table.num_tokens,
            block_table=tuple(record.table.blocks),
            location=record.location,
            num_cached_tokens=record.num_cached_tokens,
            token_ids=None if record.token_ids is None else tuple(record.token_ids),
            num_computed_tokens=record.num_computed_tokens,
        )


class SequenceRegistry:
    """The live sequences' records by id, and the ids handed out.

    Automatic ids count up from 0, skipping ids in use; an id named by the caller is
    taken as given (and automatic ids continue after it).
    """

    def __init__(self) -> None:
        self._seqs: dict[int, SequenceRecord] = {}
        self._next_id = 0

    def get(self, seq_id: int, location: str | None = GPU) -> SequenceRecord:
        """The record of `seq_id`, which must be on `location` (None: either pool).

        Raises `ValueError` for an id that is not an integer (`require_seq_id`: ``0.0``
        and ``False`` would otherwise find sequence 0), `UnknownSequenceError` or
        `SequenceStateError`.
        """
        if type(seq_id) is not int:
            seq_id = require_seq_id(seq_id)
        record = self._seqs.get(seq_id)
        if record is None:
            raise UnknownSequenceError(seq_id)
        if location is not None and record.location != location:
            raise SequenceStateError(
                f"sequence {seq_id} is on the {record.location} pool; this needs it on the "
                f"{location} pool" + (" (swap_in first)" if location == GPU else "")
            )
        return record

    def get_many(self, seq_ids: int | Iterable[int], location: str) -> list[SequenceRecord]:
        """Records of one id or of distinct ids, all on `location` (`ValueError` if an
        id is named twice)."""
        if is_int(seq_ids):
            seq_ids = [seq_ids]
        ids = require_seq_ids(seq_ids)
        if len(set(ids)) != len(ids):
            raise ValueError("a sequence is named twice")
        return [self.get(s, location) for s in ids]

    def new_id(self, seq_id: int | None = None, name: str = "seq_id") -> int:
        """A free id: the next automatic one, or `seq_id` checked (not live, an integer
        >= 0; a `ValueError` names it as `name`)."""
        if seq_id is None:
            while self._next_id in self._seqs:
                self._next_id += 1
            return self._next_id
        seq_id = require_int(name, require_seq_id(seq_id, name))
        if seq_id in self._seqs:
            raise ValueError(f"seq_id {seq_id} is already a live sequence")
        return seq_id

    def add(self, record: SequenceRecord) -> None:
        """Register `record` under its id (from `new_id`)."""
        self._seqs[record.seq_id] = record
        if record.seq_id >= self._next_id:
            self._next_id = record.seq_id + 1

    def remove(self, seq_id: int) -> SequenceRecord:
        """Forget `seq_id` (`UnknownSequenceError` if it is not live); its record."""
        record = self._seqs.pop(require_seq_id(seq_id), None)
        if record is None:
            raise UnknownSequenceError(seq_id)
        return record

    def records(self) -> ValuesView[SequenceRecord]:
        """Every live record, in creation order."""
        return self._seqs.values()

    def ids(self) -> list[int]:
        """Ids of the live sequences, in creation order."""
        return list(self._seqs)

    def __contains__(self, seq_id: object) -> bool:
        """Whether `seq_id` is a live sequence's id (False for anything not an id)."""
        return is_int(seq_id) and int(seq_id) in self._seqs

    def __len__(self) -> int:
        return len(self._seqs)
