#!/usr/bin/env bash
# CI step: the oldest numba and numba-cuda paged_kv claims (.ci/oldest-requirements.txt,
# pyproject.toml's lower bounds; tests/test_packaging.py keeps them equal) compile every
# kernel to PTX and SASS. They get their own environment, .venv-oldest ($OLDEST_VENV),
# made once and reused; the check is paged_kv.gpu.kernels.compile_check, which also
# refuses a kernel option the installed numba-cuda's cuda.jit does not name.
# Measured on the 2-core development machine under a load average of about 11: 71 s to
# make the environment from pip's cache, 141 s and 186 s (two runs) for the 82
# compilations; so it runs outside `make test`, which must stay under 5 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${OLDEST_VENV:-.venv-oldest}
test -x "$VENV/bin/python" || "${PYTHON:-python3}" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet -r .ci/oldest-requirements.txt
env -u NUMBA_ENABLE_CUDASIM PAGED_KV_DEVICE=gpu PYTHONPATH="$PWD" PYTHONDONTWRITEBYTECODE=1 \
    "$VENV/bin/python" -m paged_kv.gpu.kernels.compile_check
