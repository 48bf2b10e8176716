"""Step plans: a step's indices are built, checked and uploaded once and reused by every
layer; the bytes written and the attention computed are those of the per-call path; a
stale plan is refused and changes nothing. Kernels run in the CUDA simulator (a 3-layer
model with 1 KV head, so each launch is a few CUDA blocks)."""

import dataclasses

import numpy as np
import pytest

from paged_kv import CacheConfig, PagedKVCache, get_model
from paged_kv.cache import attention
from paged_kv.cache.step_plan import StepPlan
from paged_kv.core.errors import ImmutableBlockError, MetadataOnlyError
from paged_kv.gpu.device import cuda_api
from paged_kv.gpu.device_block_table import DeviceBlockTable
from paged_kv.gpu.kernels import DeviceBuffers
from paged_kv.gpu.kernels.paged_attention import planned_attention
from paged_kv.reference import attention as reference
from paged_kv.reference.attention import dense_attention

pytestmark = pytest.mark.device  # kernels: the simulator here, the GPU in gpu_check.sh

MODEL = dataclasses.replace(get_model("tiny"), name="tiny-3l", num_layers=3, num_kv_heads=1,
                            num_q_heads=2, dtype="float32")
L, H, QH, D = MODEL.num_layers, MODEL.num_kv_heads, MODEL.q_heads, MODEL.head_dim


def make(num_blocks=8, host=0, **kw):
    config = CacheConfig(block_size=4, num_gpu_blocks=num_blocks, num_host_blocks=host, **kw)
    return PagedKVCache(config, MODEL)


def rows(rng, n, heads=H):
    return rng.standard_normal((n, heads, D)).astype(np.float32)


def fill(cache, seq, rng, n):
    """Write random K/V at positions 0..n-1 of every layer; return [layer] -> (k, v)."""
    kept = []
    for layer in range(L):
        k, v = rows(rng, n), rows(rng, n)
        cache.write_kv(seq, layer, k, v, start=0)
        kept.append((k, v))
    return kept


def test_a_decode_step_uploads_its_indices_once_for_every_layer():
    rng = np.random.default_rng(0)
    planned, per_call = make(), make()
    kept = {}
    for cache in (planned, per_call):
        a, b = cache.allocate(2), cache.allocate(5)
        state = np.random.default_rng(1)
        kept = {a: fill(cache, a, state, 2), b: fill(cache, b, state, 5)}
    seqs = [a, b]
    for step, (tables_changed, lens) in enumerate([(True, [3, 6]), (False, [4, 7]),
                                                   (True, [5, 8])]):
        new = [[(rows(rng, 1), rows(rng, 1)) for _ in seqs] for _ in range(L)]
        qs = [rows(rng, 2, QH) for _ in range(L)]
        caches = (planned, per_call) if step == 0 else (planned,)
        outs = {}
        for cache in caches:
            cache.append_many(seqs)
            before = cache.storage.upload_counts()
            plan = cache.plan_step(seqs) if cache is planned else None
            outs[id(cache)] = []
            for layer in range(L):
                k = np.concatenate([kv[0] for kv in new[layer]])
                v = np.concatenate([kv[1] for kv in new[layer]])
                if plan is None:
                    cache.write_kv_batch(layer, seqs, k, v, num_tokens=[1, 1])
                    outs[id(cache)].append(attention.decode(cache, layer, seqs, qs[layer]))
                else:
                    cache.write_kv_batch(layer, plan, k, v)
                    outs[id(cache)].append(attention.decode(cache, layer, plan, qs[layer]))
            uploads = cache.storage.upload_counts() - before
            data = {"k": L, "v": L, "attention_q": L}
            if cache is planned:  # one packed upload; the table only when a row changed
                index = {"step_indices": 1} | ({"block_table_rows": 1} if tables_changed else {})
            else:  # per layer: slot mapping, block tables, query tiles
                index = {"slot_mapping": L, "attention_tables": L, "attention_tiles": L}
            assert dict(uploads.by_name) == index | data
            assert uploads.index == sum(index.values())
        assert [cache.num_tokens(s) for s in seqs] == lens
        for layer in range(L):
            for i, s in enumerate(seqs):
                k_l, v_l = kept[s][layer]
                kept[s][layer] = (np.concatenate([k_l, new[layer][i][0]]),
                                  np.concatenate([v_l, new[layer][i][1]]))
            for i, s in enumerate(seqs):
                expected = dense_attention(qs[layer][i:i + 1], *kept[s][layer], causal=False)
                np.testing.assert_allclose(outs[id(planned)][layer][i:i + 1], expected,
                                           rtol=1e-5, atol=1e-5)
            if step == 0:
                np.testing.assert_array_equal(outs[id(planned)][layer],
                                              outs[id(per_call)][layer])
        if step == 0:
            assert planned.snapshot() == per_call.snapshot()  # every byte, every count
    assert planned.num_computed_tokens(a) == 5 and planned.num_computed_tokens(b) == 8


