"""The step-time models and the hardware/model tables behind them."""

import dataclasses

import pytest

from paged_kv.core.config import get_model
from paged_kv.sim.hardware import GPU_PRESETS, MODEL_COMPUTE, get_gpu, model_compute
from paged_kv.sim.timing import (
    CALIBRATION,
    RooflineStepTime,
    StepTimeModel,
    calibrated_step_time,
)


def test_roofline_step_by_hand():
    timer = calibrated_step_time("opt-13b", "A100-40GB", memory_efficiency=0.5,
                                 compute_efficiency=0.5, overhead_s=0.002,
                                 paged_overhead_tokens=4.0)
    weights = model_compute("opt-13b").weight_bytes
    kv = 819_200
    # decode of 30 sequences holding 15,000 tokens, paged blocks of 16: memory-bound
    read = weights + kv * (15_000 * (1 + 4 / 16) + 30)
    expected = read / (0.5 * 1555e9) + 0.002
    assert timer.step_seconds(30, 15_000, 15_000, 16) == pytest.approx(expected)
    # contiguous KV reads carry no paged overhead
    read = weights + kv * (15_000 + 30)
    assert timer.step_seconds(30, 15_000, 15_000, None) == pytest.approx(
        read / (0.5 * 1555e9) + 0.002)
    # a 2,000-token prefill is compute-bound: 2 N tokens + 4 layers hidden pairs
    pairs = 2000 * 2001 // 2
    flops = 2 * model_compute("opt-13b").num_params * 2000 + 4 * 40 * 5120 * pairs
    assert timer.step_seconds(2000, 2000, pairs, 16) == pytest.approx(
        flops / (0.5 * 312e12) + 0.002)


def test_small_blocks_read_kv_slowly_and_swap_slowly():
    timer = calibrated_step_time()
    steps = [timer.step_seconds(30, 15_000, 15_000, b) for b in (1, 4, 16, 256)]
    assert steps == sorted(steps, reverse=True)
    # the same bytes in 1-token blocks swap slower than in 256-token blocks
    assert timer.swap_seconds(256, 1) > 2 * timer.swap_seconds(1, 256)
    assert timer.swap_seconds(0, 16) == 0.0
    per_block = 16 * 819_200 / (0.8 * 32e9) + 2 * 40 * 5e-6
    assert timer.swap_seconds(10, 16) == pytest.approx(10 * per_block)


def test_calibration_constants_are_the_defaults_and_say_whose_they_are():
    timer = calibrated_step_time()
    for name, entry in CALIBRATION.items():
        assert getattr(timer, name) == entry["value"]
        assert entry["status"] in ("fitted", "inferred", "choice") and entry["note"]


def test_another_kv_dtype_changes_the_kv_bytes_only():
    fp32 = dataclasses.replace(get_model("opt-13b"), dtype="float32")
    half, full = calibrated_step_time("opt-13b"), calibrated_step_time(fp32)
    assert full.model.bytes_per_token == 2 * half.model.bytes_per_token
    assert full.step_seconds(1, 10_000, 10_000, 16) > half.step_seconds(1, 10_000, 10_000, 16)
    assert get_model(fp32) is fp32 and get_model("llama-13b").bytes_per_token == 819_200


def test_presets_and_bad_values():
    assert {"A100-40GB", "A100-80GB", "H100", "H200"} <= set(GPU_PRESETS)
    assert all(g.source for g in GPU_PRESETS.values())
    assert all(m.source for m in MODEL_COMPUTE.values())
    assert 12.8e9 < MODEL_COMPUTE["opt-13b"].num_params < 12.9e9
    assert get_gpu("H200").memory_bandwidth > get_gpu("H100").memory_bandwidth
    with pytest.raises(ValueError, match="valid names"):
        get_gpu("V100")
    with pytest.raises(ValueError, match="no compute shape"):
        model_compute("tiny")
    with pytest.raises(ValueError, match="memory_efficiency"):
        calibrated_step_time(memory_efficiency=1.5)
    with pytest.raises(ValueError, match="base_s"):
        StepTimeModel(base_s=0.0)
    assert isinstance(calibrated_step_time(gpu="H100"), RooflineStepTime)
