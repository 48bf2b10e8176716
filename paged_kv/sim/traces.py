"""Loaders for the real request traces shipped in `paged_kv.data`.

Each loader returns a `Workload` whose requests are in file order with
``request_id`` = the 0-based data row, and whose metadata names the file, its origin
(repository, path, commit) and licence; ``paged_kv/data/README.md`` has the details.

* ``sharegpt``: prompt/output token counts only, no timestamps; arrivals are a seeded
  Poisson process at `rate` requests/s (`paged_kv.sim.workloads.arrival_times`), so
  `rate` is required.
* ``azure-conv``, ``azure-code``: ``TIMESTAMP`` parsed with pandas, in seconds from
  the first row.
* ``mooncake-conversation``, ``mooncake-synthetic``: millisecond timestamps become
  seconds; ``hash_ids`` become ``block_keys`` with ``key_block_size=512``, and every
  row is checked to hold ``ceil(input_length / 512)`` of them.

Parsed files are cached (``functools.lru_cache``) as tuples of frozen `Request`
objects or read-only arrays, so a second load costs only the `Workload` around them.

**Trace files.** ``load_trace(path)`` also reads a trace from a file of one of two forms
(gzip-compressed or not, told by its first bytes, whatever its name):

* Mooncake JSONL: one JSON object per line with ``input_length`` and ``hash_ids``
  (prefix-chained block keys, integers), optionally ``timestamp`` (milliseconds),
  ``output_length`` (default 1) and ``block_size`` (tokens per key block, default 512,
  the same on every line). Blank lines are skipped.
* CSV: a header row naming the same fields as columns (``input_length`` and
  ``hash_ids`` required), one request per row, ``hash_ids`` as integers separated by
  spaces, e.g. ``timestamp,input_length,output_length,hash_ids`` then
  ``0,1100,20,7 8 9``. A file is CSV when its name ends in ``.csv`` or ``.csv.gz``.

Each request needs 1 to ``ceil(input_length / block_size)`` keys, timestamps must not
decrease, token counts are at most `MAX_FILE_TOKENS` and keys fit an int64; a bad line
(text that is not UTF-8 included) fails with one ``ValueError`` line naming the file and
the line. `replayable_traces` lists the shipped traces that carry block keys.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import pandas as pd

from paged_kv.core.validate import cdiv, require_int
from paged_kv.sim.request import Request, Workload
from paged_kv.sim.workloads import arrival_times

#: Tokens per block that Mooncake's ``hash_ids`` were computed over.
MOONCAKE_BLOCK_SIZE = 512

_DATA_PACKAGE = "paged_kv.data"


@dataclass(frozen=True)
class TraceInfo:
    """Where a shipped trace comes from and what it holds."""

    #: the name `load_trace` knows it by.
    name: str
    #: file name inside `paged_kv.data`.
    filename: str
    #: one line: what the trace is.
    description: str
    #: repository, path and commit it was taken from.
    origin: str
    #: licence of the data.
    licence: str
    #: data rows in the file (header excluded).
    num_rows: int


_MOONCAKE_ORIGIN = "kvcache-ai/Mooncake, FAST25-release/traces/{}, commit 3cca71dac"
_AZURE_ORIGIN = "Azure/AzurePublicDataset, data/AzureLLMInferenceTrace_{}.csv, commit 790921015d50"

#: The shipped traces by name.
TRACES: Mapping[str, TraceInfo] = MappingProxyType({
    info.name: info
    for info in (
        TraceInfo(
            "sharegpt",
            "sharegpt_8k_filtered_stats_llama2_tokenizer.csv.gz",
            "ShareGPT prompt/output token counts (Llama-2 tokenizer, <= 8k tokens); "
            "no timestamps, Poisson arrivals at `rate`",
            "project-etalon/etalon, data/processed_traces/"
            "sharegpt_8k_filtered_stats_llama2_tokenizer.csv, commit d5f18de1",
            "Apache-2.0 (repository); token counts only, no text",
            30_731,
        ),
        TraceInfo(
            "azure-conv",
            "azure2023_conv.csv.gz",
            "Azure LLM inference 2023 (Splitwise), conversation service, ~1 hour",
            _AZURE_ORIGIN.format("conv"),
            "CC-BY-4.0",
            19_366,
        ),
        TraceInfo(
            "azure-code",
            "azure2023_code.csv.gz",
            "Azure LLM inference 2023 (Splitwise), coding service, ~1 hour",
            _AZURE_ORIGIN.format("code"),
            "CC-BY-4.0",
            8_819,
        ),
        TraceInfo(
            "mooncake-conversation",
            "mooncake_conversation_trace.jsonl.gz",
            "Mooncake (FAST'25) conversation trace, with 512-token prefix block hashes",
            _MOONCAKE_ORIGIN.format("conversation_trace.jsonl"),
            "Apache-2.0",
            12_031,
        ),
        TraceInfo(
            "mooncake-synthetic",
            "mooncake_synthetic_trace.jsonl.gz",
            "Mooncake (FAST'25) synthetic trace, with 512-token prefix block hashes",
            _MOONCAKE_ORIGIN.format("synthetic_trace.jsonl"),
            "Apache-2.0",
            3_993,
        ),
    )
})


def list_traces() -> dict[str, str]:
    """Names of the shipped traces, each with a one-line description."""
    return {name: info.description for name, info in TRACES.items()}


#: the shipped traces whose requests carry block keys, so that they can be replayed
REPLAYABLE: tuple[str, ...] = ("mooncake-conversation", "mooncake-synthetic")


def replayable_traces() -> dict[str, str]:
    """The shipped traces a prefix-cache replay can run (they carry block keys)."""
    return {name: TRACES[name].description for name in REPLAYABLE}


def _read_bytes(filename: str) -> bytes:
    """The decompressed contents of a gzipped file of `paged_kv.data`."""
    return gzip.decompress(resources.files(_DATA_PACKAGE).joinpath(filename).read_bytes())


def _check_limit(limit: object) -> int | None:
    if limit is None:
        return None
    return require_int("limit", limit)


def _metadata(info: TraceInfo, limit: int | None, **extra: Any) -> dict[str, Any]:
    return {
        "source": "trace",
        "trace": info.name,
        "file": info.filename,
        "origin": info.origin,
        "licence": info.licence,
        "rows_in_file": info.num_rows,
        "limit": limit,
        **extra,
    }


def _no_rate(name: str, rate: float | None) -> None:
    if rate is not None:
        raise ValueError(
            f"rate={rate!r} does not apply to trace {name!r}, which has its own timestamps; "
            f"rate applies to 'sharegpt' only (use Workload.with_arrivals to replace them)"
        )


# --- ShareGPT ---------------------------------------------------------------------

@lru_cache(maxsize=1)
def _sharegpt_lengths() -> tuple[np.ndarray, np.ndarray]:
    """``(prompt_lens, output_lens)`` of the ShareGPT file, read-only int64 arrays."""
    frame = pd.read_csv(io.BytesIO(_read_bytes(TRACES["sharegpt"].filename)))
    prompts = frame["num_prefill_tokens"].to_numpy(dtype=np.int64, copy=True)
    outputs = frame["num_decode_tokens"].to_numpy(dtype=np.int64, copy=True)
    prompts.flags.writeable = False
    outputs.flags.writeable = False
    return prompts, outputs


def load_sharegpt(
    *, rate: float | None = None, limit: int | None = None, seed: int = 0
) -> Workload:
    """ShareGPT lengths with seeded Poisson arrivals at `rate` requests/s (required).

    Arrival times are ``arrival_times(n, rate, seed=seed)``; ``rate=math.inf`` makes
    every request arrive at 0. With `limit`, the first `limit` rows, whose arrival
    times are the first `limit` of the full trace's.
    """
    if rate is None:
        raise ValueError(
            "trace 'sharegpt' has no timestamps: pass rate= (requests/s) for its "
            "Poisson arrivals"
        )
    limit = _check_limit(limit)
    prompts, outputs = _sharegpt_lengths()
    prompts, outputs = prompts[:limit], outputs[:limit]
    times = arrival_times(len(prompts), rate, seed=seed)
    info = TRACES["sharegpt"]
    metadata = _metadata(info, limit, arrivals="poisson", rate=float(rate), seed=seed)
    return Workload.from_arrays(info.name, times, prompts, outputs, metadata)


# --- Azure 2023 -------------------------------------------------------------------

@lru_cache(maxsize=2)
def _azure_requests(name: str) -> tuple[tuple[Request, ...], str]:
    """The trace's requests and its first ``TIMESTAMP`` (time 0), as written in the file."""
    frame = pd.read_csv(io.BytesIO(_read_bytes(TRACES[name].filename)))
    stamps = pd.to_datetime(frame["TIMESTAMP"], format="%Y-%m-%d %H:%M:%S.%f")
    seconds = (stamps - stamps.iloc[0]).dt.total_seconds().to_numpy()
    prompts = frame["ContextTokens"].to_numpy(dtype=np.int64)
    outputs = frame["GeneratedTokens"].to_numpy(dtype=np.int64)
    workload = Workload.from_arrays(name, seconds, prompts, outputs)
    return workload.requests, str(frame["TIMESTAMP"].iloc[0])


