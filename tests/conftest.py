"""Test set-up: kernels run in Numba's CUDA simulator unless PAGED_KV_DEVICE says otherwise.

`scripts/gpu_check.sh` sets ``PAGED_KV_DEVICE=gpu`` to run the same kernel tests on a GPU.
Importing paged_kv here, before any test module can import numba, makes the choice stick.
"""

import os

os.environ.setdefault("PAGED_KV_DEVICE", "sim")

import paged_kv  # noqa: E402,F401
