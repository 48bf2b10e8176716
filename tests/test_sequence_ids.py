"""Sequence ids are ids: every method that takes one accepts a Python or NumPy integer
and refuses anything else (a float, a bool, a string, None) with a `ValueError` naming
the argument, changing nothing. ``0.0``, ``False`` and ``np.float64(0)`` compare equal
to ``0`` and hash like it: unchecked, they would reach sequence 0, someone else's.

The methods are found by their parameters (``seq_id``, ``seq_ids``, ``child_id``), so a
method added later must be listed in `CALLS` before this file passes. K and V arrays
are checked the same way: None or a non-array names ``k`` or ``v``.
"""

import inspect

import numpy as np
import pytest

import paged_kv.cache.attention as device_attention
import paged_kv.reference.attention as reference_attention
from paged_kv import CacheConfig, get_model
from paged_kv.cache import PagedKVCache

MODEL = get_model("tiny")  # 2 layers, 2 KV heads, head_dim 8, float16
H, D = MODEL.num_kv_heads, MODEL.head_dim
ID_PARAMS = {"seq_id", "seq_ids", "child_id"}

#: values that are not sequence ids; the first three equal 0 (sequence 0 is live)
BAD_IDS = [0.0, np.float64(0), False, True, 1.0, "0", None, np.bool_(False)]


def make():
    cache = PagedKVCache(CacheConfig(block_size=4, num_gpu_blocks=8, num_host_blocks=8,
                                     enable_prefix_caching=True), MODEL)
    a, b = cache.allocate(6), cache.allocate(3)  # ids 0 and 1
    rng = np.random.default_rng(0)
    for seq, n in ((a, 6), (b, 3)):
        for layer in range(MODEL.num_layers):
            cache.write_kv(seq, layer, *kv(rng, n))
    return cache


def kv(rng, n):
    return (rng.standard_normal((n, H, D)).astype(np.float16),
            rng.standard_normal((n, H, D)).astype(np.float16))


def q_rows(n):
    return np.ones((n, MODEL.q_heads, D), np.float32)


# method -> (the id parameter, a call with `bad` in its place)
CALLS = {
    "get": ("seq_id", lambda c, bad: c.get(bad)),
    "num_tokens": ("seq_id", lambda c, bad: c.num_tokens(bad)),
    "num_cached_tokens": ("seq_id", lambda c, bad: c.num_cached_tokens(bad)),
    "num_computed_tokens": ("seq_id", lambda c, bad: c.num_computed_tokens(bad)),
    "try_allocate": ("seq_id", lambda c, bad: c.try_allocate(4, seq_id=bad)),
    "allocate": ("seq_id", lambda c, bad: c.allocate(4, seq_id=bad)),
    "commit": ("seq_id", lambda c, bad: c.commit(bad)),
    "can_append": ("seq_id", lambda c, bad: c.can_append(bad)),
    "append": ("seq_id", lambda c, bad: c.append(bad)),
    "append_cost": ("seq_ids", lambda c, bad: c.append_cost([bad])),
    "append_many": ("seq_ids", lambda c, bad: c.append_many([1, bad])),
    "free": ("seq_id", lambda c, bad: c.free(bad)),
    "fork": ("seq_id", lambda c, bad: c.fork(bad)),
    "write_kv": ("seq_id", lambda c, bad: c.write_kv(bad, 0, *kv(np.random.default_rng(1), 1),
                                                      start=2)),
    "write_kv_batch": ("seq_ids", lambda c, bad: c.write_kv_batch(
        0, [bad], *kv(np.random.default_rng(1), 1), num_tokens=[1], starts=[2])),
    "slot_mapping": ("seq_id", lambda c, bad: c.slot_mapping(bad, 0, 1)),
    "read_kv": ("seq_id", lambda c, bad: c.read_kv(bad, 0)),
    "read_kv_batch": ("seq_ids", lambda c, bad: c.read_kv_batch(0, [1, bad])),
    "can_swap_out": ("seq_ids", lambda c, bad: c.can_swap_out([bad])),
    "can_swap_in": ("seq_ids", lambda c, bad: c.can_swap_in([bad])),
    "swap_out": ("seq_ids", lambda c, bad: c.swap_out([bad])),
    "swap_in": ("seq_ids", lambda c, bad: c.swap_in([bad])),
    "plan_step": ("seq_ids", lambda c, bad: c.plan_step([1, bad])),
}
CHILD_ID = lambda c, bad: c.fork(1, child_id=bad)  # noqa: E731
ATTENTION = {
    "reference prefill": ("seq_id", lambda c, bad: reference_attention.prefill(
        c, 0, bad, q_rows(1))),
    "reference decode": ("seq_ids", lambda c, bad: reference_attention.decode(
        c, 0, [bad], q_rows(1))),
    "device prefill": ("seq_id", lambda c, bad: device_attention.prefill(
        c, 0, bad, q_rows(1))),
    "device decode": ("seq_ids", lambda c, bad: device_attention.decode(
        c, 0, [bad], q_rows(1))),
}