def _setup_for_staleness():
    cache = make(num_blocks=12, host=4)
    rng = np.random.default_rng(2)
    a, b, c = cache.allocate(6), cache.allocate(3), cache.allocate(2)
    for s, n in ((a, 6), (b, 3), (c, 2)):
        fill(cache, s, rng, n)
    cache.fork(c)  # c's partial block is shared
    plan = cache.plan_step([a, b])
    return cache, plan, (a, b, c), rng


def _cow_write(cache, seqs, rng):
    k = rows(rng, 1)
    cache.write_kv(seqs[2], 0, k, k, start=1)  # copy-on-write of c's shared partial block
    assert cache.stats().cow_copies == 1


STALE_MAKERS = {
    "append": lambda cache, seqs, rng: cache.append(seqs[0]),
    "append_many": lambda cache, seqs, rng: cache.append_many([seqs[2]]),
    "free": lambda cache, seqs, rng: cache.free(seqs[2]),
    "fork": lambda cache, seqs, rng: cache.fork(seqs[2]),
    "swap": lambda cache, seqs, rng: (cache.swap_out(seqs[2]), cache.swap_in(seqs[2])),
    "newer plan": lambda cache, seqs, rng: cache.plan_step([seqs[2]]),
    "copy-on-write": _cow_write,
}


@pytest.mark.parametrize("change", sorted(STALE_MAKERS))
def test_a_stale_plan_is_refused_and_changes_nothing(change):
    cache, plan, seqs, rng = _setup_for_staleness()
    STALE_MAKERS[change](cache, seqs, rng)
    before = cache.snapshot()
    k = rows(rng, 2)
    with pytest.raises(ValueError, match="stale plan"):
        cache.write_kv_batch(0, plan, k, k)
    with pytest.raises(ValueError, match="stale plan"):
        attention.decode(cache, 0, plan, rows(rng, 2, QH))
    with pytest.raises(ValueError, match="stale plan"):
        reference.decode(cache, 0, plan, rows(rng, 2, QH))
    with pytest.raises(ValueError, match="stale plan"):
        cache.check_plan(plan)
    assert cache.snapshot() == before


def _swapped_in_setup(cache):
    a = cache.allocate(token_ids=list(range(12)))
    b = cache.allocate(4)
    cache.commit(a)
    cache.swap_out(a)
    cache.evict_cached(3)  # a's cached GPU copies go: swapping in publishes its blocks
    return [b], lambda: cache.swap_in(a)


PRESSURE_CHANGES = {  # (plan's sequences, the change) on an 8-block pool; each moves
    # usage across the 0.5 watermark
    "swap_out": lambda cache: ((a := cache.allocate(12), cache.allocate(4)),
                               lambda: cache.swap_out(a)),
    "swap_in": _swapped_in_setup,
    "append_many": lambda cache: ((cache.allocate(8), b := cache.allocate(4)),
                                  lambda: cache.append_many([b], 4)),
}


