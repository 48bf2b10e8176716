"""Pressure callbacks cannot break the cache.

The rule (`paged_kv.core.pressure`): an operation that moves the pressure level has
completed before any callback runs and returns its result whatever the callbacks do;
every callback hears every level change, in order; a callback's exception is logged
(logger ``paged_kv.core.pressure``) and the others are still called; a change a
callback causes (freeing a sequence) is heard after the one being delivered.
"""

import logging

import pytest

from paged_kv import CacheConfig, PagedKVCache
from paged_kv.core.pressure import PressureLevel, pressure_level

N, E, C = PressureLevel.NORMAL, PressureLevel.ELEVATED, PressureLevel.CRITICAL
LOGGER = "paged_kv.core.pressure"


def make():
    # 10 blocks of 4 tokens: NORMAL below 5 used, ELEVATED from 5, CRITICAL from 9
    return PagedKVCache(CacheConfig(block_size=4, num_gpu_blocks=10, watermark_low=0.5,
                                    watermark_high=0.9))


class Boom(RuntimeError):
    pass


def raising(old, new, usage):
    raise Boom(f"{old.name} -> {new.name}")


def test_a_raising_callback_hides_nothing_and_every_callback_hears_every_change(caplog):
    cache = make()
    heard, expected = [], []
    cache.on_pressure_change(raising)  # registered first: it runs before the recorder
    cache.on_pressure_change(lambda old, new, usage: heard.append((old, new, usage)))
    level = cache.pressure

    def expect():  # what the recorder should have heard after an operation
        nonlocal level
        now = pressure_level(cache.gpu.usage, 0.5, 0.9)
        if now != level:
            expected.append((level, now, cache.gpu.usage))
            level = now

    live = []
    with caplog.at_level(logging.ERROR, logger=LOGGER):
        for step in (
            lambda: live.append(cache.allocate(16)),                  # 4/10: NORMAL
            lambda: live.append(cache.allocate(4)),                   # 5/10: ELEVATED
            lambda: live.append(cache.try_allocate(16)),              # 9/10: CRITICAL
            lambda: cache.free(live.pop()),                           # 5/10: ELEVATED
            lambda: cache.free(live.pop()),                           # 4/10: NORMAL
            lambda: live.append(cache.allocate(36)),                  # 9 more: OutOfBlocks
            lambda: live.append(cache.try_allocate(20)),              # 9/10: CRITICAL
            lambda: live.append(cache.fork(live[-1])),                # shares: no change
            lambda: cache.append_many(live[-2:], 4),                  # 10/10: CRITICAL
            lambda: cache.free(live.pop()),                           # 9/10: CRITICAL
            lambda: cache.free(live.pop()),                           # 4/10: NORMAL
            lambda: cache.free(live.pop()),                           # 0/10: NORMAL
        ):
            try:
                step()
            except Exception as err:  # only the pool running out may reach the caller
                assert type(err).__name__ == "OutOfBlocksError", err
            expect()
    assert heard == expected
    assert [(o, n) for o, n, _ in heard] == [(N, E), (E, C), (C, E), (E, N), (N, C), (C, N)]
    # every id came back to the caller and was freed: nothing is orphaned
    assert live == [] and len(cache) == 0
    assert cache.num_free_blocks == 10 and cache.num_used_blocks == 0
    cache.check_invariants()
    # the raising callback's exception was logged, once per change, with its traceback
    records = [r for r in caplog.records if r.name == LOGGER]
    assert len(records) == len(heard)
    assert all(r.exc_info and r.exc_info[0] is Boom for r in records)
    assert "the operation stands" in records[0].getMessage()


def test_allocate_returns_its_id_when_every_callback_raises():
    cache = make()
    for _ in range(3):
        cache.on_pressure_change(raising)
    a = cache.allocate(20)  # NORMAL -> ELEVATED: three callbacks raise
    b = cache.allocate(16)  # -> CRITICAL
    assert cache.handles() == [a, b] and cache.pressure == C
    cache.free(b)
    cache.free(a)
    assert len(cache) == 0 and cache.num_free_blocks == 10


def test_a_callback_that_frees_is_heard_after_the_change_it_answers():
    cache = make()
    heard = []
    first = cache.allocate(20)  # 5/10: ELEVATED (no callback yet)

    def relieve(old, new, usage):  # frees a sequence as soon as the pool is critical
        heard.append(("relieve", old, new))
        if new == C:
            cache.free(first)

    cache.on_pressure_change(relieve)
    cache.on_pressure_change(lambda old, new, usage: heard.append(("record", old, new)))
    second = cache.allocate(16)  # 9/10: CRITICAL, then relieve frees 5 blocks: NORMAL
    assert heard == [("relieve", E, C), ("record", E, C),
                     ("relieve", C, N), ("record", C, N)]
    assert cache.handles() == [second] and cache.pressure == N


def test_an_interrupt_in_a_callback_reaches_the_caller_and_later_changes_still_arrive():
    cache = make()
    heard = []

    def interrupt(old, new, usage):
        if (old, new) == (N, E):
            raise KeyboardInterrupt

    cache.on_pressure_change(interrupt)
    cache.on_pressure_change(lambda old, new, usage: heard.append((old, new)))
    with pytest.raises(KeyboardInterrupt):
        cache.allocate(20)  # ELEVATED: the operation is done, the interrupt goes up
    assert len(cache) == 1
    b = cache.allocate(16)  # CRITICAL: delivery goes on
    assert heard == [(E, C)]
    cache.free(b)
    assert heard == [(E, C), (C, E)]
