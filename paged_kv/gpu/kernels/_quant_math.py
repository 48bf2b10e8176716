"""Per-element quantization arithmetic for the kernels: int8 codes and FP8 E4M3 patterns.

Helpers through `paged_kv.gpu.device.jitable` (plain functions in the simulator, compiled
into each calling kernel on a GPU), in float32 and small integers only, so the simulator
and a GPU compute the same bits. They are the element-wise halves of
`paged_kv.reference.quantization` (the NumPy reference; its docstring has the rules: ties to even,
int8 saturating at +-127 with NaN -> 0, E4M3 saturating at +-448 with infinities -> +-448
and NaN -> 0x7F or 0xFF by sign).

Numba has no FP8 type that runs in the simulator (numba-cuda's ``fp8`` types are
GPU-only shims), so E4M3 is built field by field: decoding assembles the significand as
an integer in units of 2^-9 by shifts (``m`` for subnormals, ``(8 + m) << (e - 1)`` for
normals, all below 2^18, exact in float32) and scales it once; encoding takes the
exponent from ``frexp``, rounds the significand in units of its last mantissa bit (a
power-of-two scaling, exact) and packs ``(exponent + 6) * 8 + units``, where a carry
from units = 16 rolls into the exponent field by itself.
"""

from __future__ import annotations

import math

from numba import float32

from paged_kv.gpu import device

#: What a kernel variant reads (a compile-time constant of each variant): float16/32
#: elements, int8 codes with per-token scales, or FP8 E4M3 patterns with per-head scales.
KIND_FLOAT = 0
KIND_INT8 = 1
KIND_FP8 = 2
#: Pool element dtype -> kind.
KIND_OF_STORAGE = {"float16": KIND_FLOAT, "float32": KIND_FLOAT, "int8": KIND_INT8,
                   "uint8": KIND_FP8}

#: Largest int8 code (symmetric), largest finite E4M3 value and its pattern, NaN pattern.
INT8_MAX = 127
FP8_MAX = 448.0
FP8_MAX_CODE = 0x7E
FP8_NAN_CODE = 0x7F

_ZERO = float32(0.0)
_HALF = float32(0.5)
_ONE = float32(1.0)
_INF = float32(math.inf)
_NAN = float32(math.nan)
_FP8_MAX = float32(FP8_MAX)
_FP8_MIN_NORMAL = float32(2.0**-6)
_FP8_UNIT = float32(2.0**-9)  # one step of the subnormal significand


@device.jitable
def round_half_even(y):
    """Float32 `y` (``|y| < 2^22``) rounded to the nearest integer, ties to even."""
    n = int(math.floor(y))
    frac = y - float32(n)
    if frac > _HALF or (frac == _HALF and (n & 1) == 1):
        n += 1
    return n


@device.jitable
def finite_abs_max(m, x):
    """``max(m, |x|)`` over finite `x` only (NaN and infinities leave `m` as it is)."""
    a = abs(x)
    if a > m and a < _INF:
        return a
    return m


@device.jitable
def int8_code(x, scale):
    """The int8 code of float32 `x` at float32 `scale` (``scale = amax / 127``)."""
    if scale == _ZERO or math.isnan(x):
        return 0
    y = x / scale
    if y >= INT8_MAX:
        return INT8_MAX
    if y <= -INT8_MAX:
        return -INT8_MAX
    return round_half_even(y)


@device.jitable
def e4m3_encode(x):
    """The E4M3 bit pattern (0 .. 255) of float32 `x`: nearest, ties to even, saturating."""
    sign = 0x80 if math.copysign(_ONE, x) < _ZERO else 0
    a = abs(x)
    if math.isnan(x):
        return FP8_NAN_CODE | sign
    if not a <= _FP8_MAX:  # above 448 or infinite: satfinite
        return FP8_MAX_CODE | sign
    e = -6  # subnormal: units of 2^-9
    if a >= _FP8_MIN_NORMAL:
        e = math.frexp(a)[1] - 1  # a = 1.f * 2^e
    shift = 3 - e  # a * 2^shift: the significand in units of its last mantissa bit
    if shift >= 0:
        y = a * float32(1 << shift)
    else:
        y = a / float32(1 << -shift)
    code = (e + 6) * 8 + round_half_even(y)
    if code > FP8_MAX_CODE:  # not reached for a <= 448; kept as a guard
        code = FP8_MAX_CODE
    return code | sign


@device.jitable
def e4m3_decode(code):
    """The float32 value of E4M3 bit pattern `code` (NaN for 0x7F and 0xFF)."""
    c = int(code)
    exp = (c >> 3) & 15
    mant = c & 7
    if exp == 0:
        units = mant
    else:
        units = (mant + 8) << (exp - 1)
    value = float32(units) * _FP8_UNIT
    if exp == 15 and mant == 7:
        value = _NAN
    if c & 0x80:
        value = -value
    return value
