"""Test set-up: kernels run in Numba's CUDA simulator unless PAGED_KV_DEVICE says otherwise.

`scripts/gpu_check.sh` sets ``PAGED_KV_DEVICE=gpu`` to run the same kernel tests on a GPU.
paged_kv takes its ``cuda`` module from `paged_kv.device.cuda_api` whatever numba was
imported as; for tests that write ``from numba import cuda`` to build arrays, the
simulator run also turns numba's own simulator on (this harness's choice, made before
any test module imports numba; importing paged_kv itself writes no environment).
"""

import os

os.environ.setdefault("PAGED_KV_DEVICE", "sim")
if os.environ["PAGED_KV_DEVICE"] == "sim":
    os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")
