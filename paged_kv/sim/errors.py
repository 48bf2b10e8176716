"""Errors the serving simulator raises when it is misused or finds itself inconsistent.

They join the package's hierarchy (`paged_kv.errors.PagedKVError`) so one ``except``
catches every paged_kv error; those that reject an argument also subclass `ValueError`
(what the rest of the package raises for a bad argument), so callers written against
`ValueError` keep working.
"""

from __future__ import annotations

from paged_kv.errors import PagedKVError


class SimulationError(PagedKVError):
    """Base class of the simulator's errors."""


class SchemeReusedError(SimulationError, ValueError):
    """A memory scheme that already served a simulation was given to another one.

    A scheme holds the memory state of one run; build a fresh one per simulation.
    """


class UnservableRequestError(SimulationError, ValueError):
    """A request cannot be served by the scheme and limits given, not even alone.

    Raised before the run starts where it can be seen up front (too long for the pool,
    a prompt over ``max_num_batched_tokens``), or when a request cannot be admitted
    into an empty cache (the watermark leaves too little room).
    """


class UnsupportedError(SimulationError, ValueError):
    """The scheme cannot do what the configuration asks (e.g. swap without a host pool)."""


class SchedulerStateError(SimulationError, AssertionError):
    """The simulator found its own state inconsistent: a bug, not a misuse."""