@pytest.mark.parametrize("change", sorted(PRESSURE_CHANGES))
def test_a_pressure_callback_sees_the_change_whole_plans_stale_blocks_published(change):
    """Callbacks run once the operation has completed: a plan it made stale is refused
    inside them (writing through it would put KV where the sequence no longer is)."""
    cache = make(num_blocks=8, host=8, enable_prefix_caching=True, watermark_low=0.5,
                 watermark_high=0.9)
    seqs, operation = PRESSURE_CHANGES[change](cache)
    plan = cache.plan_step(list(seqs))
    heard = []

    def callback(old, new, usage):
        try:
            cache.check_plan(plan)
            heard.append(("current", len(cache.prefix)))
        except ValueError:
            heard.append(("stale", len(cache.prefix)))

    cache.on_pressure_change(callback)
    operation()
    assert heard == [("stale", 3 if change == "swap_in" else 0)]


def test_allocating_and_committing_leave_a_plan_valid_and_other_caches_refuse_it():
    cache, plan, (a, b, _), rng = _setup_for_staleness()
    cache.allocate(3)
    cache.commit(b)
    cache.check_plan(plan)  # still current
    other, _, _, _ = _setup_for_staleness()
    before = other.snapshot()
    with pytest.raises(ValueError, match="another cache"):
        other.write_kv_batch(0, plan, rows(rng, 2), rows(rng, 2))
    with pytest.raises(ValueError, match="StepPlan"):
        cache.check_plan([a, b])
    assert other.snapshot() == before
    with pytest.raises(ValueError, match="no num_tokens or starts"):
        cache.write_kv_batch(0, plan, rows(rng, 2), rows(rng, 2), num_tokens=[1, 1])
    with pytest.raises(ValueError, match="needs num_tokens"):
        cache.write_kv_batch(0, [a, b], rows(rng, 2), rows(rng, 2))
    with pytest.raises(ValueError, match="3 rows but the plan writes 2"):
        cache.write_kv_batch(0, plan, rows(rng, 3), rows(rng, 3))


def test_copy_on_write_happens_when_the_plan_is_made_not_per_layer():
    rng = np.random.default_rng(3)
    cache = make()
    a = cache.allocate(6)
    kept = fill(cache, a, rng, 6)
    b = cache.fork(a)
    assert cache.get(a).block_table == cache.get(b).block_table
    plan = cache.plan_step([b], num_tokens=1, starts=[5])  # b rewrites position 5
    assert cache.stats().cow_copies == 1  # copied now, before any layer writes
    a_table, b_table = cache.get(a).block_table, cache.get(b).block_table
    assert a_table[0] == b_table[0] and a_table[1] != b_table[1]
    assert plan.slot_mapping.tolist() == [b_table[1] * 4 + 1]
    assert plan.block_tables.tolist() == [list(b_table)]
    new = [(rows(rng, 1), rows(rng, 1)) for _ in range(L)]
    for layer in range(L):
        cache.write_kv_batch(layer, plan, *new[layer])
        cache.check_plan(plan)  # a write changes no table
    assert cache.stats().cow_copies == 1
    for layer in range(L):
        k_a, v_a = cache.read_kv(a, layer)
        np.testing.assert_array_equal(k_a, kept[layer][0])
        np.testing.assert_array_equal(v_a, kept[layer][1])
        k_b, v_b = cache.read_kv(b, layer)
        np.testing.assert_array_equal(k_b, np.concatenate([kept[layer][0][:5], new[layer][0]]))
        np.testing.assert_array_equal(v_b, np.concatenate([kept[layer][1][:5], new[layer][1]]))


def test_each_layer_is_checked_and_committed_as_without_a_plan():
    rng = np.random.default_rng(4)
    cache = make(enable_prefix_caching=True)
    a = cache.allocate(token_ids=[1, 2, 3, 4, 5])
    b = cache.allocate(token_ids=[9, 8, 7, 6, 5])
    plan = cache.plan_step([a, b], num_tokens=5)
    assert plan.writes == ((a, 0, 0), (a, 1, 1), (b, 0, 2), (b, 1, 3))
    for layer in range(L):
        assert cache.num_computed_tokens(a) == 0
        k, v = rows(rng, 10), rows(rng, 10)
        if layer == 1:
            cache.commit(b)  # b's full block is published between two layers
            before = cache.snapshot()
            with pytest.raises(ImmutableBlockError, match="block 2 .logical 0. is published"):
                cache.write_kv_batch(layer, plan, k, v)
            assert cache.snapshot() == before
            plan = cache.plan_step([a], num_tokens=5)  # a alone goes on
        n = plan.total_tokens
        cache.write_kv_batch(layer, plan, k[:n], v[:n])
    # the last layer's write completed a's prompt: computed, its full block published
    assert cache.num_computed_tokens(a) == 5
    assert cache.gpu.block_keys[0] is not None and cache.gpu.block_keys[1] is None


