"""Request, Workload and the synthetic generators (lengths, arrivals, seeds, bad input)."""

import dataclasses
import math

import numpy as np
import pytest

from paged_kv.sim import (
    Request,
    Workload,
    alpaca_like,
    arrival_times,
    published,
    sharegpt_like,
    synthetic_workload,
)
from paged_kv.sim.workloads import ALPACA_LIKE, SHAREGPT_LIKE, SYNTHETIC_WORKLOADS

# --- Request ----------------------------------------------------------------------


def test_request_fields_and_total_len():
    r = Request(3, 1.5, 10, 20)
    assert (r.request_id, r.arrival_time, r.prompt_len, r.output_len) == (3, 1.5, 10, 20)
    assert r.total_len == 30
    assert r.block_keys is None and r.key_block_size is None


def test_request_is_frozen_and_slotted():
    r = Request(0, 0.0, 1, 1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.prompt_len = 5
    assert not hasattr(r, "__dict__")


def test_request_normalises_numpy_scalars_and_key_lists():
    r = Request(np.int64(1), np.float32(2.0), np.int32(7), np.int64(3), [np.int64(5)], 16)
    assert type(r.request_id) is int and type(r.prompt_len) is int
    assert type(r.output_len) is int and type(r.arrival_time) is float
    assert r.block_keys == (5,) and type(r.block_keys[0]) is int


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"request_id": -1}, "request_id"),
        ({"request_id": 1.0}, "request_id"),
        ({"request_id": True}, "request_id"),
        ({"arrival_time": -0.1}, "arrival_time"),
        ({"arrival_time": math.nan}, "arrival_time"),
        ({"arrival_time": math.inf}, "arrival_time"),
        ({"arrival_time": "1"}, "arrival_time"),
        ({"prompt_len": 0}, "prompt_len"),
        ({"prompt_len": 2.0}, "prompt_len"),
        ({"output_len": 0}, "output_len"),
        ({"output_len": -3}, "output_len"),
        ({"block_keys": (1,)}, "key_block_size"),  # keys without their block size
        ({"key_block_size": 16}, "key_block_size"),  # block size without keys
        ({"block_keys": (1,), "key_block_size": 0}, "key_block_size"),
        ({"block_keys": (), "key_block_size": 16}, "block_keys"),
        # ceil(32 / 16) = 2 blocks, so at most 2 keys; ceil(33 / 16) = 3
        ({"block_keys": (1, 2, 3), "key_block_size": 16, "prompt_len": 32}, "block_keys"),
        ({"block_keys": (1, 2, 3, 4), "key_block_size": 16}, "block_keys"),
        ({"block_keys": (1, "x"), "key_block_size": 16}, "block_keys"),
        ({"block_keys": "ab", "key_block_size": 16}, "block_keys"),
    ],
)
def test_request_rejects_bad_fields(kwargs, field):
    args = {"request_id": 0, "arrival_time": 0.0, "prompt_len": 33, "output_len": 1}
    args.update(kwargs)
    with pytest.raises(ValueError, match=field):
        Request(**args)


def test_request_key_count_limit_is_ceil_of_prompt_blocks():
    assert Request(0, 0.0, 33, 1, (1, 2, 3), 16).block_keys == (1, 2, 3)  # partial 3rd
    assert Request(0, 0.0, 33, 1, (1, 2), 16).block_keys == (1, 2)  # full blocks only


# --- Workload ---------------------------------------------------------------------


def _workload() -> Workload:
    return Workload(
        "toy",
        [Request(0, 0.0, 10, 5), Request(1, 0.5, 100, 100), Request(2, 0.5, 3, 1),
         Request(7, 2.0, 1000, 2000)],
        {"source": "test"},
    )


def test_workload_len_iter_getitem_and_tuple_storage():
    w = _workload()
    assert len(w) == 4
    assert [r.request_id for r in w] == [0, 1, 2, 7]
    assert w[3].request_id == 7
    assert isinstance(w.requests, tuple)
    assert "4 requests" in repr(w)


