"""The NumPy reference of KV quantization: int8 with per-token scales, FP8 E4M3.

The kernels (`paged_kv.gpu.kernels.quantized`, and the dequantizing paged attention) do
the same arithmetic in float32, element by element; tests hold them to this module
bit for bit (codes and scales) and to `paged_kv.reference.attention` over its dequantized KV.
The layouts and bytes per token are in `paged_kv.core.kv_dtype`.

int8 (symmetric, one scale per token and KV head, over the ``head_dim`` values)::

    amax  = max |x| over the finite values           (float32)
    scale = amax / 127                                (float32 division)
    q     = round_half_even(x / scale), clipped to [-127, 127]
    x'    = q * scale                                 |x - x'| <= scale / 2

Rules: NaN stores 0; +-inf stores +-127 (the row's finite amax); a row with no finite
non-zero value has scale 0 and stores zeros.

FP8 E4M3 (OCP "E4M3FN", as NVIDIA's ``__nv_fp8_e4m3`` and vLLM's fp8 cache): bit
pattern ``s eeee mmm``, exponent bias 7, no infinities::

    e = 0        (-1)^s * m/8 * 2^-6          subnormals, 2^-9 .. 7 * 2^-9
    e = 1 .. 15  (-1)^s * (1 + m/8) * 2^(e-7)  except e = 15, m = 7: NaN
    largest finite: 0x7E = 448; 0x7F and 0xFF are NaN

Encoding (``x / scale`` in float32, then): round to nearest, ties to even; saturating
(NVIDIA's ``__NV_SATFINITE``): every magnitude above 448 becomes +-448, and so do
+-infinity; NaN becomes the NaN pattern with the input's sign bit (0x7F or 0xFF), so
decode then encode gives back every one of the 256 patterns; -0 stays -0 (0x80).
Decoding is ``value(pattern) * scale``. FP8 scales are static per (layer, K/V, KV
head); `fp8_scales_for` calibrates them as ``amax / 448`` (vLLM's rule), and vLLM's
default when there is no calibration is 1.0.
"""

from __future__ import annotations

import numpy as np

from paged_kv.core.kv_dtype import AUTO, KV_DTYPES, KVDtype

#: int8 codes are symmetric: [-INT8_MAX, INT8_MAX] (-128 is never stored).
INT8_MAX = 127
#: The largest finite E4M3 value and its bit pattern; the positive NaN pattern.
FP8_E4M3_MAX = 448.0
FP8_E4M3_MAX_CODE = 0x7E
FP8_E4M3_NAN_CODE = 0x7F
#: The smallest normal E4M3 exponent (2^-6); subnormals are multiples of 2^-9.
FP8_E4M3_MIN_EXP = -6

_F32 = np.float32


