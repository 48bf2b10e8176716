"""The NumPy reference quantizer (`paged_kv.reference.quantization`) and the KV dtypes in ModelSpec.

FP8 E4M3 is checked against the format's definition written out independently here
(sign, exponent bias 7, three mantissa bits, subnormals, one NaN pattern per sign) and
against a brute-force nearest-value search; int8 against its error bound. The kernels
are held to this module bit for bit in `tests/test_kernels_quantized.py`.
"""

from __future__ import annotations

import numpy as np
import pytest

from paged_kv.core.config import ModelSpec, get_model
from paged_kv.core.kv_dtype import KV_DTYPES
from paged_kv.reference.quantization import (
    FP8_E4M3_MAX,
    dequantize_fp8,
    dequantize_int8,
    fp8_e4m3_decode,
    fp8_e4m3_encode,
    fp8_scales_for,
    quantize_fp8,
    quantize_int8,
    round_trip,
)

ALL_PATTERNS = np.arange(256, dtype=np.uint8)


def e4m3_by_definition(code: int) -> float:
    """The value of E4M3 pattern `code` from the OCP definition (NaN for S.1111.111)."""
    sign = -1.0 if code & 0x80 else 1.0
    exp, mant = (code >> 3) & 0xF, code & 0x7
    if exp == 0xF and mant == 0x7:
        return float("nan")
    if exp == 0:
        return sign * (mant / 8) * 2.0**-6
    return sign * (1 + mant / 8) * 2.0 ** (exp - 7)


def test_every_e4m3_pattern_decodes_to_its_defined_value() -> None:
    got = fp8_e4m3_decode(ALL_PATTERNS)
    want = np.array([e4m3_by_definition(c) for c in range(256)], dtype=np.float32)
    assert got.dtype == np.float32
    assert np.array_equal(got, want, equal_nan=True)
    assert np.flatnonzero(np.isnan(got)).tolist() == [0x7F, 0xFF]
    assert got[0x7E] == 448.0 and got[0xFE] == -448.0 and got[0x01] == 2.0**-9
    assert got[0x38] == 1.0 and np.signbit(got[0x80]) and got[0x80] == 0.0


def test_all_256_e4m3_patterns_round_trip_bit_exactly() -> None:
    """decode then encode gives every pattern back: -0 stays 0x80, and NaN keeps its
    sign bit (0x7F, 0xFF) by the NaN rule."""
    assert np.array_equal(fp8_e4m3_encode(fp8_e4m3_decode(ALL_PATTERNS)), ALL_PATTERNS)


def nearest_pattern(x: float) -> int:
    """Brute force: the finite pattern nearest to `x`, ties to the even pattern, with
    satfinite saturation and the NaN rule (the documented encoding)."""
    if np.isnan(x):
        return 0xFF if np.signbit(x) else 0x7F
    sign = 0x80 if np.signbit(x) else 0
    a = min(abs(x), FP8_E4M3_MAX)  # satfinite: beyond 448 (and inf) is 448
    values = np.array([e4m3_by_definition(c) for c in range(0x7F)])  # 0 .. 448
    dist = np.abs(values - a)
    best = np.flatnonzero(dist == dist.min())
    code = int(best[0]) if len(best) == 1 else int(best[best % 2 == 0][0])
    return code | sign


def test_encoding_is_nearest_ties_to_even_and_saturating() -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal(600) * 10.0 ** rng.uniform(-4, 3, 600)
    midpoints = (fp8_e4m3_decode(ALL_PATTERNS[1:0x7E]) + fp8_e4m3_decode(
        ALL_PATTERNS[2:0x7F])) / 2  # every tie between two neighbours
    specials = [0.0, -0.0, 2.0**-10, 3 * 2.0**-10, 2.0**-6, 447.9, 448.0, 449.0, 464.0,
                465.0, 480.0, 1e30, np.inf, -np.inf, np.nan, -np.nan]
    x = np.concatenate([x, midpoints, -midpoints, specials]).astype(np.float32)
    want = np.array([nearest_pattern(float(v)) for v in x], dtype=np.uint8)
    assert np.array_equal(fp8_e4m3_encode(x), want)


def test_fp8_saturates_at_448_and_infinity_saturates_too() -> None:
    big = np.array([448.0, 449.0, 463.99, 464.0, 1e6, np.inf], dtype=np.float32)
    assert fp8_e4m3_encode(big).tolist() == [0x7E] * 6
    assert fp8_e4m3_encode(-big).tolist() == [0xFE] * 6
    assert fp8_e4m3_decode(fp8_e4m3_encode(big)).tolist() == [448.0] * 6