def _load_azure(name: str, limit: int | None) -> Workload:
    limit = _check_limit(limit)
    info = TRACES[name]
    requests, time_zero = _azure_requests(name)
    metadata = _metadata(info, limit, time_unit_in_file="datetime (no time zone)",
                         time_zero=time_zero)
    return Workload(name, requests[:limit], metadata)


def load_azure_conv(*, limit: int | None = None) -> Workload:
    """The Azure 2023 conversation trace (19,366 requests), arrivals from its timestamps."""
    return _load_azure("azure-conv", limit)


def load_azure_code(*, limit: int | None = None) -> Workload:
    """The Azure 2023 code trace (8,819 requests), arrivals from its timestamps."""
    return _load_azure("azure-code", limit)


# --- Mooncake ---------------------------------------------------------------------

@lru_cache(maxsize=2)
def _mooncake_requests(name: str) -> tuple[Request, ...]:
    filename = TRACES[name].filename
    requests = []
    for line_no, line in enumerate(_read_bytes(filename).splitlines(), start=1):
        if not line.strip():
            continue
        row = json.loads(line)
        prompt_len, keys = row["input_length"], row["hash_ids"]
        expected = cdiv(prompt_len, MOONCAKE_BLOCK_SIZE)
        if len(keys) != expected:
            raise ValueError(
                f"{filename} line {line_no}: {len(keys)} hash_ids for input_length "
                f"{prompt_len}, expected ceil({prompt_len} / {MOONCAKE_BLOCK_SIZE}) = {expected}"
            )
        requests.append(
            Request(
                len(requests),
                row["timestamp"] / 1000.0,
                prompt_len,
                row["output_length"],
                tuple(keys),
                MOONCAKE_BLOCK_SIZE,
            )
        )
    return tuple(requests)


