"""A replay trace as flat NumPy arrays: what the compiled engine and the sweeps consume.

A trace of ``R`` requests with ``T`` block keys in all is held as::

    offsets      int64[R + 1]   request r's keys are keys[offsets[r] : offsets[r + 1]]
    keys         int32[T]       block keys interned to 0 .. num_keys - 1, in order of
                                first appearance (equal keys, equal ids; integer keys
                                given otherwise are interned on construction)
    prompt_lens  int64[R]       prompt tokens of each request
    request_ids  int64[R]       the requests' ids (the data row, for a file)

plus ``block_size`` (tokens per key block). Derived arrays are computed once, on first
use: ``next_access[i]`` (the next index holding ``keys[i]``, or `NEVER`), which Belady
needs, and ``depth[k]`` (key ``k``'s block index in the first request that holds it),
which LengthAware needs. A million requests of ten blocks take about 60 MB.

This module never imports numba: building, checking and pickling a trace (to send it
to worker processes) costs no compilation.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from paged_kv.core.validate import cdiv, require_int
from paged_kv.sim.request import Workload

#: ``next_access`` of an access whose key is never accessed again.
NEVER = np.iinfo(np.int64).max


@dataclass(frozen=True, eq=False)
class TraceArrays:
    """One trace as flat arrays (see the module docstring); validated on construction."""

    #: trace name
    name: str
    #: tokens per key block (512 for Mooncake)
    block_size: int
    #: int64[R + 1]: request r's keys are keys[offsets[r]:offsets[r + 1]]
    offsets: np.ndarray = field(repr=False)
    #: int32[T] (int64 past 2**31 keys): interned block keys
    keys: np.ndarray = field(repr=False)
    #: int64[R]: prompt tokens per request
    prompt_lens: np.ndarray = field(repr=False)
    #: int64[R]: request ids
    request_ids: np.ndarray = field(repr=False)
    #: where the trace came from (a copy of the workload's metadata, or the generator's)
    metadata: dict[str, Any] = field(default_factory=dict, repr=False)
    _cache: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        require_int("block_size", self.block_size, 1)
        offsets = np.ascontiguousarray(self.offsets, dtype=np.int64)
        prompt_lens = np.ascontiguousarray(self.prompt_lens, dtype=np.int64)
        request_ids = np.ascontiguousarray(self.request_ids, dtype=np.int64)
        keys = np.ascontiguousarray(self.keys)
        if keys.dtype.kind not in "iu":
            raise ValueError(f"block keys must be integers, got dtype {keys.dtype}")
        if not _interned(keys):  # the kernel indexes its arrays by key: make them dense
            keys = intern_keys(keys)
        else:  # intern_keys's dtype, so the compiled engine compiles one signature
            keys = keys.astype(_key_dtype(int(keys.max()) + 1 if len(keys) else 0),
                               copy=False)
        r = len(prompt_lens)
        if r == 0:
            raise ValueError(f"trace {self.name!r} has no requests")
        if offsets.shape != (r + 1,) or offsets[0] != 0 or offsets[-1] != len(keys):
            raise ValueError(
                f"offsets must have {r + 1} entries from 0 to {len(keys)}, "
                f"got {len(offsets)} from {offsets[:1]} to {offsets[-1:]}"
            )
        counts = np.diff(offsets)
        bad = np.flatnonzero(
            (counts < 1) | (prompt_lens < 1) | (counts > cdiv(prompt_lens, self.block_size))
        )
        if len(bad):
            i = int(bad[0])
            raise ValueError(
                f"request {int(request_ids[i])}: {int(counts[i])} block keys for "
                f"{int(prompt_lens[i])} prompt tokens; a request needs 1 to "
                f"ceil(prompt_len / {self.block_size}) keys and prompt_len >= 1"
            )
        if request_ids.shape != (r,):
            raise ValueError(f"request_ids must have {r} entries, got {request_ids.shape}")
        num_keys = int(keys.max()) + 1 if len(keys) else 0
        for name, value in (("offsets", offsets), ("keys", keys),
                            ("prompt_lens", prompt_lens), ("request_ids", request_ids)):
            value.flags.writeable = False
            object.__setattr__(self, name, value)
        self._cache["num_keys"] = num_keys
        _check_distinct_within_requests(self)

    # -- construction ----------------------------------------------------------------
    @classmethod
    def from_workload(cls, workload: Workload) -> TraceArrays:
        """The arrays of a `Workload` whose requests all carry block keys of one size."""
        if not isinstance(workload, Workload):
            raise ValueError(f"expected a Workload, got {workload!r}")
        requests = workload.requests
        if not requests:
            raise ValueError(f"trace {workload.name!r} has no requests")
        sizes = {r.key_block_size for r in requests}
        if None in sizes:
            first = next(r for r in requests if r.block_keys is None)
            raise ValueError(f"request {first.request_id} has no block keys to replay")
        if len(sizes) != 1:
            raise ValueError(
                f"every request needs block keys over one common key_block_size, "
                f"got {sorted(sizes)}"
            )
        counts = np.fromiter((len(r.block_keys) for r in requests), np.int64, len(requests))
        offsets = np.zeros(len(requests) + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        raw = np.fromiter((k for r in requests for k in r.block_keys), np.int64,
                          int(offsets[-1]))
        return cls(
            name=workload.name,
            block_size=sizes.pop(),
            offsets=offsets,
            keys=intern_keys(raw),
            prompt_lens=np.fromiter((r.prompt_len for r in requests), np.int64, len(requests)),
            request_ids=np.fromiter((r.request_id for r in requests), np.int64, len(requests)),
            metadata=dict(workload.metadata),
        )

    def to_workload(self) -> Workload:
        """The trace as a `Workload` (interned keys as block keys, every request at time
        0 with one output token): what the manager replay takes."""
        from paged_kv.sim.request import Request

        keys = self.keys.tolist()
        offsets = self.offsets.tolist()
        requests = tuple(
            Request(int(rid), 0.0, int(n), 1, tuple(keys[offsets[i]:offsets[i + 1]]),
                    self.block_size)
            for i, (rid, n) in enumerate(zip(self.request_ids.tolist(),
                                             self.prompt_lens.tolist()))
        )
        return Workload(self.name, requests, dict(self.metadata))

    # -- shape -----------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.prompt_lens)

    @property
    def num_keys(self) -> int:
        """Distinct block keys."""
        return self._cache["num_keys"]

    @property
    def num_accesses(self) -> int:
        """Block keys in all requests (T)."""
        return len(self.keys)

    @property
    def longest(self) -> int:
        """Most keys in one request."""
        return int(np.diff(self.offsets).max())

    def unbounded_capacity(self) -> int:
        """A capacity at which nothing is ever evicted: every distinct key plus one request."""
        return self.num_keys + self.longest

    def head(self, n: int) -> TraceArrays:
        """The first `n` requests (keys re-interned so that they stay dense)."""
        n = min(require_int("n", n, 1), len(self))
        end = int(self.offsets[n])
        return TraceArrays(
            name=self.name,
            block_size=self.block_size,
            offsets=self.offsets[: n + 1].copy(),
            keys=intern_keys(self.keys[:end]),
            prompt_lens=self.prompt_lens[:n].copy(),
            request_ids=self.request_ids[:n].copy(),
            metadata={**self.metadata, "head": n},
        )

    # -- derived arrays --------------------------------------------------------------
    @property
    def next_access(self) -> np.ndarray:
        """int64[T]: the next index accessing the same key, or `NEVER`."""
        if "next_access" not in self._cache:
            order = np.argsort(self.keys, kind="stable")
            nxt = np.full(len(self.keys), NEVER, dtype=np.int64)
            same = self.keys[order[1:]] == self.keys[order[:-1]]
            nxt[order[:-1][same]] = order[1:][same]
            nxt.flags.writeable = False
            self._cache["next_access"] = nxt
        return self._cache["next_access"]

    @property
    def depth(self) -> np.ndarray:
        """int64[num_keys]: each key's block index in the first request holding it."""
        if "depth" not in self._cache:
            _, first = np.unique(self.keys, return_index=True)  # ids are 0..K-1, sorted
            request = np.searchsorted(self.offsets, first, side="right") - 1
            depth = (first - self.offsets[request]).astype(np.int64)
            depth.flags.writeable = False
            self._cache["depth"] = depth
        return self._cache["depth"]

    @property
    def checksum(self) -> str:
        """SHA-256 of the block size, offsets, keys and prompt lengths (hex, 16 digits).

        Keys are interned in order of first appearance, so two copies of one trace have
        the same checksum whatever their original key values.
        """
        if "checksum" not in self._cache:
            digest = hashlib.sha256()
            digest.update(np.int64(self.block_size).tobytes())
            digest.update(self.offsets.tobytes())
            digest.update(self.keys.astype(np.int64, copy=False).tobytes())
            digest.update(self.prompt_lens.tobytes())
            self._cache["checksum"] = digest.hexdigest()[:16]
        return self._cache["checksum"]

    def nbytes(self) -> int:
        """Bytes held by the arrays, derived ones included once computed."""
        arrays = [self.offsets, self.keys, self.prompt_lens, self.request_ids]
        arrays += [v for v in self._cache.values() if isinstance(v, np.ndarray)]
        return sum(a.nbytes for a in arrays)

    def __getstate__(self) -> dict[str, Any]:
        # derived arrays are cheap to recompute; leave them out of what workers receive
        state = dict(self.__dict__)
        state["_cache"] = {k: v for k, v in self._cache.items() if not isinstance(v, np.ndarray)}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)