def test_a_per_call_write_builds_no_block_tables(monkeypatch):
    """The one-use plan of ``write_kv_batch(layer, seq_ids, ...)`` is never attended
    through: padding every sequence's table into an array on each layer's write would
    cost the per-call path time that grows with the sequences' lengths."""
    from paged_kv.cache.kv_io import KVIO

    cache = make(num_blocks=16)
    a, b = cache.allocate(9), cache.allocate(13)
    seen = []
    write = KVIO._write
    monkeypatch.setattr(KVIO, "_write", lambda self, layer, plan, k, v: (
        seen.append(plan), write(self, layer, plan, k, v))[1])
    k = rows(np.random.default_rng(6), 2)
    cache.write_kv_batch(0, [a, b], k, k, num_tokens=[1, 1])
    (plan,) = seen
    assert plan.device is None and plan.block_tables is None
    assert plan.slot_mapping.tolist() == [2 * 4 + 0, 6 * 4 + 0]
    assert plan.seq_lens.tolist() == [9, 13]
    planned = cache.plan_step([a, b])
    assert planned.block_tables.tolist() == [[0, 1, 2, -1], [3, 4, 5, 6]]


def test_a_prefill_plan_attends_as_the_per_call_prefill_and_shapes_are_checked():
    rng = np.random.default_rng(5)
    cache = make()
    a, b = cache.allocate(7), cache.allocate(2)
    fill(cache, a, rng, 7)
    fill(cache, b, rng, 2)
    q = rows(rng, 3, QH)
    plan = cache.plan_step([a], num_tokens=3)  # positions 4, 5, 6
    assert plan.starts == (4,) and not plan.is_decode
    np.testing.assert_array_equal(attention.prefill(cache, 1, plan, q),
                                  attention.prefill(cache, 1, a, q, q_start=4))
    np.testing.assert_array_equal(reference.prefill(cache, 1, plan, q),
                                  reference.prefill(cache, 1, a, q, q_start=4))
    with pytest.raises(ValueError, match="pass no q_start"):
        attention.prefill(cache, 1, plan, q, q_start=4)
    with pytest.raises(ValueError, match="one new token per sequence"):
        attention.decode(cache, 1, plan, q[:1])
    with pytest.raises(ValueError, match="q has 2 rows for the plan's 3"):
        attention.prefill(cache, 1, plan, q[:2])
    two = cache.plan_step([a, b], num_tokens=1)
    assert two.is_decode
    with pytest.raises(ValueError, match="one sequence, got 2"):
        attention.prefill(cache, 1, two, q[:2])
    with pytest.raises(ValueError, match="q has 3 rows for 2 sequences"):
        attention.decode(cache, 1, two, q)


def test_a_plan_is_immutable_and_needs_storage():
    cache = make()
    a = cache.allocate(5)
    plan = cache.plan_step([a])
    assert isinstance(plan, StepPlan) and plan.seq_ids == (a,) and plan.is_decode
    assert plan.seq_lens.tolist() == [5] and plan.slot_mapping.tolist() == [4]
    for arr in (plan.slot_mapping, plan.block_tables, plan.seq_lens):
        with pytest.raises(ValueError, match="read-only"):
            arr[0] = 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.generation = 0
    meta = PagedKVCache(CacheConfig(block_size=4, num_gpu_blocks=8))
    s = meta.allocate(3)
    before = meta.snapshot()
    with pytest.raises(MetadataOnlyError):
        meta.plan_step([s])
    assert meta.snapshot() == before