def _load_mooncake(name: str, limit: int | None) -> Workload:
    limit = _check_limit(limit)
    info = TRACES[name]
    metadata = _metadata(
        info, limit, time_unit_in_file="ms", key_block_size=MOONCAKE_BLOCK_SIZE
    )
    return Workload(name, _mooncake_requests(name)[:limit], metadata)


def load_mooncake_conversation(*, limit: int | None = None) -> Workload:
    """The Mooncake conversation trace (12,031 requests) with 512-token block keys."""
    return _load_mooncake("mooncake-conversation", limit)


def load_mooncake_synthetic(*, limit: int | None = None) -> Workload:
    """The Mooncake synthetic trace (3,993 requests) with 512-token block keys."""
    return _load_mooncake("mooncake-synthetic", limit)


# --- trace files ------------------------------------------------------------------

#: fields a trace file's request may have; the first two are required
FILE_FIELDS = ("input_length", "hash_ids", "timestamp", "output_length", "block_size")


#: the largest token count (``input_length``, ``output_length``, ``block_size``) a trace
#: file may give: token counts are summed over the requests in int64 arrays, which hold
#: 2**32 requests of this many tokens (two billion, beyond any model's context)
MAX_FILE_TOKENS = 2**31 - 1
#: the range of a ``hash_ids`` key: they are held in int64 arrays
KEY_RANGE = (-(2**63), 2**63 - 1)


