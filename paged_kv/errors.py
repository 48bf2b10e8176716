"""Exceptions raised by paged_kv.

Bad arguments are `ValueError` (not part of this hierarchy); running out of a resource
and naming a sequence that does not exist are `PagedKVError` subclasses. Every
operation that raises leaves the cache exactly as it was.
"""


class PagedKVError(Exception):
    """Base class of paged_kv's own errors."""


class OutOfBlocksError(PagedKVError):
    """A pool has fewer free blocks than an operation needs.

    Attributes: ``pool`` ("gpu" or "host"), ``needed`` and ``available`` blocks.
    """

    def __init__(self, pool: str, needed: int, available: int, what: str = "") -> None:
        self.pool = pool
        self.needed = needed
        self.available = available
        detail = f" to {what}" if what else ""
        super().__init__(
            f"out of {pool} blocks{detail}: need {needed}, {available} available"
        )


class UnknownSequenceError(PagedKVError, KeyError):
    """A sequence id names no live sequence (never allocated, or already freed)."""

    def __init__(self, seq_id: object) -> None:
        self.seq_id = seq_id
        super().__init__(f"unknown or freed sequence {seq_id!r}")

    def __str__(self) -> str:  # KeyError would quote the whole message
        return self.args[0]


class SequenceStateError(PagedKVError):
    """An operation needs the sequence on the other pool (e.g. reading a swapped-out one)."""


class MetadataOnlyError(PagedKVError):
    """A KV read or write on a cache that stores no KV (metadata-only mode)."""


class InvariantError(PagedKVError, AssertionError):
    """`PagedKVCache.check_invariants` found the cache's state inconsistent."""
