"""The tiers' bytes (kernels in the CUDA simulator): a block that goes GPU -> host -> disk
-> GPU reads back exactly as written (float, int8 and FP8 pools, scales included); every
way the disk tier's file can fail is a typed error, and the cache then recomputes
instead of serving anything wrong; loads are fenced like swaps."""

import os
from dataclasses import replace

import numpy as np
import pytest

from paged_kv import CacheConfig, ModelSpec, PagedKVCache
from paged_kv.core.errors import PagedKVError, TierLoadError, TierStoreError
from paged_kv.gpu import device
from paged_kv.gpu.storage import KVStorage
from paged_kv.gpu.tier_pools import DiskTierPool, TierPools

BS = 2
FLOAT = ModelSpec("micro", num_layers=2, num_kv_heads=1, head_dim=4, dtype="float32")
ROW = (1, FLOAT.head_dim)  # one token of one layer: [num_kv_heads, head_dim]
MODELS = {"float32": FLOAT, "int8": FLOAT.with_kv_dtype("int8"),
          "fp8": FLOAT.with_kv_dtype("fp8_e4m3")}


def make(tmp_path, model=FLOAT, gpu=3, host=1, disk=2, placement="write_back"):
    return PagedKVCache(CacheConfig(
        block_size=BS, num_gpu_blocks=gpu, enable_prefix_caching=True,
        host_cache_blocks=host, disk_cache_blocks=disk, disk_cache_dir=tmp_path,
        tier_placement=placement), model)


def write_all(cache, seq, seed):
    """Write random K, V into every position of every layer of `seq` not yet computed."""
    rng = np.random.default_rng(seed)
    start, n = cache.num_computed_tokens(seq), cache.num_tokens(seq)
    for layer in range(FLOAT.num_layers):
        k, v = (rng.standard_normal((n - start, *ROW)).astype(np.float32) for _ in "kv")
        cache.write_kv(seq, layer, k, v, start=start)


def block_bytes(cache, block):
    """The GPU pool's bytes of one block, with int8's paged scales."""
    storage = cache.storage
    codes = storage.gpu_snapshot()[:, :, block].tobytes()
    scales = storage.gpu_scales_snapshot()
    paged = scales is not None and scales.ndim == 6
    return codes + (scales[:, :, block].tobytes() if paged else b"")


def reads(cache, seq, end):
    return [cache.read_kv(seq, layer, end=end) for layer in range(FLOAT.num_layers)]


def evict_through(cache, tokens, seed):
    """Compute a prompt of `tokens`, free it, then fill the GPU with an unkeyed prompt
    written over every block, so the prompt's cached blocks are evicted (and their
    GPU bytes overwritten)."""
    seq = cache.allocate(token_ids=tokens)
    write_all(cache, seq, seed)
    cache.free(seq)
    filler = cache.allocate(cache.config.num_gpu_blocks * BS)
    write_all(cache, filler, seed + 100)
    cache.free(filler)


@pytest.mark.parametrize("kind", list(MODELS))
def test_a_block_read_back_after_gpu_host_disk_gpu_equals_what_was_written(tmp_path, kind):
    cache = make(tmp_path, MODELS[kind])
    first = cache.allocate(token_ids=[1, 2, 3])
    write_all(cache, first, 1)
    block = cache.get(first).block_table[0]
    written, read_before = block_bytes(cache, block), reads(cache, first, 2)
    fp8_scales = cache.storage.gpu_scales_snapshot()
    cache.free(first)
    tiers, pools = cache.tiers, cache.tiers.pools
    key = cache.gpu.block_keys[block]

    evict_through(cache, [1, 2, 9], 2)  # hits [1, 2] on the GPU, then evicts it: -> host
    assert tiers.host.keys() == {0: key} and len(tiers.disk) == 0
    codes, scales = pools.host_snapshot()
    assert codes[:, :, 0].tobytes() + (b"" if scales is None else scales[:, :, 0].tobytes()) \
        == written
    evict_through(cache, [5, 6, 7], 3)  # [5, 6] takes the host slot: [1, 2] -> disk
    assert key in tiers.disk and key not in tiers.host
    codes, scales = pools.disk_snapshot()
    slot = tiers.disk.slot_of(key)
    assert codes[:, :, slot].tobytes() + (
        b"" if scales is None else scales[:, :, slot].tobytes()) == written

    again = cache.allocate(token_ids=[1, 2, 4])  # from the disk into a new GPU block
    assert cache.num_cached_tokens(again) == 2 and cache.stats().disk_tier_loads == 1
    loaded = cache.get(again).block_table[0]
    assert block_bytes(cache, loaded) == written
    for (k, v), (k0, v0) in zip(reads(cache, again, 2), read_before):
        assert k.tobytes() == k0.tobytes() and v.tobytes() == v0.tobytes()
    if kind == "fp8":  # static scales: the same for every pool, untouched
        assert cache.storage.gpu_scales_snapshot().tobytes() == fp8_scales.tobytes()
    cache.check_invariants()


