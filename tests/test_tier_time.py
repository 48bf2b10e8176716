"""The tier time model: loads from host and disk against recomputing, serial and layer by
layer, held to the scalar step-time model and to an explicit per-layer pipeline."""

import numpy as np
import pytest

from paged_kv.sim.hardware import NVME_READ_BANDWIDTH
from paged_kv.sim.tier_time import (
    TierTime,
    load_versus_recompute,
    shortest_prefix_worth_loading,
    ttft_summary,
)
from paged_kv.sim.timing import calibrated_step_time


def test_the_array_step_equals_the_scalar_step():
    timer = calibrated_step_time("llama-3-8b", "H100")
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, 20_000, 200)
    kv = tokens + rng.integers(0, 20_000, 200)
    pairs = rng.integers(0, 10**8, 200)
    got = timer.step_seconds_array(tokens, kv, pairs, 16)
    expected = [timer.step_seconds(int(t), int(k), int(p), 16)
                for t, k, p in zip(tokens, kv, pairs)]
    assert np.allclose(got, expected, rtol=1e-12, atol=0)


def test_serial_ttft_by_hand():
    time = TierTime.of("opt-13b", "A100-40GB", 16)
    timer = time.step_time
    block_bytes = 16 * 819_200
    host = block_bytes / (0.8 * 32e9) + 2 * 40 * 5e-6
    disk = max(block_bytes / NVME_READ_BANDWIDTH, host)
    assert time.host_block_seconds == pytest.approx(host)
    assert time.disk_block_seconds == pytest.approx(block_bytes / 6.5e9)
    # 96 tokens on the GPU, 64 from host, 32 from disk, 34 computed after them
    n, c = 226, 192
    got = time.ttft_seconds([n], [96], [64], [32])
    prefill = timer.step_seconds(n - c, n, (n * (n + 1) - c * (c + 1)) // 2, 16)
    assert got[0] == pytest.approx(4 * host + 2 * disk + prefill)
    assert time.recompute_seconds([n])[0] == pytest.approx(
        timer.step_seconds(n, n, n * (n + 1) // 2, 16))
    # a swap of the same blocks costs the same on the host link
    assert 4 * host == pytest.approx(timer.swap_seconds(4, 16))


def pipeline(loads, computes):
    """An explicit two-stage pipeline: layer l computes once its load and layer l-1 are done."""
    load_done = compute_done = 0.0
    for load, compute in zip(loads, computes):
        load_done += load
        compute_done = max(compute_done, load_done) + compute
    return compute_done


@pytest.mark.parametrize("host_blocks", [0, 1, 5, 40, 400])
def test_layerwise_overlap_is_a_per_layer_pipeline(host_blocks):
    time = TierTime.of("llama-2-7b", "A100-80GB", 16, mode="layerwise")
    layers = time.step_time.model.num_layers
    n = host_blocks * 16 + 100
    load = time.load_seconds([host_blocks], [0])[0]
    prefill = time.prefill_seconds([n], [host_blocks * 16])[0]
    expected = pipeline([load / layers] * layers, [prefill / layers] * layers)
    got = time.ttft_seconds([n], [0], [host_blocks * 16], [0])[0]
    assert got == pytest.approx(expected, rel=1e-12)
    serial = TierTime.of("llama-2-7b", "A100-80GB", 16)
    assert got <= serial.ttft_seconds([n], [0], [host_blocks * 16], [0])[0]


def test_gpu_hits_cost_no_load_and_modes_agree_without_lower_hits():
    serial = TierTime.of("llama-3-8b", "H100", 16)
    layerwise = TierTime.of("llama-3-8b", "H100", 16, mode="layerwise")
    args = ([1000, 50], [992, 48], [0, 0], [0, 0])
    assert np.array_equal(serial.ttft_seconds(*args), serial.prefill_seconds([1000, 50],
                                                                           [992, 48]))
    assert np.allclose(layerwise.ttft_seconds(*args), serial.ttft_seconds(*args))


def test_the_shortest_prefix_worth_loading_is_the_first_that_beats_recomputing():
    for mode in ("serial", "layerwise"):
        time = TierTime.of("llama-3-8b", "A100-80GB", 16, mode=mode)
        for tier in ("host", "disk"):
            best = shortest_prefix_worth_loading(time, tier, new_tokens=1, max_tokens=4096)
            curve = load_versus_recompute(time, tier, new_tokens=1, max_tokens=4096)
            wins = curve["load_s"] < curve["recompute_s"]
            assert best == int(curve["prefix_tokens"][np.argmax(wins)])
            assert not wins[: best // 16 - 1].any() and wins[best // 16 - 1]
            # by hand at that prefix: serial load + prefill of 1 token against all
            blocks = best // 16
            n = best + 1
            load = blocks * (time.host_block_seconds if tier == "host"
                             else time.disk_block_seconds)
            prefill = time.prefill_seconds([n], [best])[0]
            total = load + prefill if mode == "serial" else (
                max(load, prefill) + min(load, prefill) / 32)
            assert total < time.recompute_seconds([n])[0]
    # loading a prefix that a compute-bound prefill would recompute wins at once
    time = TierTime.of("llama-3-8b", "A100-80GB", 16)
    assert shortest_prefix_worth_loading(time, "host", new_tokens=2048) == 16


def test_a_slow_disk_is_never_worth_loading_within_the_limit():
    time = TierTime.of("opt-13b", "H100", 16, disk_bandwidth=1e8)
    assert shortest_prefix_worth_loading(time, "disk", max_tokens=2048) is None


def test_summary_numbers():
    s = ttft_summary([1.0, 2.0, 3.0, 10.0], [4.0, 4.0, 6.0, 10.0], [100, 100, 200, 300],
                     [50, 50, 100, 0])
    assert s["ttft_mean_s"] == 4.0 and s["recompute_mean_s"] == 6.0
    assert s["ttft_p50_s"] == 2.5
    assert s["ttft_reduction_pct"] == pytest.approx(100 / 3)
    assert s["prefill_throughput_x"] == 1.5
    assert s["prefill_tokens_saved"] == 200 and s["prefill_saved_share"] == 200 / 700


def test_bad_values_are_refused():
    timer = calibrated_step_time()
    with pytest.raises(ValueError, match="load mode"):
        TierTime(timer, 16, mode="async")
    with pytest.raises(ValueError, match="disk_bandwidth"):
        TierTime(timer, 16, disk_bandwidth=0)
    with pytest.raises(ValueError, match="block_size"):
        TierTime(timer, 0)
    with pytest.raises(ValueError, match="step_time"):
        TierTime("opt-13b", 16)
    time = TierTime(timer, 16)
    with pytest.raises(ValueError, match="whole blocks"):
        time.ttft_seconds([100], [0], [10], [0])
    with pytest.raises(ValueError, match="tier"):
        load_versus_recompute(time, "gpu")