def quantize_int8(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(codes, scales)``: `x` ``[..., head_dim]`` as int8 codes with one float32 scale
    per row of the last axis (module docstring)."""
    x = np.asarray(x).astype(_F32)
    finite = np.isfinite(x)
    amax = np.max(np.where(finite, np.abs(x), _F32(0)), axis=-1, initial=_F32(0))
    scales = (amax / _F32(INT8_MAX)).astype(_F32)
    with np.errstate(divide="ignore", invalid="ignore"):
        y = x / scales[..., None]
    codes = np.clip(np.rint(y), -INT8_MAX, INT8_MAX)
    codes = np.where(np.isnan(y) | (scales[..., None] == 0), 0, codes)
    return codes.astype(np.int8), scales


def dequantize_int8(codes: np.ndarray, scales: np.ndarray,
                    dtype: np.dtype | str = np.float32) -> np.ndarray:
    """``codes * scales`` in float32 (one scale per row of the last axis), then `dtype`."""
    out = np.asarray(codes).astype(_F32) * np.asarray(scales, dtype=_F32)[..., None]
    return out.astype(dtype)


def fp8_e4m3_encode(x: np.ndarray) -> np.ndarray:
    """E4M3 bit patterns (uint8) of float32 `x`: nearest, ties to even, saturating
    (module docstring for the NaN and infinity rules)."""
    x = np.asarray(x).astype(_F32)
    sign = np.where(np.signbit(x), 0x80, 0)
    a = np.abs(x)
    nan = np.isnan(x)
    with np.errstate(invalid="ignore"):
        big = ~(a <= _F32(FP8_E4M3_MAX)) & ~nan  # above 448, or infinite
        normal = a >= _F32(2.0**FP8_E4M3_MIN_EXP)
        exponent = np.frexp(np.where(big | nan, _F32(1), a))[1].astype(np.int64) - 1
        exponent = np.where(normal, exponent, FP8_E4M3_MIN_EXP)
        # a * 2^(3 - exponent) is the significand in units of the last mantissa bit:
        # 8 .. 16 for normals (16 carries into the exponent), 0 .. 8 for subnormals.
        units = np.rint(np.ldexp(np.where(big | nan, _F32(0), a),
                                 (3 - exponent).astype(np.int32)))
    code = (exponent - FP8_E4M3_MIN_EXP) * 8 + units.astype(np.int64)
    code = np.minimum(np.where(big, FP8_E4M3_MAX_CODE, code), FP8_E4M3_MAX_CODE)
    code = np.where(nan, FP8_E4M3_NAN_CODE, code)
    return (code | sign).astype(np.uint8)


def fp8_e4m3_decode(codes: np.ndarray) -> np.ndarray:
    """The float32 values of E4M3 bit patterns (NaN for 0x7F and 0xFF)."""
    c = np.asarray(codes).astype(np.int64)
    exp = (c >> 3) & 0xF
    mant = c & 7
    # The significand as an integer in units of 2^-9: m for subnormals, (8 + m) << (e-1)
    # for normals (the same integer shifts as the kernels').
    units = np.where(exp == 0, mant, (8 + mant) << np.maximum(exp - 1, 0))
    value = units.astype(_F32) * _F32(2.0**-9)
    value = np.where((exp == 15) & (mant == 7), _F32(np.nan), value)
    return np.where(c & 0x80, -value, value).astype(_F32)


def quantize_fp8(x: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """`x` ``[..., num_kv_heads, head_dim]`` as E4M3 patterns of ``x / scales[head]``."""
    x = np.asarray(x).astype(_F32)
    return fp8_e4m3_encode(x / np.asarray(scales, dtype=_F32)[:, None])


def dequantize_fp8(codes: np.ndarray, scales: np.ndarray,
                   dtype: np.dtype | str = np.float32) -> np.ndarray:
    """``value(codes) * scales[head]`` in float32 (codes ``[..., num_kv_heads,
    head_dim]``), then `dtype`."""
    out = fp8_e4m3_decode(codes) * np.asarray(scales, dtype=_F32)[:, None]
    return out.astype(dtype)


def fp8_scales_for(amax: np.ndarray) -> np.ndarray:
    """Static FP8 scales from calibration maxima: ``amax / 448`` (vLLM's rule), 1.0
    where amax is 0 or not finite."""
    amax = np.asarray(amax, dtype=_F32)
    ok = np.isfinite(amax) & (amax > 0)
    return np.where(ok, amax / _F32(FP8_E4M3_MAX), _F32(1)).astype(_F32)


def resolve_kv_dtype(kv_dtype: KVDtype | str, dtype: str = "float32") -> KVDtype:
    """A `KVDtype` from itself or its name ("auto": `dtype`)."""
    if isinstance(kv_dtype, KVDtype):
        return kv_dtype
    return KV_DTYPES[dtype if kv_dtype == AUTO else kv_dtype]


def round_trip(x: np.ndarray, kv_dtype: KVDtype | str,
               fp8_scales: np.ndarray | None = None) -> np.ndarray:
    """What a cache of `kv_dtype` gives back for K or V `x` ``[tokens, num_kv_heads,
    head_dim]``, in x's dtype: stored and read as the kernels do (FP8 `fp8_scales`
    per KV head; default 1.0, vLLM's uncalibrated scale)."""
    x = np.asarray(x)
    kv = resolve_kv_dtype(kv_dtype, x.dtype.name)
    if kv.name == "int8":
        return dequantize_int8(*quantize_int8(x), dtype=x.dtype)
    if kv.name == "fp8_e4m3":
        scales = np.ones(x.shape[-2], _F32) if fp8_scales is None else fp8_scales
        return dequantize_fp8(quantize_fp8(x, scales), scales, dtype=x.dtype)
    return x.astype(kv.storage).astype(x.dtype)