def _open_lines(path: Path) -> Iterator[str]:
    """The file's text lines, decompressed when it starts with gzip's magic bytes; a line
    that is not UTF-8, or a file that is not the gzip it starts as, is a `ValueError`
    naming the file (and the line)."""
    with open(path, "rb") as raw:
        gzipped = raw.read(2) == b"\x1f\x8b"
    opener = gzip.open if gzipped else open
    line_no = 0
    try:
        with opener(path, "rb") as handle:
            for line_no, line in enumerate(handle, start=1):
                try:
                    yield line.decode("utf-8")
                except UnicodeDecodeError as err:
                    raise ValueError(f"{path} line {line_no}: not UTF-8 text (byte "
                                     f"{line[err.start]:#04x} at column {err.start + 1})"
                                     ) from None
    except (OSError, EOFError) as err:  # gzip.BadGzipFile is an OSError
        raise ValueError(f"{path} line {line_no + 1}: cannot read it"
                         f"{' as gzip' if gzipped else ''} ({err})") from None


def _file_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, record) for every request of a JSONL or CSV trace file."""
    name = path.name.lower()
    if name.endswith((".csv", ".csv.gz")):
        lines = _open_lines(path)
        reader = csv.DictReader(lines)
        missing = [f for f in FILE_FIELDS[:2] if f not in (reader.fieldnames or ())]
        if missing:
            raise ValueError(f"{path} line 1: the CSV header must name {', '.join(missing)}, "
                             f"got {reader.fieldnames}")
        for row in reader:
            line_no = reader.line_num
            try:
                record: dict[str, Any] = {
                    k: int(v) for k, v in row.items() if k != "hash_ids" and v not in ("", None)
                }
                record["hash_ids"] = [int(k) for k in (row["hash_ids"] or "").split()]
            except (TypeError, ValueError) as err:
                raise ValueError(f"{path} line {line_no}: {err}") from None
            yield line_no, record
        return
    for line_no, line in enumerate(_open_lines(path), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} line {line_no}: not JSON ({err.msg})") from None
        if not isinstance(record, dict):
            raise ValueError(f"{path} line {line_no}: expected a JSON object, got "
                             f"{type(record).__name__}")
        yield line_no, record


def _file_request(path: Path, line_no: int, record: dict[str, Any], index: int,
                  block_size: int, previous: float) -> Request:
    def bad(message: str) -> ValueError:
        return ValueError(f"{path} line {line_no}: {message}")

    for field_name in FILE_FIELDS[:2]:
        if field_name not in record:
            raise bad(f"no {field_name!r} field")
    keys = record["hash_ids"]
    if not isinstance(keys, list) or not keys:
        raise bad(f"hash_ids must be a non-empty list of integers, got {keys!r}")
    for field_name in ("input_length", "output_length"):
        value = record.get(field_name)
        if _number(value) and value > MAX_FILE_TOKENS:
            raise bad(f"{field_name} {value!r} is more than the {MAX_FILE_TOKENS:,} tokens a "
                      f"trace may give")
    low, high = KEY_RANGE
    for key in keys:
        if _number(key) and not low <= key <= high:
            raise bad(f"hash_ids key {key!r} is outside the int64 range they are held in")
    time = record.get("timestamp")
    arrival = previous if time is None else time / 1000.0 if _number(time) else None
    if arrival is None:
        raise bad(f"timestamp must be a number of milliseconds, got {time!r}")
    if arrival < previous:
        raise bad(f"timestamp {time} ms is before the previous request's "
                  f"({previous * 1000:g} ms): requests must be in arrival order")
    try:
        request = Request(index, arrival, record["input_length"],
                          record.get("output_length", 1), tuple(keys), block_size)
    except ValueError as err:
        raise bad(str(err).replace("Request.", "")) from None
    if len(set(request.block_keys)) != len(request.block_keys):
        raise bad("hash_ids repeat a key (prefix-chained keys name distinct blocks)")
    return request


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def load_trace_file(path: str | os.PathLike, *, limit: int | None = None) -> Workload:
    """A trace from a Mooncake-format JSONL file or a CSV file (see the module docstring).

    Request ids are the 0-based request rows; arrival times are the timestamps in
    seconds. Raises `ValueError` naming the file and line of the first bad request.
    """
    limit = _check_limit(limit)
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no trace file {str(path)!r}")
    requests: list[Request] = []
    block_size: int | None = None
    previous = 0.0
    for line_no, record in _file_rows(path):
        if limit is not None and len(requests) >= limit:
            break
        size = record.get("block_size", MOONCAKE_BLOCK_SIZE)
        if block_size is None:
            if (isinstance(size, bool) or not isinstance(size, int) or size < 1
                    or size > MAX_FILE_TOKENS):
                raise ValueError(f"{path} line {line_no}: block_size must be an integer in "
                                 f"[1, {MAX_FILE_TOKENS}], got {size!r}")
            block_size = size
        elif size != block_size:
            raise ValueError(f"{path} line {line_no}: block_size {size!r} differs from the "
                             f"first request's {block_size}")
        request = _file_request(path, line_no, record, len(requests), block_size, previous)
        previous = request.arrival_time
        requests.append(request)
    if not requests:
        raise ValueError(f"{path}: no requests")
    metadata = {
        "source": "file", "trace": path.name, "file": str(path), "limit": limit,
        "time_unit_in_file": "ms", "key_block_size": block_size,
    }
    return Workload(path.name, requests, metadata)


# --- dispatch ---------------------------------------------------------------------

_TIMESTAMPED_LOADERS: Mapping[str, Callable[..., Workload]] = MappingProxyType({
    "azure-conv": load_azure_conv,
    "azure-code": load_azure_code,
    "mooncake-conversation": load_mooncake_conversation,
    "mooncake-synthetic": load_mooncake_synthetic,
})


def load_trace(
    name: str | os.PathLike, *, limit: int | None = None, rate: float | None = None,
    seed: int = 0,
) -> Workload:
    """Load the shipped trace called `name` (see `list_traces`), or a trace file.

    `rate` and `seed` set the Poisson arrivals of ``"sharegpt"`` (rate required
    there); the other traces keep their recorded timestamps, reject `rate` and
    ignore `seed`. `limit` keeps the first `limit` requests. A `name` that is not a
    shipped trace's is read as the path of a JSONL or CSV trace file
    (`load_trace_file`).
    """
    if isinstance(name, os.PathLike) or (isinstance(name, str) and name not in TRACES
                                         and _looks_like_path(name)):
        _no_rate(str(name), rate)
        return load_trace_file(name, limit=limit)
    if name == "sharegpt":
        return load_sharegpt(rate=rate, limit=limit, seed=seed)
    loader = _TIMESTAMPED_LOADERS.get(name) if isinstance(name, str) else None
    if loader is None:
        raise ValueError(f"unknown trace {name!r}; valid names: {', '.join(TRACES)}, "
                         f"or the path of a JSONL or CSV trace file")
    _no_rate(name, rate)
    return loader(limit=limit)


def _looks_like_path(name: str) -> bool:
    """A name that is an existing file, or is spelled like a path or a trace file name."""
    lowered = name.lower()
    return (os.path.exists(name) or os.sep in name or "/" in name
            or lowered.endswith((".jsonl", ".json", ".csv", ".gz")))