def intern_keys(raw: np.ndarray) -> np.ndarray:
    """Integer keys -> dense ids ``0 .. K-1`` in order of first appearance.

    int32 when fewer than 2**31 distinct keys, else int64.
    """
    raw = np.asarray(raw)
    if raw.size == 0:
        return np.zeros(0, dtype=np.int32)
    if raw.dtype.kind not in "iu":
        raise ValueError(f"block keys must be integers, got dtype {raw.dtype}")
    _, first, inverse = np.unique(raw, return_index=True, return_inverse=True)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(first))
    return rank[inverse.ravel()].astype(_key_dtype(len(first)))


def _key_dtype(num_keys: int) -> type:
    """int32 for fewer than 2**31 distinct keys, else int64."""
    return np.int32 if num_keys < 2**31 else np.int64


def _interned(keys: np.ndarray) -> bool:
    """Whether `keys` are already dense ids in order of first appearance (each key at
    most one above every key before it, the first one 0)."""
    if not len(keys):
        return True
    keys = keys.astype(np.int64, copy=False)
    if keys[0] != 0:
        return False
    seen = np.maximum.accumulate(keys)
    return bool(np.all(keys[1:] <= seen[:-1] + 1))


def _check_distinct_within_requests(trace: TraceArrays) -> None:
    """ValueError naming the first request that repeats a key (chained keys never do)."""
    request = np.repeat(np.arange(len(trace), dtype=np.int64), np.diff(trace.offsets))
    order = np.lexsort((trace.keys, request))
    keys, reqs = trace.keys[order], request[order]
    dup = np.flatnonzero((keys[1:] == keys[:-1]) & (reqs[1:] == reqs[:-1]))
    if len(dup):
        r = int(reqs[dup[0]])
        raise ValueError(
            f"request {int(trace.request_ids[r])} repeats a block key: prefix-chained "
            f"keys name distinct blocks"
        )


def as_trace_arrays(trace: str | Workload | TraceArrays) -> TraceArrays:
    """A `TraceArrays` for a shipped trace name, a trace file's path, or a `Workload`."""
    if isinstance(trace, TraceArrays):
        return trace
    if isinstance(trace, Workload):
        return TraceArrays.from_workload(trace)
    from paged_kv.sim.traces import load_trace

    return TraceArrays.from_workload(load_trace(trace))