def test_workload_requires_arrival_order_and_unique_ids():
    with pytest.raises(ValueError, match="arrival order"):
        Workload("w", [Request(0, 1.0, 1, 1), Request(1, 0.5, 1, 1)])
    with pytest.raises(ValueError, match="unique request_id"):
        Workload("w", [Request(0, 0.0, 1, 1), Request(0, 1.0, 1, 1)])
    with pytest.raises(ValueError, match="Request objects"):
        Workload("w", [(0, 0.0, 1, 1)])
    with pytest.raises(ValueError, match="name"):
        Workload("", [])


def test_workload_metadata_is_copied():
    meta = {"source": "x"}
    w = Workload("w", [], meta)
    meta["source"] = "changed"
    assert w.metadata == {"source": "x"}


def test_to_dataframe_columns_and_values():
    w = Workload("w", [Request(0, 0.0, 10, 5), Request(4, 1.0, 600, 2, (9, 8), 512)])
    df = w.to_dataframe()
    assert list(df.columns) == ["request_id", "arrival_time", "prompt_len", "output_len",
                                "total_len", "block_keys", "key_block_size"]
    assert df["request_id"].tolist() == [0, 4]
    assert df["arrival_time"].tolist() == [0.0, 1.0]
    assert df["total_len"].tolist() == [15, 602]
    assert df["block_keys"].tolist() == [None, (9, 8)]
    assert df["key_block_size"].isna().tolist() == [True, False]
    assert df["key_block_size"].iloc[1] == 512


def test_head():
    w = _workload()
    h = w.head(2)
    assert [r.request_id for r in h] == [0, 1]
    assert h.metadata == {"source": "test", "head": 2}
    assert len(w.head(100)) == 4 and len(w.head(0)) == 0
    with pytest.raises(ValueError, match="n must be"):
        w.head(-1)


def test_filter_max_len_drops_and_records():
    w = _workload()  # totals 15, 200, 4, 3000
    f = w.filter_max_len(200)  # 200 is kept: the limit is inclusive
    assert [r.request_id for r in f] == [0, 1, 2]
    assert f.metadata["num_dropped_max_len"] == 1 and f.metadata["max_len"] == 200
    g = f.filter_max_len(10)  # drops 15 and 200 as well: 3 dropped in all
    assert [r.request_id for r in g] == [2]
    assert g.metadata["num_dropped_max_len"] == 3 and g.metadata["max_len"] == 10
    assert len(w) == 4 and "max_len" not in w.metadata  # the original is untouched
    with pytest.raises(ValueError, match="max_len"):
        w.filter_max_len(1)


