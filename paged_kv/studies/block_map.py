"""Block maps: who holds each physical block of the GPU pool, snapshot after snapshot.

`block_states` reads a `PagedKVCache`'s state and gives one code per physical block:

    owner id >= 0   held by the sequences of one owner (a request; by default a sequence)
    SHARED          held by sequences of several owners (a prefix-cache hit, for example)
    EVICTABLE       free, but still holds a cached full block that a later hit can revive
    FREE            free and uncached

Distinct negative codes, one meaning each, so that no owner id can be mistaken for a
state. `block_fill` says how many of each block's ``block_size`` slots hold a token: the
unfilled slots of a held block are its internal fragmentation. `BlockMapRecorder` stacks
snapshots of both into ``[snapshot, block]`` arrays, which `paged_kv.plots.plot_block_map`
draws; `scripted_serving` is a short seeded serving loop (prefix caching, parallel
sampling with copy-on-write, eviction) that produces such a recording, and
`block_map_summary` the numbers a recording is read by (``paged-kv block-map`` prints
them).

Only the GPU pool is mapped: a swapped-out sequence holds host blocks and is skipped.
Everything here is metadata: no KV is read.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping

import numpy as np
import pandas as pd

from paged_kv.cache import PagedKVCache
from paged_kv.core.config import CacheConfig
from paged_kv.core.sequence import GPU
from paged_kv.core.validate import cdiv, require_int

#: free and uncached
FREE = -1
#: free, holding a cached full block (an eviction candidate)
EVICTABLE = -2
#: held by sequences of more than one owner
SHARED = -3


def block_states(
    cache: PagedKVCache, owners: Mapping[int, int] | None = None
) -> np.ndarray:
    """One code per GPU block (int64): an owner id, `SHARED`, `EVICTABLE` or `FREE`.

    `owners` maps a sequence id to its owner id (e.g. the request that forked it); a
    sequence it does not name owns its blocks under its own id. Raises `InvariantError`
    when the cache's state is inconsistent (a reference count that disagrees with the
    block tables holding the block, for instance): see `PagedKVCache.check_invariants`.
    """
    cache.check_invariants()
    owners = {} if owners is None else owners
    held: list[set[int]] = [set() for _ in range(cache.gpu.num_blocks)]
    for seq_id in cache.handles():
        info = cache.get(seq_id)
        if info.location == GPU:
            owner = int(owners.get(seq_id, seq_id))
            for block in info.block_table:
                held[block].add(owner)
    keys = cache.gpu.block_keys
    out = np.empty(cache.gpu.num_blocks, dtype=np.int64)
    for block, ids in enumerate(held):
        if not ids:
            out[block] = FREE if keys[block] is None else EVICTABLE
            continue
        if min(ids) < 0:
            raise ValueError(f"owner ids must be >= 0, got {sorted(ids)} for block {block}")
        out[block] = ids.pop() if len(ids) == 1 else SHARED
    return out


def block_fill(cache: PagedKVCache) -> np.ndarray:
    """Tokens stored in each GPU block (int64, ``0 .. block_size``).

    A held block counts its holders' tokens in it (holders of one block agree; the
    largest is taken); an evictable block is a cached full block; a free block holds 0.
    """
    out = np.zeros(cache.gpu.num_blocks, dtype=np.int64)
    for block, key in enumerate(cache.gpu.block_keys):
        if key is not None:
            out[block] = cache.block_size
    for block, tokens in cache.gpu_block_tokens().items():
        out[block] = tokens
    return out


class BlockMapRecorder:
    """Stacks `block_states` and `block_fill` snapshots of one cache.

    `owners` is read at every `record`, so a caller may keep adding sequences to it.
    """

    def __init__(self, cache: PagedKVCache, owners: Mapping[int, int] | None = None) -> None:
        #: the cache being recorded
        self.cache = cache
        #: sequence id -> owner id (live: read at each snapshot)
        self.owners = {} if owners is None else owners
        #: token slots per block
        self.block_size = cache.block_size
        #: one label per snapshot
        self.labels: list[str] = []
        self._states: list[np.ndarray] = []
        self._fill: list[np.ndarray] = []
        self._evictions: list[int] = []

    def record(self, label: str = "") -> np.ndarray:
        """Take a snapshot; returns its block states."""
        states = block_states(self.cache, self.owners)
        self._states.append(states)
        self._fill.append(block_fill(self.cache))
        self._evictions.append(self.cache.stats().prefix_evictions)
        self.labels.append(label or str(len(self.labels)))
        return states

    def __len__(self) -> int:
        return len(self._states)

    @property
    def states(self) -> np.ndarray:
        """``[snapshot, block]`` codes (see `block_states`)."""
        return np.stack(self._states) if self._states else np.empty((0, 0), np.int64)

    @property
    def fill(self) -> np.ndarray:
        """``[snapshot, block]`` tokens stored (see `block_fill`)."""
        return np.stack(self._fill) if self._fill else np.empty((0, 0), np.int64)

    def counts(self) -> pd.DataFrame:
        """One row per snapshot: blocks per state, unfilled slots of held blocks, evictions.

        ``evictions`` is the prefix cache's running count of evicted cached blocks.
        """
        states, fill = self.states, self.fill
        held = states >= 0
        in_use = held | (states == SHARED)
        return pd.DataFrame({
            "label": self.labels,
            "owned": held.sum(axis=1),
            "shared": (states == SHARED).sum(axis=1),
            "evictable": (states == EVICTABLE).sum(axis=1),
            "free": (states == FREE).sum(axis=1),
            "unfilled_slots": (np.where(in_use, self.block_size - fill, 0)).sum(axis=1),
            "evictions": self._evictions,
        })


#: private prompt tokens after the shared prefix (1 to 7) and tokens decoded (6 to 29)
_MAX_PRIVATE, _MAX_OUTPUT = 7, 29


def min_blocks(block_size: int, prefix_lens: tuple[int, ...], parallel_every: int) -> int:
    """The fewest blocks `scripted_serving` needs: its longest request, twice over when
    some requests fork a second sample (below that, a request could never be served)."""
    if not prefix_lens or min(prefix_lens) < 1:
        raise ValueError(f"prefix_lens must be one or more lengths >= 1, got {prefix_lens!r}")
    longest = max(prefix_lens) + _MAX_PRIVATE + _MAX_OUTPUT
    return cdiv(longest, block_size) * (2 if parallel_every else 1)


def scripted_serving(
    *,
    num_blocks: int = 96,
    block_size: int = 4,
    num_requests: int = 30,
    prefix_lens: tuple[int, ...] = (16, 10, 6),
    max_running: int = 6,
    parallel_every: int = 4,
    seed: int = 0,
    policy: str = "lru",
    progress: bool = False,
) -> tuple[BlockMapRecorder, pd.DataFrame]:
    """A short seeded serving loop over a metadata-only cache with prefix caching on.

    Each request is one of ``len(prefix_lens)`` shared system prompts (chosen with
    falling odds) plus a few private tokens, and decodes 6 to 29 tokens; every
    `parallel_every`-th request forks a second sample after its prefill (its first
    write copies the shared partial block). Arrivals are 0 to 3 steps apart (uniform).
    A step frees finished requests, admits from the queue (FCFS, at most `max_running`),
    then appends one token to every running sequence, preempting the latest-arrived
    request (freed and re-queued at the front) when a block is short. The recorder
    snapshots the pool after every step, owner = request id.

    Returns the recorder and one row per step: step, running, waiting, admitted,
    hit_tokens (prefix-cache hits of the requests admitted), preempted, cow_copies.
    `progress` shows a bar of finished requests.
    """
    for name, value, low in (("num_blocks", num_blocks, 1), ("block_size", block_size, 1),
                             ("num_requests", num_requests, 1), ("max_running", max_running, 1),
                             ("parallel_every", parallel_every, 0)):
        require_int(name, value, low)
    needed = min_blocks(block_size, prefix_lens, parallel_every)
    if num_blocks < needed:
        raise ValueError(
            f"num_blocks={num_blocks} cannot hold the longest request (with its second "
            f"sample) in blocks of {block_size} tokens; give at least {needed}"
        )
    rng = np.random.default_rng(seed)
    cache = PagedKVCache(CacheConfig(
        block_size=block_size, num_gpu_blocks=num_blocks, enable_prefix_caching=True,
        eviction_policy=policy,
    ))
    vocab = 32_000
    prefixes = [rng.integers(vocab, size=n).tolist() for n in prefix_lens]
    odds = 1.0 / np.arange(1, len(prefixes) + 1)
    odds /= odds.sum()
    arrivals = np.cumsum(rng.integers(0, 4, size=num_requests))
    prompts, outputs, samples = [], [], []
    for r in range(num_requests):
        shared = prefixes[int(rng.choice(len(prefixes), p=odds))]
        private = int(rng.integers(1, _MAX_PRIVATE + 1))
        prompts.append(shared + rng.integers(vocab, size=private).tolist())
        outputs.append(int(rng.integers(6, _MAX_OUTPUT + 1)))
        samples.append(2 if parallel_every and r % parallel_every == parallel_every - 1 else 1)

    owners: dict[int, int] = {}
    recorder = BlockMapRecorder(cache, owners)
    waiting: deque[int] = deque()
    running: dict[int, list[int]] = {}  # request -> its sequences, in admission order
    generated: dict[int, int] = {}
    rows = []
    step = arrived = done = 0
    from tqdm.auto import tqdm  # noqa: PLC0415 - here: importing it in a notebook warns

    bar = tqdm(total=num_requests, desc="block map", unit="req", disable=not progress)
    while done < num_requests:
        while arrived < num_requests and arrivals[arrived] <= step:
            waiting.append(arrived)
            arrived += 1
        for r in [r for r in running if generated[r] >= outputs[r]]:
            for seq in running.pop(r):
                cache.free(seq)
            done += 1
            bar.update()
        admitted = hits = preempted = 0
        while waiting and len(running) < max_running:
            seq = cache.try_allocate(token_ids=prompts[waiting[0]])
            if seq is None:
                break
            r = waiting.popleft()
            cache.commit(seq)  # prefilled in the step that admits it
            seqs = [seq] + [cache.fork(seq) for _ in range(samples[r] - 1)]
            for s in seqs:
                owners[s] = r
            running[r], generated[r] = seqs, 0
            admitted += 1
            hits += cache.num_cached_tokens(seq)
        for r in list(running):
            if r not in running:
                continue  # preempted during this step
            for seq in running[r]:
                while not cache.can_append(seq):
                    victim = max(running)  # the latest-arrived request: ids follow arrival
                    for s in running.pop(victim):
                        cache.free(s)
                    waiting.appendleft(victim)
                    preempted += 1
                    if victim == r:
                        break
                if r not in running:
                    break
                cache.append(seq, token_ids=[int(rng.integers(vocab))])
                cache.commit(seq)  # decoded in this step
            if r in running:
                generated[r] += 1
        recorder.record(f"step {step}")
        rows.append({
            "step": step, "running": len(running), "waiting": len(waiting),
            "admitted": admitted, "hit_tokens": hits, "preempted": preempted,
            "cow_copies": cache.stats().cow_copies,
        })
        step += 1
        if not running and not waiting and arrived < num_requests:
            step = max(step, int(arrivals[arrived]))
    bar.close()
    cache.check_invariants()
    return recorder, pd.DataFrame(rows)


def block_map_summary(recorder: BlockMapRecorder, log: pd.DataFrame) -> dict[str, object]:
    """What a `scripted_serving` run did, in the terms its block map is read by.

    `log` is the per-step frame `scripted_serving` returns beside `recorder`. Steps of
    events that never happened are None (printed as ``-``).
    """
    counts = recorder.counts()
    held = counts["owned"] + counts["shared"]
    held_slots = held * recorder.block_size
    busy = held_slots > 0

    def first_step(mask: pd.Series) -> int | None:
        hits = np.flatnonzero(mask.to_numpy())
        return int(log["step"].iloc[hits[0]]) if len(hits) else None

    unfilled = counts["unfilled_slots"][busy] / held_slots[busy]
    return {
        "steps": len(recorder),
        "most blocks held": int(held.max()) if len(held) else 0,
        "most blocks shared": int(counts["shared"].max()) if len(held) else 0,
        "prompt tokens from cache": int(log["hit_tokens"].sum()),
        "COW copies": int(log["cow_copies"].iloc[-1]) if len(log) else 0,
        "preemptions": int(log["preempted"].sum()),
        "first evictable at step": first_step(counts["evictable"] > 0),
        "first eviction at step": first_step(counts["evictions"] > 0),
        "evictions": int(counts["evictions"].iloc[-1]) if len(counts) else 0,
        "unfilled share of held slots %": round(100 * float(unfilled.mean()), 1)
        if busy.any() else 0.0,
    }
