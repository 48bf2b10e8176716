"""KV memory accounting in the vLLM paper's Fig. 2 categories.

Every slot of the KV pool is, at every step, in exactly one category:

token states
    slots that hold the KV of a token (each physical slot once, however many
    sequences share it);
reservation
    slots held by a sequence for tokens it will still generate (they will be used
    later, but not now);
internal fragmentation
    slots held by a sequence that it will never use: the part of a contiguous
    reservation beyond the request's final length, or of a paged sequence's last
    block beyond it;
external fragmentation
    free slots the request waiting at the head of the queue cannot use: for a
    contiguous scheme, the holes smaller than its reservation; zero for paged memory,
    where any free block serves any request;
free
    every other slot.

so that ``token + reservation + internal + external + free == pool size`` at every step.
The paper's shares (``20.4 / 26.8 / 38.2 / 96.3 %`` token states) are over the memory
that is not free: `summarize` reports both those shares and shares of the whole pool.

The scheduler does not touch every sequence at every step. Between two events (an
arrival, an admission, a finish, a block boundary) every running sequence gains one
token per step, so each category is linear in the step number; `MemoryLedger` keeps the
sums that define those lines and `expand_intervals` turns them into one row per step.
For a sequence holding ``alloc`` slots (its block table, or its contiguous range), of
length ``L(j) = L0 + (j - j0)`` at step ``j`` and final length ``F``::

    unused(j)  = alloc - L(j)            reservation + internal fragmentation
    internal   = max(0, alloc - F)       constant between events
    token      = used_slots - sum(unused)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import pandas as pd

#: the per-step columns, in the order the DataFrame holds them
CATEGORIES = ("token_states", "reservation", "internal_frag", "external_frag", "free")


@dataclass(slots=True)
class MemoryLedger:
    """Running sums that give every category at any step until the next event.

    ``unused(j) = unused_const - unused_slope * j``; a contribution is added when a
    sequence starts holding memory and removed, with exactly the same values, when it
    stops or its allocation changes.
    """

    #: sum over tracked sequences of (alloc - L0 + j0)
    unused_const: int = 0
    #: number of tracked sequences whose length grows each step
    unused_slope: int = 0
    #: sum of max(0, alloc - final)
    internal: int = 0
    #: slots the sequences would hold without sharing (sum of per-sequence allocations)
    logical: int = 0

    @staticmethod
    def contribution(count: int, alloc: int, length: int, step: int, final: int,
                     logical: int) -> tuple[int, int, int, int]:
        """What `count` identical sequences holding `alloc` slots, `length` tokens at
        `step` and `final` tokens at the end add to (unused_const, unused_slope,
        internal, logical)."""
        return (count * (alloc - length + step), count, count * max(0, alloc - final),
                logical)

    def add(self, entry: tuple[int, int, int, int]) -> None:
        """Add a `contribution`."""
        const, slope, internal, logical = entry
        self.unused_const += const
        self.unused_slope += slope
        self.internal += internal
        self.logical += logical

    def remove(self, entry: tuple[int, int, int, int]) -> None:
        """Take back a `contribution` added earlier."""
        const, slope, internal, logical = entry
        self.unused_const -= const
        self.unused_slope -= slope
        self.internal -= internal
        self.logical -= logical

    def unused(self, step: int) -> int:
        """Reservation plus internal fragmentation at `step`."""
        return self.unused_const - self.unused_slope * step


class Interval(NamedTuple):
    """Steps ``start .. end-1`` during which nothing but decoding happens."""

    start: int
    end: int
    #: seconds at the start of step `start`
    time: float
    #: seconds the first step takes (it may include prefills)
    first_duration: float
    #: seconds each later step takes
    duration: float
    #: tokens batched in the first step (later steps batch one per running sequence)
    first_tokens: int
    #: sequences running (decoding or prefilling) / requests waiting / groups swapped out
    running: int
    waiting: int
    swapped: int
    #: slots held (physically), external fragmentation, pool size
    used: int
    external: int
    capacity: int
    #: the ledger's sums (see `MemoryLedger`)
    unused_const: int
    unused_slope: int
    internal: int
    logical: int


def expand_intervals(intervals: list[Interval]) -> pd.DataFrame:
    """One row per step, the categories evaluated on each interval's lines."""
    if not intervals:
        return pd.DataFrame(columns=["step", "time_s", *CATEGORIES])
    table = np.array(intervals, dtype=np.float64)
    field = {name: table[:, i] for i, name in enumerate(Interval._fields)}
    for name in Interval._fields:
        if name not in ("time", "first_duration", "duration"):
            field[name] = field[name].astype(np.int64)
    lengths = field["end"] - field["start"]
    idx = np.repeat(np.arange(len(intervals)), lengths)
    offset = np.arange(len(idx)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    step = field["start"][idx] + offset
    first = offset == 0
    duration = np.where(first, field["first_duration"][idx], field["duration"][idx])
    time = field["time"][idx] + np.where(
        first, 0.0, field["first_duration"][idx] + (offset - 1) * field["duration"][idx]
    )
    unused = field["unused_const"][idx] - field["unused_slope"][idx] * step
    internal = field["internal"][idx]
    used = field["used"][idx]
    external = field["external"][idx]
    frame = pd.DataFrame(
        {
            "step": step,
            "time_s": time,
            "step_s": duration,
            "batched_tokens": np.where(first, field["first_tokens"][idx], field["running"][idx]),
            "running": field["running"][idx],
            "waiting": field["waiting"][idx],
            "swapped": field["swapped"][idx],
            "token_states": used - unused,
            "reservation": unused - internal,
            "internal_frag": internal,
            "external_frag": external,
            "free": field["capacity"][idx] - used - external,
            "used": used,
            "logical": field["logical"][idx],
        }
    )
    return frame


def summarize(steps: pd.DataFrame, *, loaded_only: bool = True) -> dict[str, float]:
    """Step-averaged shares of each category.

    ``*_pct`` are shares of the memory that is not free (the paper's Fig. 2 basis);
    ``*_pool_pct`` are shares of the whole pool. With `loaded_only`, only steps while
    some request waits count: the regime where wasted memory costs batch size (all
    steps count when no request ever waited).
    """
    rows = steps[steps["waiting"] > 0] if loaded_only else steps
    if rows.empty:
        rows = steps
    totals = {c: float(rows[c].sum()) for c in CATEGORIES}
    pool = sum(totals.values())
    busy = pool - totals["free"]
    out: dict[str, float] = {"steps": float(len(rows))}
    for c in CATEGORIES:
        if c != "free":
            out[f"{c}_pct"] = 100.0 * totals[c] / busy if busy else 0.0
        out[f"{c}_pool_pct"] = 100.0 * totals[c] / pool if pool else 0.0
    out["waste_pct"] = 100.0 - out["token_states_pct"]
    logical = float(rows["logical"].sum())
    out["sharing_saved_pct"] = 100.0 * (1.0 - rows["used"].sum() / logical) if logical else 0.0
    return out
