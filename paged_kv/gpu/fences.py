"""Block fences: which in-flight work touches which block, so later work waits for it.

Work on a CUDA stream runs in order with the rest of that stream, but concurrently with
other streams. When a swap out of block 7 runs on a copy stream and the manager then
frees block 7 and hands it to a new sequence, the new sequence's slot write (on the
compute stream) must not overwrite block 7 before the swap has read it. `BlockFences`
keeps, for each block of one pool, the event of the last in-flight write and the last
in-flight read per stream; `BlockFences.wait` makes a stream wait for:

* the last write of every block it reads or writes (read after write, write after
  write), and
* the last reads, on other streams, of every block it writes (write after read: the
  swap/copy *source* rule above).

`BlockFences.record` then records one event on the stream after the work and notes it
on the blocks touched. Work on the same stream is never fenced (the stream orders it),
and a stream waits for a given event once.

While every operation uses one stream, nothing is recorded at all: the first operation
on a second stream records one event on the first stream and treats it as the last
write and read of every block (conservative, and only once). A block set of ``None``
means "every block" (used when the ids live on the device and are not read back).

The fences hold events, not blocks' states: `reset` (after a full synchronize) forgets
them. This module never imports numba: events come from the factory it is given
(`paged_kv.gpu.device.new_event` in `paged_kv.gpu.storage`), so tests can hand it spies.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

#: "No in-flight event" in the per-block event tables.
NONE = -1

#: Compact the event table once it holds this many events.
_COMPACT_AT = 1024


def stream_key(stream: Any) -> int:
    """0 for the default stream (None or 0), else the stream's handle or identity."""
    if stream is None or (isinstance(stream, int) and stream == 0):
        return 0
    handle = getattr(stream, "handle", None)
    value = getattr(handle, "value", handle)
    try:
        return int(value) if value is not None else id(stream)
    except TypeError:
        return id(stream)


def _nothing(blocks: Any) -> bool:
    """True for an empty block set (None is every block, not none)."""
    return blocks is not None and len(blocks) == 0


def stream_arg(stream: Any) -> Any:
    """The stream as numba's launch, copy and event calls take it: 0 for the default."""
    return 0 if stream is None else stream


def to_host(array: Any, stream: Any = None) -> np.ndarray:
    """A NumPy copy of device `array`, written by work enqueued on `stream`.

    The copy is enqueued on that same stream, after the work, and the host then waits
    for the stream. Copying on the default stream instead would be ordered after the
    work only while `stream` is a blocking stream (numba's own are); a non-blocking
    stream (PyTorch's, through ``cuda.external_stream``) would let the host read the
    bytes before the work wrote them.
    """
    host = array.copy_to_host(stream=stream_arg(stream))
    if stream is not None:
        stream.synchronize()
    return host


class BlockFences:
    """In-flight events per block of one pool of `num_blocks` blocks (module docstring)."""

    def __init__(self, num_blocks: int, new_event: Callable[[], Any]) -> None:
        self._num_blocks = num_blocks
        self._new_event = new_event
        self.reset()

    def reset(self) -> None:
        """Forget every event: call only when all work on the pool has completed."""
        self._sole: tuple[int, Any] | None = None  # (key, stream) while one stream is used
        self._events: list[tuple[int, Any] | None] = []  # id -> (stream key, event)
        self._writer = np.full(self._num_blocks, NONE, dtype=np.int64)
        self._readers = np.full((0, self._num_blocks), NONE, dtype=np.int64)
        self._reader_row: dict[int, int] = {}
        self._waited: dict[int, set[int]] = {}  # stream key -> events it already waits for
        self._compact_at = _COMPACT_AT

    @property
    def tracking(self) -> bool:
        """True once a second stream has been seen (events are recorded per operation)."""
        return self._sole is None and bool(self._events)

    def wait(self, stream: Any, reads: Any = (), writes: Any = ()) -> list[Any]:
        """Make `stream` wait for the in-flight work that `reads`/`writes` must follow.

        Returns the events waited on (each once), for tests and logs.
        """
        if _nothing(reads) and _nothing(writes):
            return []  # work that does not touch this pool does not involve its fences
        key = stream_key(stream)
        if self._sole is not None:
            if self._sole[0] == key:
                return []
            self._switch_to_tracking()
        elif not self._events:
            self._sole = (key, stream)  # the first stream seen
            return []
        reads, writes = self._index(reads), self._index(writes)
        ids = [self._writer[reads].ravel(), self._writer[writes].ravel()]
        if self._readers.shape[0]:
            ids.append(self._readers[:, writes].ravel())
        done = self._waited.setdefault(key, set())
        waited = []
        for event_id in np.unique(np.concatenate(ids)).tolist():
            entry = None if event_id == NONE else self._events[event_id]
            if entry is None or entry[0] == key or event_id in done:
                continue  # nothing in flight, ordered by the stream, or waited for already
            entry[1].wait(stream_arg(stream))
            done.add(event_id)
            waited.append(entry[1])
        return waited

    def record(self, stream: Any, reads: Any = (), writes: Any = ()) -> Any:
        """Note work just enqueued on `stream` that read `reads` and wrote `writes`.

        Records one event on `stream` (none while only one stream is in use); returns it.
        """
        if _nothing(reads) and _nothing(writes):
            return None
        key = stream_key(stream)
        if self._sole is not None and self._sole[0] == key:
            return None
        if self._sole is None and not self._events:
            self._sole = (key, stream)
            return None
        if self._sole is not None:
            self._switch_to_tracking()
        event = self._new_event()
        event.record(stream_arg(stream))
        event_id = len(self._events)
        self._events.append((key, event))
        writes = self._index(writes)
        self._writer[writes] = event_id
        if self._readers.shape[0]:
            self._readers[:, writes] = NONE  # this write waited for them
        row = self._row(key)  # may grow the table: look it up first
        self._readers[row, self._index(reads)] = event_id
        if len(self._events) >= self._compact_at:
            self._compact()
        return event

    def _index(self, blocks: Any) -> Any:
        """Block ids as an index array (out-of-range ids dropped: the wrapper refuses
        them before anything is enqueued); None as every block."""
        if blocks is None:
            return slice(None)
        ids = np.asarray(blocks, dtype=np.int64).ravel()
        return ids[(ids >= 0) & (ids < self._num_blocks)]

    def _row(self, key: int) -> int:
        row = self._reader_row.get(key)
        if row is None:
            row = self._reader_row[key] = self._readers.shape[0]
            fresh = np.full((1, self._num_blocks), NONE, dtype=np.int64)
            self._readers = np.concatenate([self._readers, fresh])
        return row

    def _switch_to_tracking(self) -> None:
        """A second stream appeared: fence everything the first one did, once."""
        key, stream = self._sole
        self._sole = None
        event = self._new_event()
        event.record(stream_arg(stream))
        self._events.append((key, event))
        self._writer[:] = len(self._events) - 1

    def _compact(self) -> None:
        """Renumber the events blocks still refer to; drop the rest (superseded)."""
        live = np.unique(np.concatenate([self._writer, self._readers.ravel()]))
        live = live[live != NONE]
        new_id = np.full(len(self._events) + 1, NONE, dtype=np.int64)  # [-1] maps to NONE
        new_id[live] = np.arange(live.size)
        self._events = [self._events[i] for i in live.tolist()]
        self._waited = {key: {int(new_id[i]) for i in ids if new_id[i] != NONE}
                        for key, ids in self._waited.items()}
        self._writer = new_id[self._writer]
        self._readers = new_id[self._readers]
        self._compact_at = max(_COMPACT_AT, 2 * len(self._events))
