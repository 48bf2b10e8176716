"""ShadowKV: the bytes read back through the kernels are checked against what was written,
and a corrupted read is caught."""

import numpy as np
import pytest

from paged_kv import CacheConfig, PagedKVCache
from paged_kv.gpu.storage import KVStorage
from paged_kv.reference.shadow import ShadowKV


def _fork_and_cow() -> ShadowKV:
    shadow = ShadowKV(PagedKVCache(CacheConfig(block_size=4, num_gpu_blocks=16), "tiny"), 0)
    a = shadow.allocate(6)
    b = shadow.fork(a)
    shadow.append(b)  # copy-on-write of the shared partial block
    shadow.append(b, 3)
    assert shadow.cache.stats().cow_copies == 1
    return shadow


def test_fork_and_copy_on_write_read_back_byte_exact():
    shadow = _fork_and_cow()
    checks = shadow.verify(starts={0: 2, 1: 5})
    assert len(checks) == 2 * 3 and all(checks.values())
    k, _ = shadow.cache.read_kv(1, 0, end=6)
    assert np.array_equal(k, shadow.expected[0][0][0][:6])  # the forked prefix is a's
    shadow.free(0)
    assert list(shadow.expected) == [1] and all(shadow.verify().values())


def test_a_flipped_bit_is_caught(monkeypatch):
    shadow = _fork_and_cow()
    real_gather = KVStorage.gather

    def corrupt(self, *args, **kwargs):
        k, v = real_gather(self, *args, **kwargs)
        if k.size:
            k.view(np.uint8)[-1] ^= 1
        return k, v

    monkeypatch.setattr(KVStorage, "gather", corrupt)
    assert not any(shadow.verify().values())


def test_a_cache_without_storage_is_refused():
    with pytest.raises(ValueError, match="needs a cache with storage"):
        ShadowKV(PagedKVCache(CacheConfig(block_size=4, num_gpu_blocks=16)))