def test_with_arrivals_returns_a_copy():
    w = _workload()
    v = w.with_arrivals(np.array([1.0, 2.0, 2.0, 3.0]))
    assert [r.arrival_time for r in v] == [1.0, 2.0, 2.0, 3.0]
    assert [(r.request_id, r.prompt_len, r.output_len) for r in v] == [
        (r.request_id, r.prompt_len, r.output_len) for r in w
    ]
    assert v.metadata["arrivals"] == "replaced"
    assert [r.arrival_time for r in w] == [0.0, 0.5, 0.5, 2.0]
    assert [r.arrival_time for r in w.with_arrivals(iter([0, 0, 0, 0]))] == [0.0] * 4
    with pytest.raises(ValueError, match="4 values"):
        w.with_arrivals([1.0, 2.0])
    with pytest.raises(ValueError, match="arrival order"):
        w.with_arrivals([3.0, 2.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="arrival_time"):
        w.with_arrivals([-1.0, 2.0, 2.0, 3.0])


def test_from_arrays_numbers_requests_from_zero():
    w = Workload.from_arrays("w", [0.0, 1.0], np.array([5, 6]), [7, 8], {"a": 1})
    assert [(r.request_id, r.arrival_time, r.prompt_len, r.output_len) for r in w] == [
        (0, 0.0, 5, 7), (1, 1.0, 6, 8)]
    with pytest.raises(ValueError, match="equal lengths"):
        Workload.from_arrays("w", [0.0], [1, 2], [1, 2])


# --- synthetic lengths ------------------------------------------------------------


@pytest.mark.parametrize(
    "make, prompt_mean, output_mean",
    [
        (sharegpt_like, published.VLLM_SHAREGPT_MEAN_PROMPT_LEN,
         published.VLLM_SHAREGPT_MEAN_OUTPUT_LEN),
        (alpaca_like, published.VLLM_ALPACA_MEAN_PROMPT_LEN,
         published.VLLM_ALPACA_MEAN_OUTPUT_LEN),
    ],
)
def test_synthetic_means_match_the_vllm_paper(make, prompt_mean, output_mean):
    df = make(100_000, 10.0, seed=1).to_dataframe()
    assert df["prompt_len"].mean() == pytest.approx(prompt_mean, rel=0.02)
    assert df["output_len"].mean() == pytest.approx(output_mean, rel=0.02)
    assert df["prompt_len"].min() >= 1 and df["output_len"].min() >= 1
    assert df["total_len"].max() <= 2048


def test_published_means_are_the_vllm_numbers():
    assert (SHAREGPT_LIKE.prompt_mean, SHAREGPT_LIKE.output_mean) == (161.31, 337.99)
    assert (ALPACA_LIKE.prompt_mean, ALPACA_LIKE.output_mean) == (19.31, 58.45)


def test_means_hold_under_a_tight_max_len():
    # At max_len=512 a third of ShareGPT-like outputs would overflow; mu compensates.
    w = sharegpt_like(50_000, 1.0, seed=2, max_len=512)
    df = w.to_dataframe()
    assert df["total_len"].max() <= 512
    assert df["output_len"].mean() == pytest.approx(337.99, rel=0.02)
    assert df["prompt_len"].mean() == pytest.approx(161.31, rel=0.02)


def test_log_means_without_cap_match_the_lognormal_formula():
    # Unclipped lognormal: mean = exp(mu + sigma^2 / 2), so mu = ln(mean) - sigma^2 / 2.
    # The clip at 1 token moves these by far less than the tolerance.
    for model in SYNTHETIC_WORKLOADS.values():
        mu_p, mu_o = model.log_means(None)
        assert mu_p == pytest.approx(math.log(model.prompt_mean) - model.prompt_sigma**2 / 2,
                                     abs=2e-3)
        assert mu_o == pytest.approx(math.log(model.output_mean) - model.output_sigma**2 / 2,
                                     abs=2e-3)


def test_max_len_none_and_unreachable_mean():
    w = alpaca_like(1000, 1.0, seed=0, max_len=None)
    assert w.metadata["max_len"] is None
    with pytest.raises(ValueError, match="max_len=16"):
        alpaca_like(10, 1.0, max_len=16)  # mean prompt 19.31 > 15, the longest allowed
    for bad in (1, 0, 2.5, "2048"):
        with pytest.raises(ValueError, match="max_len"):
            sharegpt_like(10, 1.0, max_len=bad)


# --- seeds ------------------------------------------------------------------------


def test_same_seed_reproduces_exactly_and_other_seeds_differ():
    assert sharegpt_like(500, 3.0, seed=7) == sharegpt_like(500, 3.0, seed=7)
    a = sharegpt_like(500, 3.0, seed=7).to_dataframe()
    b = sharegpt_like(500, 3.0, seed=8).to_dataframe()
    assert not np.array_equal(a["prompt_len"], b["prompt_len"])
    assert not np.array_equal(a["arrival_time"], b["arrival_time"])
    np.testing.assert_array_equal(arrival_times(50, 2.0, seed=1), arrival_times(50, 2.0, seed=1))
    assert not np.array_equal(arrival_times(50, 2.0, seed=1), arrival_times(50, 2.0, seed=2))


def test_lengths_do_not_depend_on_the_arrival_process():
    base = sharegpt_like(300, 1.0, seed=4).to_dataframe()
    for other in (sharegpt_like(300, 50.0, seed=4),
                  sharegpt_like(300, 1.0, seed=4, process="gamma", cv=3.0)):
        df = other.to_dataframe()
        np.testing.assert_array_equal(df["prompt_len"], base["prompt_len"])
        np.testing.assert_array_equal(df["output_len"], base["output_len"])
        assert not np.array_equal(df["arrival_time"], base["arrival_time"])


def test_workload_arrivals_equal_arrival_times_with_the_same_seed():
    w = alpaca_like(200, 4.0, seed=9, process="gamma", cv=2.0)
    np.testing.assert_array_equal(
        w.to_dataframe()["arrival_time"], arrival_times(200, 4.0, process="gamma", cv=2.0, seed=9)
    )


def test_poisson_times_scale_with_rate():
    np.testing.assert_allclose(arrival_times(100, 1.0, seed=3) / 5.0,
                               arrival_times(100, 5.0, seed=3), rtol=1e-12)


# --- arrivals ---------------------------------------------------------------------


@pytest.mark.parametrize("process, cv", [("poisson", 1.0), ("gamma", 0.5), ("gamma", 4.0)])
def test_arrival_rate_and_cv(process, cv):
    times = arrival_times(200_000, 8.0, process=process, cv=cv, seed=11)
    assert np.all(np.diff(times) >= 0) and times[0] > 0
    assert len(times) / times[-1] == pytest.approx(8.0, rel=0.03)
    gaps = np.diff(np.concatenate([[0.0], times]))
    assert gaps.std() / gaps.mean() == pytest.approx(cv, rel=0.05)


def test_gamma_with_cv_one_is_the_poisson_process():
    np.testing.assert_array_equal(arrival_times(1000, 3.0, process="gamma", cv=1.0, seed=5),
                                  arrival_times(1000, 3.0, seed=5))


def test_infinite_rate_is_an_offline_batch_and_zero_requests_is_empty():
    np.testing.assert_array_equal(arrival_times(5, math.inf), np.zeros(5))
    assert arrival_times(0, 1.0).shape == (0,)
    assert len(sharegpt_like(0, 1.0)) == 0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"n": -1}, "n must be .* got -1"),
        ({"n": 2.0}, "n must be"),
        ({"rate": 0.0}, "rate must be .* got 0.0"),
        ({"rate": -2.0}, "rate must be .* got -2.0"),
        ({"rate": math.nan}, "rate must be"),
        ({"rate": "1"}, "rate must be"),
        ({"process": "uniform"}, "'uniform'; valid names: poisson, gamma"),
        ({"process": "gamma", "cv": 0.0}, "cv must be .* got 0.0"),
        ({"process": "gamma", "cv": math.inf}, "cv must be"),
        ({"cv": 2.0}, "cv=2.0 needs process='gamma'"),
        ({"seed": -1}, "seed must be .* got -1"),
        ({"seed": None}, "seed must be"),
    ],
)
def test_arrival_times_rejects_bad_input(kwargs, match):
    args = {"n": 10, "rate": 1.0}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        arrival_times(args.pop("n"), args.pop("rate"), **args)


