"""The studies behind the command line and the notebooks, at small sizes (and one at full)."""

import dataclasses

import numpy as np
import pytest

from paged_kv.core.config import get_model
from paged_kv.studies import fragmentation_study, make_workload, sharing_study
from paged_kv.studies.calibration import fit_memory_efficiency
from paged_kv.studies.sharing import fit_beam_model
from paged_kv.studies.throughput import (
    batch_size_study,
    block_size_latency,
    shared_prefix_study,
    sustained_rate,
    throughput_study,
)


def test_fragmentation_study_in_the_papers_setting():
    # the default run's 3-point goal is checked by tests/test_readme.py on the command
    table = fragmentation_study(duration_s=600, seeds=(0, 1), progress=False).table
    table = table.set_index("key")
    assert list(table["scheme"]) == ["Max", "Pow2", "Oracle", "paged (block 16)"]
    shares = table["token_states_pct"]
    assert shares.is_monotonic_increasing and (table["token_states_sd"] > 0).all()
    # Max's external fragmentation is the buddy allocator's useless tail, 8.85% of the pool
    # (plus the free memory of the first seconds, before seven requests are resident)
    assert 8.85 <= table.loc["max", "external_and_others_pct"] < 9.5
    # shares of the whole pool add up to 100%
    total = table[["token_states_pct", "reservation_pct", "internal_frag_pct",
                   "external_and_others_pct"]].sum(axis=1)
    np.testing.assert_allclose(total, 100.0)
    assert table.loc["oracle", "internal_frag_pct"] == 0.0
    assert table.loc["max", "mean_requests"] == pytest.approx(7.0, abs=0.1)


def test_fragmentation_study_takes_a_model_spec_and_first_fit():
    fp32 = dataclasses.replace(get_model("opt-13b"), dtype="float32")
    study = fragmentation_study(model=fp32, num_requests=120, seeds=(0,), allocator="first-fit",
                                progress=False)
    assert study.settings["kv_slots"] == 15_728 // 2 and study.settings["kv_dtype"] == "float32"
    assert (study.table["scheme"] == ["Max (first-fit)", "Pow2 (first-fit)",
                                      "Oracle (first-fit)", "paged (block 16)"]).all()


def test_fragmentation_study_takes_seeds_from_any_iterable_and_refuses_bad_sizes():
    study = fragmentation_study(num_requests=3, seeds=iter([0]), progress=False)  # TypeError
    assert study.settings["seeds"] == [0]
    with pytest.raises(ValueError, match="at least one seed"):  # KeyError 'seed'
        fragmentation_study(num_requests=3, seeds=(), progress=False)
    with pytest.raises(ValueError, match="block_size"):  # ZeroDivisionError
        fragmentation_study(num_requests=3, seeds=(0,), block_size=0, progress=False)


def test_sustained_rate_brackets_then_bisects():
    calls = []

    def latency(rate):
        calls.append(rate)
        return 0.05 if rate <= 1.3 else 5.0

    assert sustained_rate(latency, (0.5, 1.0, 1.5, 2.0), 0.25) == pytest.approx(1.296875)
    assert calls[:3] == [0.5, 1.0, 1.5]
    assert sustained_rate(lambda r: 9.0, (1.0, 2.0), 0.25) == 0.0

def test_sustained_rate_searches_past_the_grid_top():
    # a knee above the grid: the top (2.0) is not reported as the sustained rate
    calls = []

    def latency(rate):
        calls.append(rate)
        return 0.05 if rate <= 5.0 else 5.0

    assert sustained_rate(latency, (1.0, 2.0), 0.25) == pytest.approx(5.0)
    assert calls[:4] == [1.0, 2.0, 4.0, 8.0]
    # no knee within 2**doublings times the top: refused, not reported as the top
    with pytest.raises(ValueError, match=r"up to 32 req/s \(16x the rate grid's top, 2\)"):
        sustained_rate(lambda r: 0.0, (1.0, 2.0), 0.25)


def test_paged_memory_sustains_more_than_the_baselines():
    study = throughput_study(workloads=("sharegpt-like",), schemes=("max", "oracle", "paged"),
                             rates={"sharegpt-like": (0.25, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0)},
                             duration_s=300, progress=False)
    rate = dict(zip(study.sustained["key"], study.sustained["sustained_rate"]))
    assert 0 < rate["max"] < rate["oracle"] < rate["paged"]
    ratios = study.ratios.iloc[0]
    assert ratios["paged_over_oracle"] == pytest.approx(rate["paged"] / rate["oracle"])
    assert (ratios["paper_oracle_low"], ratios["paper_max_high"]) == (1.7, 8.0)
    curves = study.curves[study.curves["key"] == "paged"]
    assert list(curves["rate"]) == [0.25, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0]
    assert curves["normalized_latency_s"].iloc[0] < 0.1


def test_batch_sizes_and_block_size_latency_small():
    batches = batch_size_study(workloads=("sharegpt-like",), schemes=("max", "paged"),
                               duration_s=120, progress=False)
    assert list(batches["paper_mean_requests"]) == [7.0, 30.42]
    assert batches["mean_requests"].iloc[0] < batches["mean_requests"].iloc[1]
    latency = block_size_latency(block_sizes=(1, 16), rates={"alpaca-like": 5.0},
                                 duration_s=60, progress=False)
    small, default = latency["normalized_latency_s"]
    assert small > default  # one-token blocks read KV slowly (the modelled kernel cost)


def test_shared_prefix_workload_and_study():
    work = make_workload("shared-prefix-341", 20, rate=1.0, seed=0, max_len=2048)
    keys = [r.block_keys for r in work]
    assert all(k[:21] == tuple(range(1, 22)) for k in keys)  # 341 // 16 shared blocks
    assert len({k[21] for k in keys}) == len(keys)  # the block the prefix ends in is not
    assert all(r.prompt_len > 341 for r in work)
    frame = shared_prefix_study(prefix_lens=(341,), duration_s=60, progress=False,
                                rates={"shared-prefix-341": (5.0, 20.0, 60.0)})
    assert frame["speedup"].iloc[0] > 1.5 and frame["paper_speedup"].iloc[0] == 3.58


def test_sharing_study_reports_a_spread_over_seeds():
    table = sharing_study(widths=(2,), workloads=("alpaca-like",), seeds=(0, 1),
                          num_requests=40, progress=False)
    assert list(table["sampling"]) == ["parallel", "beam"]
    assert (table["seeds"] == 2).all() and (table["saved_sd"] >= 0).all()
    assert (table["saved_pct"] > 0).all()
    assert table.loc[1, "saved_pct"] > table.loc[0, "saved_pct"]  # beams share more
    assert (table["paper_low_pct"] < table["paper_high_pct"]).all()


def test_fits_run_small():
    best, table = fit_memory_efficiency((0.6, 0.7), seeds=(0,), duration_s=60,
                                        progress=False)
    assert best in (0.6, 0.7) and len(table) == 2
    # the Orca baselines' batches do not depend on the speed at 2 req/s: memory-bound
    assert table["max_batch"].max() - table["max_batch"].min() < 0.05
    (replacements, exponent), grid = fit_beam_model((4.0, 8.0), (0.0,), seeds=(0,),
                                                    num_requests=30, progress=False)
    assert (replacements, exponent) in {(4.0, 0.0), (8.0, 0.0)} and len(grid) == 2
