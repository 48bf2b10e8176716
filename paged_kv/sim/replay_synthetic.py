"""A seeded synthetic replay trace at any scale: Zipf-popular shared prefixes, multi-turn
sessions. Built straight into flat arrays (`TraceArrays`), so a million requests take
seconds and tens of megabytes.

The model (every setting is a modelling choice, not fitted to a published trace):

* ``num_prefixes`` shared prefixes (system prompts, documents), prefix ``i`` of
  ``prefix_blocks`` drawn uniformly from ``[1, max_prefix_blocks]``; a session picks
  one with probability proportional to ``1 / rank ** zipf_s``;
* sessions start as a Poisson process (``session_rate`` per second) and run ``turns``
  requests (1 + a geometric number, mean ``mean_turns``), ``think_time`` seconds apart
  on average (exponential);
* turn ``t`` of a session sends its prefix, every earlier turn's new blocks (the
  conversation so far) and ``1 + geometric`` new blocks (mean ``mean_new_blocks``): so a
  turn's prompt extends the previous turn's, as Mooncake's conversation trace does;
  the last block is partial (``1 .. block_size`` tokens);
* requests are ordered by arrival time, sessions interleaving.

Keys are prefix-chained in effect: a prefix's blocks are shared by its sessions, a
session's blocks by its turns, nothing else is shared. Generation is vectorised NumPy
with one seeded `numpy.random.Generator`.
"""

from __future__ import annotations

import numpy as np

from paged_kv.core.validate import require_int
from paged_kv.sim.replay_arrays import TraceArrays, intern_keys


def synthetic_prefix_trace(
    num_requests: int = 1_000_000,
    *,
    seed: int = 0,
    block_size: int = 512,
    num_prefixes: int = 10_000,
    zipf_s: float = 1.1,
    max_prefix_blocks: int = 16,
    mean_turns: float = 3.0,
    mean_new_blocks: float = 2.0,
    session_rate: float = 50.0,
    think_time: float = 60.0,
) -> TraceArrays:
    """`num_requests` requests of Zipf-popular prefixes and multi-turn sessions.

    Returns a `TraceArrays` named ``"synthetic-zipf"`` whose metadata records every
    setting and the seed. Same arguments, same trace (and checksum).
    """
    num_requests = require_int("num_requests", num_requests, 1)
    block_size = require_int("block_size", block_size, 1)
    num_prefixes = require_int("num_prefixes", num_prefixes, 1)
    max_prefix_blocks = require_int("max_prefix_blocks", max_prefix_blocks, 1)
    for name, value in (("zipf_s", zipf_s), ("session_rate", session_rate),
                        ("think_time", think_time)):
        if not value > 0:
            raise ValueError(f"{name} must be > 0, got {value!r}")
    for name, value in (("mean_turns", mean_turns), ("mean_new_blocks", mean_new_blocks)):
        if not value >= 1:
            raise ValueError(f"{name} must be >= 1, got {value!r}")
    rng = np.random.default_rng(seed)

    # sessions: enough to hold num_requests turns
    num_sessions = int(num_requests / mean_turns * 1.2) + 16
    turns = rng.geometric(1.0 / mean_turns, num_sessions)  # >= 1, mean mean_turns
    while turns.sum() < num_requests:  # a short draw: add sessions
        more = rng.geometric(1.0 / mean_turns, num_sessions)
        turns = np.concatenate([turns, more])
    num_sessions = len(turns)
    ranks = np.arange(1, num_prefixes + 1, dtype=np.float64)
    popularity = ranks ** -zipf_s
    prefix_of = rng.choice(num_prefixes, size=num_sessions, p=popularity / popularity.sum())
    prefix_len = rng.integers(1, max_prefix_blocks + 1, num_prefixes)
    start = np.cumsum(rng.exponential(1.0 / session_rate, num_sessions))

    # one row per turn: session, turn index, arrival, new blocks
    session = np.repeat(np.arange(num_sessions), turns)
    first_turn = np.repeat(np.cumsum(turns) - turns, turns)
    turn = np.arange(len(session)) - first_turn
    gaps = rng.exponential(think_time, len(session))
    gaps[turn == 0] = 0.0
    arrival = start[session] + _cumsum_by_group(gaps, first_turn)
    new_blocks = rng.geometric(1.0 / mean_new_blocks, len(session))
    history = _cumsum_by_group(new_blocks, first_turn)  # session blocks up to this turn

    # keep the first num_requests by arrival (stable: a session's turns stay in order)
    order = np.argsort(arrival, kind="stable")[:num_requests]
    session, history, arrival = session[order], history[order], arrival[order]
    prefix = prefix_of[session]
    lengths = prefix_len[prefix] + history
    offsets = np.zeros(num_requests + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])

    # keys: prefix p's block k is prefix_base[p] + k; session s's block k is
    # session_base[s] + k, after every prefix block
    prefix_base = np.concatenate([[0], np.cumsum(prefix_len)[:-1]])
    session_base = np.zeros(num_sessions, dtype=np.int64)
    np.maximum.at(session_base, session, history)  # most blocks any kept turn uses
    session_base = np.concatenate([[0], np.cumsum(session_base)[:-1]]) + prefix_len.sum()
    request = np.repeat(np.arange(num_requests, dtype=np.int64), lengths)
    k = np.arange(int(offsets[-1]), dtype=np.int64) - offsets[request]
    lp = prefix_len[prefix][request]
    raw = np.where(k < lp, prefix_base[prefix][request] + k,
                   session_base[session][request] + k - lp)
    del request, k, lp
    tails = rng.integers(1, block_size + 1, num_requests)
    prompt_lens = (lengths - 1) * block_size + tails
    return TraceArrays(
        name="synthetic-zipf",
        block_size=block_size,
        offsets=offsets,
        keys=intern_keys(raw),
        prompt_lens=prompt_lens,
        request_ids=np.arange(num_requests, dtype=np.int64),
        metadata={
            "source": "synthetic", "generator": "paged_kv.sim.replay_synthetic",
            "num_requests": num_requests, "seed": seed, "block_size": block_size,
            "num_prefixes": num_prefixes, "zipf_s": zipf_s,
            "max_prefix_blocks": max_prefix_blocks, "mean_turns": mean_turns,
            "mean_new_blocks": mean_new_blocks, "session_rate": session_rate,
            "think_time": think_time, "first_arrival": float(arrival[0]),
            "last_arrival": float(arrival[-1]),
        },
    )


def _cumsum_by_group(values: np.ndarray, group_start: np.ndarray) -> np.ndarray:
    """Running sums of `values` restarting at each group (rows are grouped, in order;
    `group_start[i]` is the first row of row i's group)."""
    total = np.cumsum(values)
    before = np.concatenate([[0], total])[group_start]
    return total - before
