"""Exceptions raised by paged_kv.

Bad arguments are `ValueError`; running out of a resource, naming a sequence that does
not exist, asking for something the cache was not configured with, and misusing the
simulator are `PagedKVError` subclasses (`ImmutableBlockError`, `ConfigurationError` and
the simulator's misuse errors are also subclasses of `ValueError`: they are bad
requests). Every operation that raises leaves the cache exactly as it was. The
simulator's errors derive from `SimulationError`; `paged_kv.sim.errors` adds the ones
only the scheduler raises.
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


class ImmutableBlockError(PagedKVError, ValueError):
    """A KV write into a block that must not change.

    A block published to the prefix cache is immutable (later hits read it), and so is
    a full block shared by several sequences (there is no partial block to copy).
    """


class ConfigurationError(PagedKVError, ValueError):
    """The cache was built without what an operation needs, or with parts that disagree."""


class NoHostPoolError(ConfigurationError):
    """A swap on a cache built without a host pool (``CacheConfig.num_host_blocks == 0``)."""

    def __init__(self, what: str = "swap") -> None:
        super().__init__(
            f"cannot {what}: this cache has no host pool; build it with "
            f"CacheConfig(num_host_blocks=...) > 0 to swap sequences out"
        )


class PrefixCacheInUseError(PagedKVError):
    """`reset_prefix_cache` refused: live sequences still hold cached blocks.

    Attribute ``blocks``: the cached blocks in use.
    """

    def __init__(self, blocks: list[int]) -> None:
        self.blocks = blocks
        super().__init__(
            f"cannot reset the prefix cache: {len(blocks)} cached blocks are in use by "
            f"live sequences (e.g. block {blocks[0]}); free those sequences first"
        )


class TierIOError(PagedKVError):
    """Copying blocks to or from a lower tier of the prefix cache (the disk tier's file)
    failed: the file is missing, truncated, unreadable, or a block's bytes no longer
    match the checksum taken when it was written.

    Attributes: ``tier`` ("host" or "disk"), ``slot`` (the tier slot that failed, or
    None when the whole file failed), ``done`` (how many of the operation's leading
    ``(src, dst)`` pairs were copied before it stopped) and ``reason``. The cache manager
    catches it: a failed load is a miss from that block on (the prompt is recomputed
    there), a failed store drops the entry; the tier forgets the slot either way.
    """

    def __init__(self, tier: str, slot: int | None, done: int, reason: str) -> None:
        self.tier = tier
        self.slot = slot
        self.done = done
        self.reason = reason
        where = "" if slot is None else f" slot {slot}"
        super().__init__(f"{self.operation} failed on the {tier} tier{where}: {reason}")

    operation = "tier copy"


class TierLoadError(TierIOError):
    """A load from a lower tier into GPU blocks failed (see `TierIOError`)."""

    operation = "load"


class TierStoreError(TierIOError):
    """A store into a lower tier failed (see `TierIOError`)."""

    operation = "store"


class InvariantError(PagedKVError, AssertionError):
    """`PagedKVCache.check_invariants` found the cache's state inconsistent."""


class SimulationError(PagedKVError):
    """Base class of the serving simulator's errors (`paged_kv.sim`)."""


class SchemeStateError(SimulationError, ValueError):
    """A memory scheme used out of turn (`paged_kv.sim.errors.SchemeReusedError`: given
    to a second simulation)."""


class UnservableRequestError(SimulationError, ValueError):
    """A request the simulator can never run with the scheme and limits given, not even
    alone in an empty cache.

    Raised before the run starts where it can be seen up front (too long for the pool,
    a prompt over ``max_num_batched_tokens``), or during the run when a request cannot
    be admitted into an empty cache (the watermark leaves too little room), or when a
    swap preemption found the host pool full and the recompute it fell back to needs
    more than ``max_num_batched_tokens`` in one step.
    """
