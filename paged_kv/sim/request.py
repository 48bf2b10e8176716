"""The request record and the workload that holds a run's requests.

A `Request` is what a serving system sees arrive: when, how long its prompt is, how many
tokens it will generate, and, when a trace provides them, the prefix-chained keys of its
prompt blocks. A `Workload` is an arrival-ordered, immutable sequence of requests plus a
metadata dict that says where they came from (trace file and licence, or generator and
its parameters), so a study can always print the provenance of its input.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from paged_kv.core.validate import cdiv, is_int


@dataclass(frozen=True, slots=True)
class Request:
    """One inference request.

    Lengths are in tokens and both at least 1: a request with no prompt or no output
    token is not a request a KV cache ever sees. When `block_keys` is given it describes
    the prompt's blocks of `key_block_size` tokens, so it can hold at most
    ``ceil(prompt_len / key_block_size)`` keys (Mooncake traces hold exactly that many,
    the last one covering a partial block).

    Raises `ValueError` naming the field and the value on any invalid field.
    """

    #: identifier unique within its workload; for a trace, the 0-based row in the file.
    request_id: int
    #: when the request arrives, in seconds from the start of the workload (>= 0).
    arrival_time: float
    #: prompt (prefill) tokens, >= 1.
    prompt_len: int
    #: tokens the request generates (decode steps), >= 1.
    output_len: int
    #: precomputed prefix-chained keys of the prompt's blocks, in order, or None when the
    #: source has no prefix information. Two requests whose keys agree on ``[0..k]``
    #: share their first ``k + 1`` blocks of prompt (Mooncake ``hash_ids``).
    block_keys: tuple[int, ...] | None = None
    #: tokens per block the keys were computed over (512 for Mooncake); None exactly
    #: when `block_keys` is None. It need not equal the cache's ``block_size``.
    key_block_size: int | None = None

    def __post_init__(self) -> None:
        # Fast path for the common, already-normalised case (loaders build 100k of these).
        if (
            type(self.request_id) is int
            and type(self.prompt_len) is int
            and type(self.output_len) is int
            and type(self.arrival_time) is float
            and self.request_id >= 0
            and self.prompt_len >= 1
            and self.output_len >= 1
            and 0.0 <= self.arrival_time < math.inf
            and self.block_keys is None
            and self.key_block_size is None
        ):
            return
        if not is_int(self.request_id) or self.request_id < 0:
            raise ValueError(
                f"Request.request_id must be a non-negative integer, got {self.request_id!r}"
            )
        object.__setattr__(self, "request_id", int(self.request_id))
        time = self.arrival_time
        if (
            isinstance(time, bool)
            or not isinstance(time, (int, float, np.integer, np.floating))
            or not math.isfinite(time)
            or time < 0
        ):
            raise ValueError(
                f"Request.arrival_time must be a finite number of seconds >= 0, got {time!r}"
            )
        object.__setattr__(self, "arrival_time", float(time))
        for name in ("prompt_len", "output_len"):
            value = getattr(self, name)
            if not is_int(value) or value < 1:
                raise ValueError(f"Request.{name} must be an integer >= 1, got {value!r}")
            object.__setattr__(self, name, int(value))
        self._check_block_keys()

    def _check_block_keys(self) -> None:
        keys, size = self.block_keys, self.key_block_size
        if keys is None:
            if size is not None:
                raise ValueError(
                    f"Request.key_block_size must be None when block_keys is None, "
                    f"got {size!r}"
                )
            return
        if not is_int(size) or size < 1:
            raise ValueError(
                f"Request.key_block_size must be a positive integer when block_keys is "
                f"given, got {size!r}"
            )
        object.__setattr__(self, "key_block_size", int(size))
        if isinstance(keys, (str, bytes)) or not isinstance(keys, Sequence):
            raise ValueError(
                f"Request.block_keys must be a sequence of integers or None, got {keys!r}"
            )
        if not all(type(k) is int for k in keys):  # fast path: JSON gives plain ints
            bad = [k for k in keys if not is_int(k)]
            if bad:
                raise ValueError(
                    f"Request.block_keys must hold integers, got {bad[0]!r} "
                    f"in request {self.request_id}"
                )
            keys = tuple(int(k) for k in keys)
        object.__setattr__(self, "block_keys", tuple(keys))
        max_keys = cdiv(self.prompt_len, size)
        if not 1 <= len(keys) <= max_keys:
            raise ValueError(
                f"Request.block_keys must hold 1 to ceil(prompt_len / key_block_size) = "
                f"ceil({self.prompt_len} / {size}) = {max_keys} keys, got {len(keys)} "
                f"in request {self.request_id}"
            )

    @property
    def total_len(self) -> int:
        """Tokens the sequence holds when it finishes: ``prompt_len + output_len``."""
        return self.prompt_len + self.output_len


@dataclass(frozen=True, repr=False)
class Workload:
    """A named, arrival-ordered, immutable sequence of requests with provenance.

    Invariants (checked on construction, `ValueError` otherwise): request ids are
    unique and arrival times never decrease along the sequence. Transformations
    (`head`, `filter_max_len`, `with_arrivals`) return new workloads and keep each
    request's `request_id`, so a request can always be traced back to its source row.
    """

    #: short name of the source, e.g. ``"mooncake-conversation"`` or ``"sharegpt-like"``.
    name: str
    #: the requests in arrival order (a list is accepted and stored as a tuple).
    requests: tuple[Request, ...]
    #: provenance and parameters: source file, licence, generator settings, filters.
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"Workload.name must be a non-empty string, got {self.name!r}")
        requests = tuple(self.requests)
        for request in requests:
            if not isinstance(request, Request):
                raise ValueError(f"Workload.requests must hold Request objects, got {request!r}")
        ids = {r.request_id for r in requests}
        if len(ids) != len(requests):
            raise ValueError(
                f"Workload.requests must have unique request_id values: "
                f"{len(requests) - len(ids)} duplicates in workload {self.name!r}"
            )
        for i in range(1, len(requests)):
            if requests[i].arrival_time < requests[i - 1].arrival_time:
                raise ValueError(
                    f"Workload.requests must be in arrival order: request at position {i} "
                    f"arrives at {requests[i].arrival_time} s, before the previous one at "
                    f"{requests[i - 1].arrival_time} s"
                )
        if not isinstance(self.metadata, Mapping):
            raise ValueError(f"Workload.metadata must be a mapping, got {self.metadata!r}")
        object.__setattr__(self, "requests", requests)
        object.__setattr__(self, "metadata", dict(self.metadata))

    @classmethod
    def from_arrays(
        cls,
        name: str,
        arrival_times: Sequence[float] | np.ndarray,
        prompt_lens: Sequence[int] | np.ndarray,
        output_lens: Sequence[int] | np.ndarray,
        metadata: Mapping[str, Any] | None = None,
    ) -> Workload:
        """A workload of requests ``0 .. n-1`` from three equally long columns."""
        columns = [np.asarray(c).tolist() for c in (arrival_times, prompt_lens, output_lens)]
        if len({len(c) for c in columns}) != 1:
            raise ValueError(
                f"Workload.from_arrays: columns must have equal lengths, got "
                f"{[len(c) for c in columns]}"
            )
        requests = tuple(
            Request(i, t, p, o) for i, (t, p, o) in enumerate(zip(*columns, strict=True))
        )
        return cls(name, requests, dict(metadata or {}))

    def __repr__(self) -> str:  # a workload can hold 100k requests: summarise
        return (
            f"Workload(name={self.name!r}, {len(self.requests)} requests, "
            f"metadata keys {sorted(self.metadata)})"
        )

    def __len__(self) -> int:
        return len(self.requests)

    def __iter__(self) -> Iterator[Request]:
        return iter(self.requests)

    def __getitem__(self, index: int) -> Request:
        return self.requests[index]

    def to_dataframe(self) -> pd.DataFrame:
        """One row per request: ``request_id, arrival_time, prompt_len, output_len,
        total_len, block_keys, key_block_size``.

        `block_keys` is an object column of tuples (None where absent) and
        `key_block_size` a nullable integer column.
        """
        reqs = self.requests
        return pd.DataFrame(
            {
                "request_id": np.array([r.request_id for r in reqs], dtype=np.int64),
                "arrival_time": np.array([r.arrival_time for r in reqs], dtype=np.float64),
                "prompt_len": np.array([r.prompt_len for r in reqs], dtype=np.int64),
                "output_len": np.array([r.output_len for r in reqs], dtype=np.int64),
                "total_len": np.array([r.total_len for r in reqs], dtype=np.int64),
                "block_keys": pd.Series([r.block_keys for r in reqs], dtype=object),
                "key_block_size": pd.array([r.key_block_size for r in reqs], dtype="Int64"),
            }
        )

    def head(self, n: int) -> Workload:
        """The first `n` requests (all of them when `n` >= len); metadata records ``head``."""
        if not is_int(n) or n < 0:
            raise ValueError(f"Workload.head: n must be a non-negative integer, got {n!r}")
        return Workload(self.name, self.requests[:n], {**self.metadata, "head": int(n)})

    def filter_max_len(self, max_len: int) -> Workload:
        """Drop requests whose ``prompt_len + output_len`` exceeds `max_len`.

        A model with a context of `max_len` tokens cannot serve them whole. Metadata
        records ``max_len`` (the tightest applied so far) and ``num_dropped_max_len``
        (requests dropped by all such filters together).
        """
        if not is_int(max_len) or max_len < 2:
            raise ValueError(
                f"Workload.filter_max_len: max_len must be an integer >= 2, got {max_len!r}"
            )
        kept = tuple(r for r in self.requests if r.total_len <= max_len)
        meta = dict(self.metadata)
        meta["max_len"] = min(int(max_len), meta.get("max_len", max_len))
        meta["num_dropped_max_len"] = (
            meta.get("num_dropped_max_len", 0) + len(self.requests) - len(kept)
        )
        return Workload(self.name, kept, meta)

    def with_arrivals(self, times: Iterable[float]) -> Workload:
        """A copy whose i-th request arrives at ``times[i]`` seconds.

        `times` must have one non-negative, non-decreasing entry per request; lengths,
        ids and block keys are kept. Metadata records ``arrivals = "replaced"``.
        """
        values = np.asarray(list(times) if isinstance(times, Iterator) else times,
                            dtype=np.float64)
        if values.ndim != 1 or len(values) != len(self.requests):
            raise ValueError(
                f"Workload.with_arrivals: times must be a 1-D sequence of "
                f"{len(self.requests)} values, got shape {values.shape}"
            )
        requests = tuple(
            replace(r, arrival_time=float(t)) for r, t in zip(self.requests, values, strict=True)
        )
        return Workload(self.name, requests, {**self.metadata, "arrivals": "replaced"})
