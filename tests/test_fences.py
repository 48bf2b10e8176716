"""BlockFences: which waits a stream gets, with fake events and streams (no device)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from paged_kv.gpu import fences
from paged_kv.gpu.fences import BlockFences


class FakeEvent:
    def __init__(self) -> None:
        self.recorded_on = None
        self.waited_by: list[object] = []

    def record(self, stream=0) -> None:
        self.recorded_on = stream

    def wait(self, stream=0) -> None:
        self.waited_by.append(stream)


class FakeStream:
    """A stream with a handle, as numba's streams have."""

    def __init__(self, handle: int) -> None:
        self.handle = handle


A, B, C = FakeStream(11), FakeStream(12), FakeStream(13)


def streams_of(events) -> list[object]:
    return [e.recorded_on for e in events]


def test_one_stream_needs_no_event() -> None:
    made = []
    f = BlockFences(8, lambda: made.append(FakeEvent()) or made[-1])
    for _ in range(3):
        assert f.wait(A, reads=[1], writes=[2]) == []
        assert f.record(A, reads=[1], writes=[2]) is None
    assert made == [] and not f.tracking


def test_read_after_write_write_after_read_and_write_after_write() -> None:
    f = BlockFences(8, FakeEvent)
    f.wait(A, writes=[1])
    f.record(A, writes=[1])
    switch = f.wait(B, reads=[1])  # B reads what A wrote: waits for all of A so far
    assert streams_of(switch) == [A]
    read = f.record(B, reads=[1, 2])
    assert f.wait(A, writes=[3]) == []  # nothing on 3 from another stream
    assert f.wait(A, reads=[1]) == []  # read after read: no wait
    assert f.wait(A, writes=[2]) == [read]  # write after B's read
    f.record(A, writes=[2])
    assert streams_of(f.wait(C, writes=[5])) == [A]  # C's first wait: A's earlier work
    wrote = f.record(C, writes=[5])
    assert f.wait(A, writes=[5]) == [wrote]  # write after write
    assert f.wait(A, writes=[5]) == []  # once per stream and event


def test_none_means_every_block() -> None:
    f = BlockFences(4, FakeEvent)
    f.wait(A, writes=[0])
    f.record(A, writes=[0])
    f.wait(B, reads=[3])
    read = f.record(B, reads=None)
    assert f.wait(A, writes=[2]) == [read]


def test_empty_sets_leave_the_fences_alone_and_bad_ids_are_ignored() -> None:
    f = BlockFences(4, FakeEvent)
    assert f.wait(A) == [] and f.record(A) is None
    f.wait(B, writes=[1, 99, -1])  # B becomes the first stream, not A
    f.record(B, writes=[1, 99, -1])
    assert streams_of(f.wait(A, reads=[1])) == [B]


def test_compaction_keeps_the_live_events(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fences, "_COMPACT_AT", 4)
    f = BlockFences(4, FakeEvent)
    f.wait(A, writes=[0])
    f.record(A, writes=[0])
    last = {}
    for i in range(40):  # streams B and C take turns writing block i % 4
        s = (B, C)[i % 2]
        f.wait(s, writes=[i % 4])
        last[i % 4] = f.record(s, writes=[i % 4])
    assert len(f._events) <= 8  # superseded events dropped
    assert f.wait(A, reads=[0, 1, 2, 3]) == [last[b] for b in range(4)]


def test_reset_forgets_everything() -> None:
    f = BlockFences(4, FakeEvent)
    f.wait(A, writes=[0])
    f.record(A, writes=[0])
    f.wait(B, writes=[0])
    f.record(B, writes=[0])
    f.reset()
    assert f.wait(A, writes=[0]) == [] and not f.tracking


def test_fences_never_import_numba() -> None:
    code = "import sys, paged_kv.gpu.fences; assert 'numba' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0