def test_generators_reject_bad_input():
    with pytest.raises(ValueError, match="num_requests must be .* got -5"):
        sharegpt_like(-5, 1.0)
    with pytest.raises(ValueError, match="rate must be .* got -1"):
        alpaca_like(5, -1)


# --- dispatch ---------------------------------------------------------------------


def test_synthetic_workload_dispatches_by_name():
    assert synthetic_workload("sharegpt-like", 50, 2.0, seed=3) == sharegpt_like(50, 2.0, seed=3)
    assert synthetic_workload("alpaca-like", 50, 2.0, seed=3) == alpaca_like(50, 2.0, seed=3)
    assert alpaca_like(5, 1.0).name == "alpaca-like"


def test_synthetic_workload_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="'lmsys'; valid names: sharegpt-like, alpaca-like"):
        synthetic_workload("lmsys", 10, 1.0)


def test_metadata_records_the_generator_settings():
    meta = sharegpt_like(10, 2.5, seed=6, process="gamma", cv=2.0, max_len=4096).metadata
    assert meta["source"] == "synthetic" and meta["length_model"] == "sharegpt-like"
    assert (meta["rate"], meta["process"], meta["cv"], meta["seed"], meta["max_len"]) == (
        2.5, "gamma", 2.0, 6, 4096)
    assert (meta["prompt_sigma"], meta["output_sigma"]) == (2.0, 1.0)
    assert "vLLM" in meta["calibrated_to"]
