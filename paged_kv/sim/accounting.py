"""KV memory accounting in the vLLM paper's Fig. 2 categories.

Every slot of the KV pool is, at every step, in exactly one category:

token states
    slots that hold the KV of a token (each physical slot once, however many
    sequences share it);
reservation
    slots held by a sequence for tokens it will still generate (they will be used
    later, but not now);
internal fragmentation
    slots reserved for a sequence that it will never use: the part of a contiguous
    reservation beyond the request's final length, or of a paged sequence's last
    block beyond it;
external fragmentation
    slots the allocator loses: a buddy allocator's rounding of each reservation up to
    a power of two, plus the free slots the request waiting at the head of the queue
    cannot use (pieces smaller than its reservation); zero for paged memory, where any
    free block serves any request;
free
    every other slot.

so that ``token + reservation + internal + external + free == pool size`` at every step.
The paper's Fig. 2 bars are shares of the whole pool: its Orca (Max) bar's 8.9% is the
1,392 of 15,728 slots that seven 2,048-slot chunks leave, and each Orca bar sums to
100%, so its last category, "External frag. & Others", holds our external
fragmentation *and* the free slots. `summarize` reports shares of the whole pool
(``*_pct``, with ``external_and_others_pct``) and of the memory in use
(``*_used_pct``).

The scheduler does not touch every sequence at every step. Between two events (an
arrival, an admission, a finish, a block boundary) every running sequence gains one
token per step, so each category is linear in the step number; `MemoryLedger` keeps the
sums that define those lines and `expand_intervals` turns them into one row per step.
For a sequence holding ``alloc`` slots (its block table, or its contiguous range), of
length ``L(j) = L0 + (j - j0)`` at step ``j`` and final length ``F``::

    unused(j)  = alloc - L(j)            reservation + internal fragmentation
    internal   = max(0, alloc - F)       constant between events
    token      = used_slots - sum(unused)
    tokens(j)  = sum(L(j))               KV the step's attention reads (every sequence)
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
    #: sum over running sequences of (L0 - j0)
    tokens_const: int = 0
    #: running sequences
    tokens_slope: int = 0

    @staticmethod
    def contribution(count: int, alloc: int, length: int, step: int, final: int,
                     logical: int, seqs: int) -> tuple[int, int, int, int, int, int]:
        """What a group of `seqs` sequences, `count` of them with private memory of
        `alloc` slots, `length` tokens at `step` and `final` tokens at the end, adds to
        (unused_const, unused_slope, internal, logical, tokens_const, tokens_slope)."""
        return (count * (alloc - length + step), count, count * max(0, alloc - final),
                logical, seqs * (length - step), seqs)

    def add(self, entry: tuple[int, int, int, int, int, int]) -> None:
        """Add a `contribution`."""
        const, slope, internal, logical, tokens, seqs = entry
        self.unused_const += const
        self.unused_slope += slope
        self.internal += internal
        self.logical += logical
        self.tokens_const += tokens
        self.tokens_slope += seqs

    def remove(self, entry: tuple[int, int, int, int, int, int]) -> None:
        """Take back a `contribution` added earlier."""
        const, slope, internal, logical, tokens, seqs = entry
        self.unused_const -= const
        self.unused_slope -= slope
        self.internal -= internal
        self.logical -= logical
        self.tokens_const -= tokens
        self.tokens_slope -= seqs

    def unused(self, step: int) -> int:
        """Reservation plus internal fragmentation at `step`."""
        return self.unused_const - self.unused_slope * step

    def tokens(self, step: int) -> int:
        """Tokens the running sequences hold after `step` (each sequence counted)."""
        return self.tokens_const + self.tokens_slope * step


class Interval(NamedTuple):
    """Steps ``start .. end-1`` during which nothing but decoding happens."""

    start: int
    end: int
    #: seconds at the start of step `start`
    time: float
    #: seconds the first step takes (it may include prefills and swaps)
    first_duration: float
    #: seconds the second step takes; each later one takes `slope` more than the last
    duration: float
    slope: float
    #: tokens batched in the first step (later steps batch one per running sequence)
    first_tokens: int
    #: sequences running (decoding or prefilling) / requests running / requests
    #: waiting / groups swapped out
    running: int
    requests: int
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
        if name not in ("time", "first_duration", "duration", "slope"):
            field[name] = field[name].astype(np.int64)
    lengths = field["end"] - field["start"]
    idx = np.repeat(np.arange(len(intervals)), lengths)
    offset = np.arange(len(idx)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    step = field["start"][idx] + offset
    first = offset == 0
    later = np.maximum(offset - 1, 0)  # later steps before this one in the interval
    base, slope = field["duration"][idx], field["slope"][idx]
    duration = np.where(first, field["first_duration"][idx], base + slope * later)
    time = field["time"][idx] + np.where(
        first, 0.0,
        field["first_duration"][idx] + later * base + slope * later * (later - 1) / 2,
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
            "requests": field["requests"][idx],
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


#: what `summarize` averages over
AVERAGED_OVER = ("arrivals", "run", "loaded")


def summarize(steps: pd.DataFrame, *, over: str = "arrivals", weight: str = "time",
              until: float | None = None) -> dict[str, float]:
    """Average shares of each category, and the average batch.

    ``over="arrivals"``: the steps that start before `until` (the last arrival: while
    the workload's requests arrive, the paper's "during the experiment"); ``"run"``:
    every step; ``"loaded"``: the steps while some request waits. ``weight="time"``
    weighs each step by its duration (a time average); ``"steps"`` counts steps.

    ``{category}_pct`` are shares of the whole pool (the paper's Fig. 2 basis);
    ``external_and_others_pct`` is external fragmentation plus free slots, the paper's
    last category. ``{category}_used_pct`` are shares of the memory that is not free,
    and ``waste_pct`` is the share of it that holds no token. ``mean_running`` and
    ``mean_requests`` average the running sequences and requests (the paper's Fig. 13
    "average number of batched requests"); ``sharing_saved_pct`` is
    ``1 - physical / logical`` slots held.
    """
    if over not in AVERAGED_OVER:
        raise ValueError(f"over must be one of {AVERAGED_OVER}, got {over!r}")
    if weight not in ("time", "steps"):
        raise ValueError(f"weight must be 'time' or 'steps', got {weight!r}")
    if over == "arrivals" and until is not None:
        rows = steps[steps["time_s"] < until]
    elif over == "loaded":
        rows = steps[steps["waiting"] > 0]
    else:
        rows = steps
    if rows.empty:
        rows = steps
    w = rows["step_s"].to_numpy(dtype=np.float64) if weight == "time" else \
        np.ones(len(rows))

    def total(column: str) -> float:
        return float(np.dot(w, rows[column].to_numpy(dtype=np.float64)))

    totals = {c: total(c) for c in CATEGORIES}
    pool = sum(totals.values())
    busy = pool - totals["free"]
    out: dict[str, float] = {"steps": float(len(rows)), "seconds": float(rows["step_s"].sum())}
    for c in CATEGORIES:
        out[f"{c}_pct"] = 100.0 * totals[c] / pool if pool else 0.0
        if c != "free":
            out[f"{c}_used_pct"] = 100.0 * totals[c] / busy if busy else 0.0
    out["external_and_others_pct"] = out["external_frag_pct"] + out["free_pct"]
    out["waste_pct"] = 100.0 - out["token_states_used_pct"]
    weights = float(w.sum())
    out["mean_running"] = total("running") / weights if weights else 0.0
    out["mean_requests"] = total("requests") / weights if weights else 0.0
    logical = total("logical")
    out["sharing_saved_pct"] = 100.0 * (1.0 - total("used") / logical) if logical else 0.0
    return out
