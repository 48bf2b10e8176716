"""Test set-up: kernels run in Numba's CUDA simulator unless PAGED_KV_DEVICE says otherwise.

`scripts/gpu_check.sh` sets ``PAGED_KV_DEVICE=gpu`` to run the same kernel tests on a GPU.
"""

import os

os.environ.setdefault("PAGED_KV_DEVICE", "sim")
