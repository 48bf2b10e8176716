"""The device data layer: where KV bytes live and the kernels that move them.

It owns the choice of device (`device`: a real GPU or Numba's CUDA simulator, made at
first use), the block pools (`storage`: the only owner of device arrays), the fences
that order work across streams (`fences`) and every ``@cuda.jit`` kernel with its
validating host wrapper (`kernels`: slot write, gather, block copy, swap, paged
attention, quantized variants).

It imports only `paged_kv.core` (shapes, dtypes, errors, checks) and numba. It knows no
sequences: callers hand it block ids and slots. Importing this package loads nothing;
numba is imported when `device` first chooses.
"""
