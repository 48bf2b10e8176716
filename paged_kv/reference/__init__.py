"""NumPy references that the device path is checked against, never used for speed.

It owns attention computed in NumPy (`attention`: dense, and through a cache's
``read_kv``), the reference quantizer (`quantization`: int8 and FP8 E4M3 bit for bit with
the kernels) and the shadow that remembers what every sequence wrote (`shadow`).

It imports `paged_kv.core` and `paged_kv.cache` (whose sequences it reads), never the
kernels directly, and nothing above.
"""