@pytest.mark.parametrize("kwargs, message", [
    (dict(starts=4), r"starts must be a sequence of positions, got 4"),
    (dict(starts="4"), r"starts\[i\] must be an integer"),
    (dict(starts=[True]), r"starts\[i\] must be an integer >= 0, got True"),
    (dict(starts=[4, 4]), r"same length"),
    (dict(num_tokens=[1.0]), r"num_tokens\[i\] must be an integer"),
    (dict(num_tokens=True), r"num_tokens must be an integer >= 0, got True"),
])
def test_plan_step_refuses_bad_counts_and_starts_naming_them(kwargs, message):
    cache = make()
    a = cache.allocate(5)
    plan = cache.plan_step([a])
    before = cache.snapshot()
    with pytest.raises(ValueError, match=message):
        cache.plan_step([a], **kwargs)
    assert cache.snapshot() == before
    cache.check_plan(plan)  # a refused plan_step leaves the current plan current
    if "starts" in kwargs:  # the read path takes starts (and ends) the same way
        with pytest.raises(ValueError, match=message.replace("got 4", "got 4|same length")):
            cache.read_kv_batch(0, [a], **kwargs)
        with pytest.raises(ValueError, match=message.replace("starts", "ends")):
            cache.read_kv_batch(0, [a], ends=kwargs["starts"])


def test_the_device_block_table_uploads_only_changed_rows():
    buffers = DeviceBuffers()
    table = DeviceBlockTable(buffers)
    assert table.update(np.array([[1, 2], [3, -1]])) == 2  # a new array: all of it, once
    assert table.shape == (2, 2)
    assert table.update(np.array([[1, 2], [3, -1]])) == 0
    assert table.update(np.array([[3, 4]]), rows=[1]) == 1  # row 1 only
    np.testing.assert_array_equal(table.mirror, [[1, 2], [3, 4]])
    np.testing.assert_array_equal(table.view(2).copy_to_host(), [[1, 2], [3, 4]])
    assert table.update(np.array([[5, 6, 7]]), rows=[2]) == 4  # grows: 4 rows x 4 columns
    np.testing.assert_array_equal(table.view(3).copy_to_host(),
                                  [[1, 2, -1, -1], [3, 4, -1, -1], [5, 6, 7, -1]])
    assert dict(buffers.upload_counts().by_name) == {"block_table_rows": 3}
    for bad, match in (([1, 2], "2-D integer"), ([[1.5]], "2-D integer"),
                       ([[-2]], r"\[-1, 2\*\*31\)")):
        with pytest.raises(ValueError, match=match):
            table.update(np.array(bad))
    with pytest.raises(ValueError, match="distinct"):
        table.update(np.array([[1], [2]]), rows=[0, 0])
    with pytest.raises(ValueError, match="num_rows 5 out of range"):
        table.view(5)
    np.testing.assert_array_equal(table.mirror[:3, :3], [[1, 2, -1], [3, 4, -1], [5, 6, 7]])
    assert dict(buffers.upload_counts().by_name) == {"block_table_rows": 3}


def test_step_uploads_and_planned_attention_refuse_bad_indices():
    cache = make()
    storage = cache.storage
    lens = np.array([3])
    with pytest.raises(ValueError, match="slot 2 appears 2 times"):
        storage.upload_step([2, 2], [[0]], lens, [0], [3])
    with pytest.raises(ValueError, match="does not fit a table of 1 blocks"):
        storage.upload_step([1], [[0]], np.array([5]), [0], [5])
    with pytest.raises(ValueError, match="must read 1 .. seq_len keys"):
        storage.upload_step([1], [[0]], lens, [0], [4])
    assert storage.upload_counts().index == 0
    step = storage.upload_step([1], [[0]], lens, [0], [3])
    with pytest.raises(ValueError, match="the tiles read 1 rows of at least 1 blocks"):
        planned_attention(storage.gpu_pool, 0, np.zeros((1, QH, D)),
                          cuda_api().device_array((0, 1), np.int32), step.tiles)
    with pytest.raises(ValueError, match="q must have shape|q has"):
        planned_attention(storage.gpu_pool, 0, np.zeros((2, QH, D)), step.block_tables,
                          step.tiles)


