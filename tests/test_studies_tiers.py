"""The tier study at a small size: rows held to the replay and the time model by hand."""

import numpy as np
import pytest

from paged_kv.sim import published
from paged_kv.sim.replay import replay
from paged_kv.sim.tier_time import TierTime, shortest_prefix_worth_loading
from paged_kv.sim.timing import calibrated_step_time
from paged_kv.studies import tiers


@pytest.fixture(scope="module")
def sessions():
    setting = tiers.SESSIONS_SETTING
    trace = tiers.tier_workload(setting, sessions=80, seed=1)
    return setting, trace, tiers.tier_sweep(setting, trace, placements=["write_back"],
                                            tier_policies=["arc"], progress=False)


def test_a_row_is_the_manager_replay_timed_by_hand(sessions):
    setting, trace, frame = sessions
    assert len(frame) == len(setting.host_bytes) * len(setting.disk_bytes)
    row = frame[(frame["host_bytes"] == 64 * 10**9) & (frame["disk_bytes"] == 0)].iloc[0]
    host_blocks = 64 * 10**9 // (64 * 819_200)
    assert row["host_blocks"] == host_blocks == 1220
    assert row["gpu_blocks"] == setting.gpu_blocks() == frame.attrs["gpu_blocks"]
    result = replay(trace.to_workload(), setting.gpu_blocks(), "lru", warmup=setting.warmup,
                    host_capacity=host_blocks, host_policy="arc", placement="write_back")
    assert row["hit_rate"] == result.hit_rate
    assert row["host_hit_rate"] == result.tier_hit_rates()["host"] > 0
    measured = result.requests[result.requests["measured"]]
    time = TierTime(calibrated_step_time("llama-13b", "A100-80GB"), 64, mode="layerwise")
    ttft = time.ttft_seconds(measured["prompt_len"], measured["gpu_hit_tokens"],
                             measured["host_hit_tokens"], measured["disk_hit_tokens"])
    assert row["ttft_mean_s_layerwise"] == pytest.approx(ttft.mean(), rel=1e-12)
    assert row["ttft_p99_s_layerwise"] == pytest.approx(np.percentile(ttft, 99), rel=1e-12)
    recompute = time.recompute_seconds(measured["prompt_len"])
    assert row["prefill_throughput_x_layerwise"] == pytest.approx(recompute.sum() / ttft.sum())
    assert row["prefill_tokens_saved"] == measured["hit_tokens"].sum()
    assert row["host_tokens"] == 64 * 10**9 // 819_200


def test_the_papers_comparisons_pick_their_points(sessions):
    _, _, frame = sessions
    at = tiers.cachedattention_comparison(frame)
    assert len(at) == 1 and at["paper_hit_rate"].iloc[0] == 0.86
    chosen = frame[(frame["host_bytes"] == 128 * 10**9) & (frame["disk_bytes"] == 10**13)]
    assert at["hit_rate"].iloc[0] == chosen["hit_rate"].iloc[0]
    setting = tiers.MOONCAKE_SETTING
    mooncake = tiers.tier_sweep(setting, tiers.tier_workload(setting, head=300),
                                placements=["write_through"], tier_policies=["lru"],
                                progress=False)
    fig9 = tiers.mooncake_comparison(mooncake)
    assert fig9["host_tokens"].tolist() == [1_000_000, 2_000_000, 4_000_000, 8_000_000,
                                            10_000_000, 50_000_000]
    curve = published.MOONCAKE_FIG9_CURVES["mooncake-conversation"]
    assert fig9["paper_hit_rate"].tolist() == [curve[t] for t in fig9["host_tokens"]]


def test_the_break_even_table_is_the_time_model_per_preset():
    table = tiers.break_even_table(["llama-3-8b", "opt-13b"], ["H100"], new_tokens=(1,))
    assert table[["model", "gpu"]].values.tolist() == [["llama-3-8b", "H100"],
                                                      ["opt-13b", "H100"]]
    time = TierTime(calibrated_step_time("opt-13b", "H100"), 64)
    assert table["host_serial"].iloc[1] == shortest_prefix_worth_loading(time, "host")
    assert table["disk_serial"].iloc[1] > 8192  # an SSD slower than recomputing OPT-13B
    assert table["disk_serial"].iloc[0] < 1024


def test_setting_sizes_and_bad_workloads():
    assert tiers.SESSIONS_SETTING.blocks(0) == 0
    assert tiers.MOONCAKE_SETTING.blocks(131_072 * 512) == 1
    with pytest.raises(ValueError, match="unknown workload"):
        tiers.tier_study(["sharegpt"], progress=False)