def test_write_through_copies_reach_both_tiers_and_a_host_load_is_exact(tmp_path):
    cache = make(tmp_path, gpu=3, host=2, disk=2, placement="write_through")
    seq = cache.allocate(token_ids=[1, 2, 3])
    write_all(cache, seq, 7)  # the write publishes [1, 2]: copied to both tiers now
    written, before = block_bytes(cache, cache.get(seq).block_table[0]), reads(cache, seq, 2)
    key = cache.gpu.block_keys[cache.get(seq).block_table[0]]
    pools = cache.tiers.pools
    codes, _ = pools.host_snapshot()
    disk_codes, _ = pools.disk_snapshot()
    host_slot, disk_slot = cache.tiers.host.slot_of(key), cache.tiers.disk.slot_of(key)
    assert codes[:, :, host_slot].tobytes() == disk_codes[:, :, disk_slot].tobytes() == written
    cache.free(seq)
    filler = cache.allocate(6)
    write_all(cache, filler, 8)
    cache.free(filler)
    again = cache.allocate(token_ids=[1, 2, 5])
    assert cache.stats().host_tier_loads == 1 and cache.num_cached_tokens(again) == 2
    assert [(k.tobytes(), v.tobytes()) for k, v in reads(cache, again, 2)] == \
        [(k.tobytes(), v.tobytes()) for k, v in before]


# -- the disk tier's file, on its own --------------------------------------------------

def disk_pool(tmp_path, blocks=3) -> DiskTierPool:
    pool = DiskTierPool(FLOAT, BS, blocks, tmp_path)
    data = np.arange(2 * 2 * blocks * BS * 4, dtype=np.float32).reshape(2, 2, blocks, BS, *ROW)
    pool.write(list(range(blocks)), data, None)
    return pool, data


