"""Errors the serving simulator raises when it is misused or finds itself inconsistent.

They join the package's hierarchy under `paged_kv.core.errors.SimulationError`, so one
``except PagedKVError`` catches every paged_kv error; those that reject an argument
also subclass `ValueError` (what the rest of the package raises for a bad argument), so
callers written against `ValueError` keep working. `SimulationError` and
`UnservableRequestError` are `paged_kv.core.errors`' own classes, re-exported here: there is
one class per error, whichever module it is imported from.
"""

from __future__ import annotations

from paged_kv.core.errors import SchemeStateError, SimulationError, UnservableRequestError


class SchemeReusedError(SchemeStateError):
    """A memory scheme that already served a simulation was given to another one.

    A scheme holds the memory state of one run; build a fresh one per simulation.
    """


class UnsupportedError(SimulationError, ValueError):
    """The scheme cannot do what the configuration asks (e.g. swap without a host pool)."""


class SchedulerStateError(SimulationError, AssertionError):
    """The simulator found its own state inconsistent: a bug, not a misuse."""


__all__ = ["SchedulerStateError", "SchemeReusedError", "SchemeStateError", "SimulationError",
           "UnservableRequestError", "UnsupportedError"]