@pytest.mark.parametrize("kv_dtype", ["int8", "fp8"])
def test_a_quantized_cache_writes_and_attends_through_a_plan_as_per_call(kv_dtype):
    model = MODEL.with_kv_dtype(kv_dtype)
    caches = [PagedKVCache(CacheConfig(block_size=4, num_gpu_blocks=4), model)
              for _ in range(2)]
    outs = []
    for cache in caches:
        rng = np.random.default_rng(6)
        a, b = cache.allocate(3), cache.allocate(1)
        plan = cache.plan_step([a, b], num_tokens=[3, 1]) if cache is caches[0] else None
        for layer in range(L):
            k, v = rows(rng, 4), rows(rng, 4)
            if plan is None:
                cache.write_kv_batch(layer, [a, b], k, v, num_tokens=[3, 1])
            else:
                cache.write_kv_batch(layer, plan, k, v)
        decode_plan = cache.plan_step([a, b]) if plan is not None else [a, b]
        outs.append(attention.decode(cache, 0, decode_plan, rows(rng, 2, QH)))
    np.testing.assert_array_equal(outs[0], outs[1])
    assert caches[0].snapshot() == caches[1].snapshot()  # codes and scales


def test_attend_runs_a_mixed_batch_of_prompts_and_decodes_in_one_launch():
    rng = np.random.default_rng(7)
    cache = make()
    a, b, c = cache.allocate(3), cache.allocate(2), cache.allocate(1)
    kept = {a: fill(cache, a, rng, 3), b: fill(cache, b, rng, 2), c: fill(cache, c, rng, 1)}
    cache.append(a)
    cache.append(b, 3)
    plan = cache.plan_step([a, b, c], num_tokens=[1, 3, 0])  # c: attends nothing here
    k, v = rows(rng, 4), rows(rng, 4)
    cache.write_kv_batch(0, plan, k, v)
    q = rows(rng, 4, QH)
    before = cache.storage.upload_counts()
    out = attention.attend(cache, 0, plan, q)
    assert (cache.storage.upload_counts() - before).index == 0
    np.testing.assert_array_equal(out[:1], attention.decode(cache, 0, [a], q[:1]))
    np.testing.assert_array_equal(out[1:], attention.prefill(cache, 0, b, q[1:], q_start=2))
    expected_b = dense_attention(q[1:], np.concatenate([kept[b][0][0], k[1:]]),
                                 np.concatenate([kept[b][0][1], v[1:]]), q_offset=2)
    np.testing.assert_allclose(out[1:], expected_b, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(reference.attend(cache, 0, plan, q), out, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="q has 3 rows for the plan's 4 new tokens"):
        attention.attend(cache, 0, plan, q[:3])


def test_attention_on_another_stream_waits_for_the_plans_uploads(monkeypatch):
    """The plan's indices go up on the default stream; attention launched on another stream
    (PyTorch's are non-blocking: they do not wait for the default stream on their own)
    first waits for an event recorded on the default stream. The spy proves the calls we
    make (record on 0, wait on the attention's stream), not the hardware's ordering."""
    import paged_kv.gpu.device as device_module

    calls = []

    class SpyEvent:
        def record(self, stream=0):
            calls.append(("record", stream))

        def wait(self, stream=0):
            calls.append(("wait", stream))

    cache = make()
    rng = np.random.default_rng(3)
    seq = cache.allocate(3)
    fill(cache, seq, rng, 3)
    plan = cache.plan_step([seq], num_tokens=1, starts=[2])
    q = rows(rng, 1, QH)
    expected = attention.decode(cache, 0, plan, q)
    assert calls == []  # the default stream: nothing to wait for
    stream = cuda_api().stream()
    monkeypatch.setattr(device_module, "new_event", SpyEvent)
    got = attention.decode(cache, 0, plan, q, stream=stream)
    assert calls[:2] == [("record", 0), ("wait", stream)]
    np.testing.assert_array_equal(got, expected)