def _methods_taking_ids():
    return {name for name, fn in inspect.getmembers(PagedKVCache, inspect.isfunction)
            if not name.startswith("_")
            and ID_PARAMS & set(inspect.signature(fn).parameters)}


def test_every_method_taking_a_sequence_id_is_checked_here():
    assert _methods_taking_ids() == set(CALLS)


@pytest.fixture(scope="module")
def cache():
    return make()


#: where None means "choose an id for me"
NONE_ALLOWED = {"allocate", "try_allocate", "fork child_id"}
CASES = [pytest.param(what, param, call, bad, id=f"{what} {bad!r}")
         for what, (param, call) in {**CALLS, **ATTENTION,
                                     "fork child_id": ("child_id", CHILD_ID)}.items()
         for bad in BAD_IDS if not (bad is None and what in NONE_ALLOWED)]


@pytest.mark.parametrize("what, param, call, bad", CASES)
def test_a_sequence_id_that_is_not_an_integer_is_refused_naming_it(cache, what, param, call,
                                                                   bad):
    before = cache.snapshot()
    failures = cache.stats().allocation_failures
    with pytest.raises(ValueError, match=param) as err:
        call(cache, bad)
    assert repr(bad) in str(err.value) or param == "seq_ids"
    assert cache.snapshot() == before
    assert cache.stats().allocation_failures == failures
    assert cache.handles() == [0, 1]


def test_a_list_of_ids_names_the_position_of_the_bad_one(cache):
    with pytest.raises(ValueError, match=r"seq_ids\[1\] must be a sequence id.*got False"):
        cache.read_kv_batch(0, [1, False])
    for bad in (True, "01", None, 1.5):
        with pytest.raises(ValueError, match="seq_ids"):
            cache.swap_out(bad)


def test_numpy_integer_ids_are_ids(cache):
    assert cache.num_tokens(np.int64(0)) == 6
    assert cache.get(np.int32(1)).seq_id == 1
    k, v = cache.read_kv(np.uint8(1), 0)
    assert k.shape == (3, H, D)
    assert cache.append_cost(np.array([0, 1])) == 0
    child = cache.fork(np.int64(1), child_id=np.int16(7))
    assert child == 7 and type(child) is int and cache.handles() == [0, 1, 7]
    cache.free(np.int64(7))
    assert cache.handles() == [0, 1]


def test_membership_of_something_not_an_id_is_false(cache):
    assert 0 in cache and np.int64(1) in cache
    assert 0.0 not in cache and False not in cache and "0" not in cache


@pytest.mark.parametrize("bad", [None, [[1.0]], 3.0, "kv"], ids=repr)
@pytest.mark.parametrize("which", ["k", "v"])
def test_k_and_v_must_be_arrays(cache, which, bad):
    good_k, good_v = kv(np.random.default_rng(2), 1)
    before = cache.snapshot()
    for call in (
        lambda k, v: cache.write_kv(1, 0, k, v, start=2),
        lambda k, v: cache.write_kv_batch(0, [1], k, v, num_tokens=[1], starts=[2]),
    ):
        args = (bad, good_v) if which == "k" else (good_k, bad)
        with pytest.raises(ValueError, match=f"^{which} must be an array"):
            call(*args)
    assert cache.snapshot() == before