def test_fp8_scales_divide_before_encoding_and_multiply_after() -> None:
    rng = np.random.default_rng(2)
    x = rng.standard_normal((5, 2, 8)).astype(np.float32) * np.float32([[1.0], [50.0]])
    scales = fp8_scales_for(np.abs(x).max(axis=(0, 2)))
    assert np.allclose(scales * FP8_E4M3_MAX, np.abs(x).max(axis=(0, 2)))
    codes = quantize_fp8(x, scales)
    assert np.array_equal(codes, fp8_e4m3_encode(x / scales[:, None]))
    back = dequantize_fp8(codes, scales)
    # 3 mantissa bits: relative error at most 2^-4 for values in the normal range
    assert np.all(np.abs(back - x) <= np.abs(x) * 2.0**-4 + scales[:, None] * 2.0**-9)
    assert fp8_scales_for(np.array([0.0, np.inf, 896.0])).tolist() == [1.0, 1.0, 2.0]


def test_int8_round_trip_is_within_half_a_step_of_each_scale() -> None:
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((50, 4, 16)) * 10.0 ** rng.uniform(-3, 3, (50, 4, 1)))
    x = x.astype(np.float16)
    codes, scales = quantize_int8(x)
    assert codes.dtype == np.int8 and scales.dtype == np.float32 and scales.shape == (50, 4)
    assert codes.min() >= -127 and np.abs(codes).max(axis=-1).min() == 127  # amax -> +-127
    err = np.abs(dequantize_int8(codes, scales).astype(np.float64) - x.astype(np.float64))
    # half a step, and float32's own rounding of x / scale and of codes * scale
    assert np.all(err <= scales[..., None] * (0.5 + 1e-5))
    assert dequantize_int8(codes, scales, dtype=np.float16).dtype == np.float16


def test_int8_rules_for_nan_infinity_and_zero_rows() -> None:
    x = np.array([[[1.0, -2.0, np.nan, np.inf, -np.inf, 0.5, 0.0, -0.25]],
                  [[0.0] * 8]], dtype=np.float32)
    codes, scales = quantize_int8(x)
    assert scales[0, 0] == np.float32(2.0) / np.float32(127)  # finite amax only
    assert codes[0, 0].tolist() == [64, -127, 0, 127, -127, 32, 0, -16]
    assert scales[1, 0] == 0 and not codes[1].any()


def test_round_trip_per_kv_dtype() -> None:
    rng = np.random.default_rng(4)
    x = rng.standard_normal((6, 2, 8)).astype(np.float16)
    assert np.array_equal(round_trip(x, "float16"), x)
    assert np.array_equal(round_trip(x, "auto"), x)
    int8 = round_trip(x, "int8")
    assert int8.dtype == np.float16 and np.abs(int8 - x).max() < 0.02
    fp8 = round_trip(x, "fp8_e4m3", fp8_scales=np.float32([0.01, 0.02]))
    assert fp8.dtype == np.float16 and np.abs(fp8 - x).max() < 0.2


# -- ModelSpec: the KV dtype and bytes per token ---------------------------------------


def test_opt_13b_bytes_per_token_by_kv_dtype() -> None:
    opt = get_model("opt-13b")
    assert opt.kv_dtype == "auto" and opt.kv.name == "float16"
    assert opt.bytes_per_token == 819_200
    assert opt.with_kv_dtype("float16").bytes_per_token == 819_200
    int8 = opt.with_kv_dtype("int8")
    assert int8.bytes_per_token == 2 * 40 * 40 * (128 + 4) == 422_400  # + float32 scales
    assert int8.dtype == "float16" and int8.kv.storage == "int8"
    fp8 = opt.with_kv_dtype("fp8")  # vLLM's spelling
    assert fp8.kv_dtype == "fp8_e4m3" and fp8.bytes_per_token == 409_600
    assert fp8.bytes_per_block(16) == 16 * 409_600


def test_kv_dtype_is_validated_naming_the_field() -> None:
    with pytest.raises(ValueError, match="ModelSpec.kv_dtype: unknown KV dtype 'int4'"):
        ModelSpec("m", 1, 1, 8, kv_dtype="int4")
    with pytest.raises(ValueError, match="ModelSpec.kv_dtype must be 'auto', 'float16'"):
        ModelSpec("m", 1, 1, 8, kv_dtype="float32")  # an unquantized cache stores dtype
    assert ModelSpec("m", 1, 1, 8, dtype="float32", kv_dtype="FP8").kv_dtype == "fp8_e4m3"
    assert set(KV_DTYPES) == {"float16", "float32", "int8", "fp8_e4m3"}
