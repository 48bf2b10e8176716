"""Mooncake's published hit rates beside ours: FAST'25 Fig. 9 in token units, and a
what-if replay in which each turn's generated output is cached too.

`fig9_table` replays a shipped Mooncake trace with LRU (the compiled engine, the same
hits as the manager) at Fig. 9's capacities, given in tokens (``blocks = tokens // 512``)
and unbounded, beside the values read from the paper's figure
(`paged_kv.sim.published.MOONCAKE_FIG9_HIT_RATE`). Fig. 9 replays "only the sequence of
requests", as `paged_kv.sim.replay` does; Table 2's "cache ratio" is its unbounded
plateau.

`with_output_blocks` builds the what-if trace used to test one explanation of the gap
on the conversation trace. The trace's ``hash_ids`` cover each request's prompt only. A
follow-up turn's prompt starts with the previous turn's prompt *and its answer*; in the
released trace the blocks covering the answer appear first in the follow-up, so a
replay of prompts alone can never hit them, while a serving system that keeps the KV it
generated (decode blocks) can. The what-if trace inserts, right after each request that
a later request continues, a *publishing* pseudo-request holding the request's full
prompt blocks followed by the continuation's blocks that its output covers
(``(prompt_len + output_len) // 512`` blocks in all). Pseudo-requests are replayed like
any request (so they take cache space and move recency) but are left out of the hit
rate. It is a model (inferred, not the paper's stated method): a request is the
continuation of the most recent earlier request whose full prompt blocks are exactly
its leading blocks, and only that request's first continuation publishes its output.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from paged_kv.sim.replay_arrays import TraceArrays
from paged_kv.sim.request import Request, Workload

#: Fig. 9's capacities in tokens (None: unbounded)
FIG9_TOKEN_CAPACITIES: tuple[int | None, ...] = (1_000_000, 4_000_000, 10_000_000,
                                                 50_000_000, None)


def with_output_blocks(workload: Workload) -> tuple[Workload, np.ndarray]:
    """The what-if workload (see the module docstring) and a mask of its real requests.

    Returns ``(workload, real)``: ``real[i]`` is True for the original requests (in their
    order), False for the publishing pseudo-requests inserted after their predecessors.
    """
    requests = list(workload)
    bs = requests[0].key_block_size
    latest: dict = {}  # last full key -> index of the latest request with those full blocks
    output_keys: dict[int, tuple] = {}
    for j, request in enumerate(requests):
        keys = request.block_keys
        full = min(request.prompt_len // bs, len(keys))
        for m in range(full, 0, -1):  # the longest earlier prompt that this one extends
            i = latest.get(keys[m - 1])
            if i is not None and min(requests[i].prompt_len // bs,
                                     len(requests[i].block_keys)) == m:
                covered = min((requests[i].prompt_len + requests[i].output_len) // bs, full)
                if covered > m and i not in output_keys:
                    output_keys[i] = keys[m:covered]
                break
        if full:
            latest[keys[full - 1]] = j
    out: list[Request] = []
    real: list[bool] = []
    for i, request in enumerate(requests):
        out.append(Request(len(out), request.arrival_time, request.prompt_len,
                           request.output_len, request.block_keys, bs))
        real.append(True)
        if i in output_keys:
            full = min(request.prompt_len // bs, len(request.block_keys))
            keys = tuple(request.block_keys[:full]) + tuple(output_keys[i])
            out.append(Request(len(out), request.arrival_time, len(keys) * bs + 1, 1,
                               keys, bs))
            real.append(False)
    metadata = {**workload.metadata, "what_if": "output blocks of continued turns cached"}
    return Workload(f"{workload.name}+outputs", out, metadata), np.array(real)


def hit_rates(trace: TraceArrays, capacities: Sequence[int | None], policy: str = "lru",
              measured: np.ndarray | None = None) -> list[float]:
    """Token hit rate at each capacity (blocks, None unbounded) over `measured` requests."""
    from paged_kv.sim.replay_compiled import replay_hit_blocks  # noqa: PLC0415

    mask = np.ones(len(trace), bool) if measured is None else measured
    rates = []
    for capacity in capacities:
        blocks = trace.unbounded_capacity() if capacity is None else capacity
        hit_blocks, _ = replay_hit_blocks(trace, blocks, policy)
        rates.append(float(hit_blocks[mask].sum() * trace.block_size
                           / trace.prompt_lens[mask].sum()))
    return rates


def fig9_table(workload: Workload, policy: str = "lru") -> pd.DataFrame:
    """Our hit rates at Fig. 9's capacities beside the paper's, with the what-if column.

    Columns: ``capacity_tokens`` (None: unbounded), ``capacity_blocks``, ``paper``
    (read from Fig. 9), ``replay`` (prompts only, as `paged_kv.sim.replay`),
    ``replay_with_outputs`` (the what-if trace of `with_output_blocks`).
    """
    from paged_kv.sim.published import MOONCAKE_FIG9_HIT_RATE  # noqa: PLC0415

    bs = workload[0].key_block_size
    blocks = [None if t is None else t // bs for t in FIG9_TOKEN_CAPACITIES]
    plain = hit_rates(TraceArrays.from_workload(workload), blocks, policy)
    what_if, real = with_output_blocks(workload)
    outputs = hit_rates(TraceArrays.from_workload(what_if), blocks, policy, real)
    paper = MOONCAKE_FIG9_HIT_RATE.get(workload.name, {})
    return pd.DataFrame({
        "capacity_tokens": pd.array(list(FIG9_TOKEN_CAPACITIES), dtype="Int64"),
        "capacity_blocks": pd.array(blocks, dtype="Int64"),
        "paper": [paper.get(t, np.nan) for t in FIG9_TOKEN_CAPACITIES],
        "replay": plain,
        "replay_with_outputs": outputs,
    })


def unbounded_variants(workload: Workload) -> pd.DataFrame:
    """The unbounded cache's hit rate under the replay's rules and under variants of
    them, each dropping or changing one rule (what a differently defined "cache ratio"
    would give). One row per variant: ``variant``, ``hit_rate``.
    """
    requests = list(workload)
    bs = requests[0].key_block_size
    seen: set = set()
    hits = dict.fromkeys(("rules", "no_cap", "partial", "any_block"), 0)
    blocks_hit = blocks_full = blocks_all = tokens = 0
    per_request = []
    for r in requests:
        n, keys = r.prompt_len, r.block_keys
        full = min(n // bs, len(keys))
        h = 0
        while h < min(full, (n - 1) // bs) and keys[h] in seen:
            h += 1
        hits["rules"] += h * bs
        free = 0
        while free < full and keys[free] in seen:
            free += 1
        hits["no_cap"] += free * bs
        prefix = 0  # partial last blocks too, at their real token count
        tokens_hit = 0
        while prefix < len(keys) and keys[prefix] in seen:
            tokens_hit += min(bs, n - prefix * bs)
            prefix += 1
        hits["partial"] += tokens_hit
        hits["any_block"] += sum(min(bs, n - i * bs) for i, k in enumerate(keys) if k in seen)
        blocks_hit += h
        blocks_full += full
        blocks_all += len(keys)
        tokens += n
        per_request.append(h * bs / n)
        seen.update(keys[:full])
    what_if, real = with_output_blocks(workload)
    outputs = hit_rates(TraceArrays.from_workload(what_if), [None], "lru", real)[0]
    rows = [
        ("the replay's rules (tokens)", hits["rules"] / tokens),
        ("no last-token cap", hits["no_cap"] / tokens),
        ("partial last blocks can hit", hits["partial"] / tokens),
        ("any block seen before hits (no prefix rule)", hits["any_block"] / tokens),
        ("hit blocks / all blocks", blocks_hit / blocks_all),
        ("hit blocks / full blocks", blocks_hit / blocks_full),
        ("mean of per-request hit rates", float(np.mean(per_request))),
        ("generated output cached too (what-if)", outputs),
    ]
    return pd.DataFrame(rows, columns=["variant", "hit_rate"])


__all__ = ["FIG9_TOKEN_CAPACITIES", "fig9_table", "hit_rates", "unbounded_variants",
           "with_output_blocks"]