def damage(pool: DiskTierPool, how: str) -> None:
    path = pool.path
    if how == "missing":
        os.remove(path)
    elif how == "truncated":
        os.truncate(path, pool.nbytes // 2)
    elif how == "unreadable":  # a directory where the file was (even root cannot read it)
        os.remove(path)
        os.mkdir(path)
    elif how == "corrupt":  # slot 1 of layer 0, K: one byte flipped
        offset = 1 * BS * FLOAT.head_dim * 4
        with open(path, "r+b") as f:
            f.seek(offset)
            byte = f.read(1)
            f.seek(offset)
            f.write(bytes([byte[0] ^ 0xFF]))


def test_the_disk_file_holds_the_pool_layout_and_is_removed_on_close(tmp_path):
    pool, data = disk_pool(tmp_path)
    raw = np.fromfile(pool.path, dtype=np.float32).reshape(data.shape)
    assert raw.tobytes() == data.tobytes() and pool.nbytes == data.nbytes
    codes, scales, error = pool.read([2, 0])
    assert error is None and scales is None
    assert codes.tobytes() == data[:, :, [2, 0]].tobytes()
    pool.close()
    assert not pool.path.exists()


@pytest.mark.parametrize("how, reason, done", [
    ("missing", "is missing", 0),
    ("truncated", r"is truncated \(\d+ of \d+ bytes\)", 0),
    ("unreadable", "is unreadable", 0),
    ("corrupt", r"changed since they were written \(CRC-32 mismatch\)", 1),
])
def test_every_disk_failure_is_a_typed_error(tmp_path, how, reason, done):
    pool, _ = disk_pool(tmp_path)
    damage(pool, how)
    try:
        _, _, error = pool.read([0, 1, 2])
    except TierLoadError as err:
        error = err
    assert isinstance(error, TierLoadError) and isinstance(error, PagedKVError)
    assert error.done == done and error.tier == "disk"
    assert __import__("re").search(reason, str(error)), str(error)


def test_a_write_into_a_missing_file_is_a_store_error(tmp_path):
    pool, data = disk_pool(tmp_path)
    damage(pool, "missing")
    with pytest.raises(TierStoreError, match="store failed on the disk tier slot 0: .* missing"):
        pool.write([0], data[:, :, :1], None)


def test_a_partial_disk_load_copies_the_blocks_before_the_bad_one_only(tmp_path):
    storage = KVStorage(FLOAT, BS, 4, 0)
    pools = TierPools(storage, 0, 3, tmp_path)
    rows = np.arange(4 * BS * 4, dtype=np.float32).reshape(4 * BS, *ROW)
    for layer in range(2):
        storage.write(layer, rows, rows + 100, np.arange(4 * BS))
    pools.store("disk", [(0, 0), (1, 1)])
    before = storage.gpu_snapshot()
    damage(pools.disk, "corrupt")  # slot 1
    with pytest.raises(TierLoadError) as caught:
        pools.load("disk", [(0, 2), (1, 3)])
    assert caught.value.done == 1 and caught.value.slot == 1
    after = storage.gpu_snapshot()
    assert after[:, :, 2].tobytes() == before[:, :, 0].tobytes()  # the good block landed
    assert after[:, :, 3].tobytes() == before[:, :, 3].tobytes()  # the bad one did not
    with pytest.raises(ValueError, match=r"load from the disk tier: pair \(5, 0\) outside"):
        pools.load("disk", [(5, 0)])
    with pytest.raises(ValueError, match="tier must be a configured tier"):
        pools.load("host", [(0, 0)])


# -- failures through the cache ---------------------------------------------------------

@pytest.mark.parametrize("how", ["missing", "truncated", "unreadable", "corrupt"])
def test_a_failed_load_is_a_miss_and_nothing_wrong_is_served(tmp_path, how):
    cache = make(tmp_path, gpu=4, host=0, disk=4, placement="write_through")
    tokens = [1, 2, 3, 4, 5]
    seq = cache.allocate(token_ids=tokens)
    write_all(cache, seq, 11)  # [1, 2] and [3, 4] go to the disk: slots 0 ([3, 4]), 1
    cache.free(seq)
    disk = cache.tiers.disk
    keys = dict(disk.keys())  # copied tail first: slot 0 holds [3, 4], slot 1 [1, 2]
    filler = cache.allocate(8)
    write_all(cache, filler, 12)
    cache.free(filler)
    damage(cache.tiers.pools.disk, how)  # "corrupt" flips a byte of slot 1: [1, 2]
    again = cache.allocate(token_ids=tokens)
    served = cache.num_cached_tokens(again)
    stats = cache.stats()
    # [1, 2] is the first block to load: every failure mode stops the hit there
    assert served == 0 and stats.disk_tier_load_failures == 1 and stats.disk_tier_loads == 0
    assert disk.slot_of(keys[1]) is None  # the tier forgot the slot that failed
    write_all(cache, again, 13)  # recomputed: what is read is what was just written
    rng = np.random.default_rng(13)
    for layer in range(2):
        k, v = cache.read_kv(again, layer)
        want_k, want_v = (rng.standard_normal((5, *ROW)).astype(np.float32) for _ in "kv")
        assert k.tobytes() == want_k.tobytes() and v.tobytes() == want_v.tobytes()
    cache.check_invariants()


def test_a_failure_after_good_blocks_serves_the_good_ones(tmp_path):
    cache = make(tmp_path, gpu=4, host=0, disk=4, placement="write_through")
    seq = cache.allocate(token_ids=[1, 2, 3, 4, 5])
    write_all(cache, seq, 21)
    before = reads(cache, seq, 2)
    cache.free(seq)
    filler = cache.allocate(8)
    write_all(cache, filler, 22)
    cache.free(filler)
    disk = cache.tiers.disk
    with open(cache.tiers.pools.disk.path, "r+b") as f:  # slot 0 ([3, 4]), layer 0, K
        f.write(np.float32(1e9).tobytes())
    again = cache.allocate(token_ids=[1, 2, 3, 4, 5])
    assert cache.num_cached_tokens(again) == 2  # [1, 2] loaded, [3, 4] recomputed
    assert [(k.tobytes(), v.tobytes()) for k, v in reads(cache, again, 2)] == \
        [(k.tobytes(), v.tobytes()) for k, v in before]
    assert cache.stats().disk_tier_loads == 1 and len(disk) == 1
    cache.check_invariants()


def test_a_failed_store_drops_the_entry(tmp_path):
    cache = make(tmp_path, gpu=3, host=0, disk=2, placement="write_through")
    os.remove(cache.tiers.pools.disk.path)
    seq = cache.allocate(token_ids=[1, 2, 3])
    write_all(cache, seq, 31)  # publishes [1, 2]: the store fails
    assert len(cache.tiers.disk) == 0 and cache.stats().disk_tier_store_failures == 1
    assert cache.stats().blocks_gpu_to_disk_tier == 0
    cache.check_invariants()


def test_the_host_tier_and_the_swap_pool_share_no_block(tmp_path):
    cache = PagedKVCache(CacheConfig(block_size=BS, num_gpu_blocks=4, num_host_blocks=2,
                                     enable_prefix_caching=True, host_cache_blocks=2,
                                     tier_placement="write_through"), FLOAT)
    seq = cache.allocate(token_ids=[1, 2, 3, 4])
    write_all(cache, seq, 51)  # both blocks copied to the host tier, which is now full
    tier_before = cache.tiers.pools.host_snapshot()[0].tobytes()
    before = reads(cache, seq, 4)
    cache.swap_out(seq)  # the swap pool has its own two blocks
    assert cache.stats().host_used_blocks == 2 and len(cache.tiers.host) == 2
    assert cache.storage.host_snapshot().tobytes() != tier_before
    assert cache.tiers.pools.host_snapshot()[0].tobytes() == tier_before
    cache.swap_in(seq)
    assert [(k.tobytes(), v.tobytes()) for k, v in reads(cache, seq, 4)] == \
        [(k.tobytes(), v.tobytes()) for k, v in before]
    cache.check_invariants()


def test_a_disk_tier_that_stores_kv_needs_a_directory(tmp_path):
    config = CacheConfig(block_size=BS, num_gpu_blocks=2, enable_prefix_caching=True,
                         disk_cache_blocks=2)
    with pytest.raises(ValueError, match="disk_cache_dir must name a directory"):
        PagedKVCache(config, FLOAT)
    a_file = tmp_path / "not-a-directory"
    a_file.write_text("")
    with pytest.raises(ValueError, match="disk_cache_dir .*not-a-directory.*: cannot create "
                                         "the disk tier's file there"):
        PagedKVCache(replace(config, disk_cache_dir=a_file), FLOAT)


# -- fences -------------------------------------------------------------------------------

class SpyEvent:
    log: list = []

    def record(self, stream=0):
        SpyEvent.log.append(("record", self, stream))

    def wait(self, stream=0):
        SpyEvent.log.append(("wait", self, stream))

    def synchronize(self):
        pass


def test_a_load_is_fenced_before_anything_reads_the_block(tmp_path, monkeypatch):
    SpyEvent.log = []
    monkeypatch.setattr(device, "new_event", SpyEvent)
    cache = make(tmp_path, gpu=3, host=2, disk=0, placement="write_through")
    seq = cache.allocate(token_ids=[1, 2, 3])
    write_all(cache, seq, 41)
    cache.free(seq)
    filler = cache.allocate(6)
    write_all(cache, filler, 42)
    cache.free(filler)
    again = cache.allocate(token_ids=[1, 2, 3])  # loads [1, 2] on the tier stream
    tier_stream = cache.tiers.pools.stream
    loads = [e for kind, e, s in SpyEvent.log if kind == "record" and s is tier_stream]
    assert loads, "the load records an event on the tier stream"
    since = len(SpyEvent.log)
    cache.read_kv(again, 0)  # a gather on the default stream reads the loaded block
    waited = [e for kind, e, s in SpyEvent.log[since:] if kind == "wait" and s == 0]
    assert loads[-1] in waited
