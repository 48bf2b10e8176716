#!/usr/bin/env bash
# GPU check: every kernel test, the data-plane demo, the compile check and the
# benchmarks on a real NVIDIA GPU (no simulator), in one run of about 10 minutes at most.
#
# Nothing is installed and no virtualenv is made: it runs the working tree with
# $PYTHON, else .venv/bin/python when present, else python3 (numba, numba-cuda, numpy
# and, for the tests, pytest must be there). Run from anywhere:
#
#     OUT=/some/dir bash scripts/gpu_check.sh            # on a GPU machine
#     OUT=/some/dir bash scripts/gpu_check.sh --dry-run  # anywhere: simulator, tiny sizes
#
# Steps (each under a time limit, so one hang cannot eat the budget)
#   1. device: nvidia-smi's name, driver, memory; versions; numba must see a GPU.
#   2. tests: pytest on the kernel, storage, fence and data-path tests with
#      PAGED_KV_DEVICE=gpu (the "realistic"-size cases skipped in the simulator run here).
#   3. demo: paged_kv.studies.demo.run_demo() writes, gathers, copies and swaps, byte-checked.
#   4. compile check: registers/spills/16-byte loads for sm_80 and sm_90.
#   5. copy benchmark: benchmarks/kernels.py at BENCH_SIZES MiB (default 256 1024):
#      copy kernels vs a device-to-device copy (goal >= 0.8x), swap by memcpy and by
#      the mapped kernel vs a page-locked cudaMemcpy (goal >= 0.8x).
#   6. big pool: a pool of more than 2^31 elements written and read back at its last
#      block, through every wrapper.
#   7. further benchmarks: each script of EXTRA_BENCHMARKS that exists (marked below).
#
# Output, all under $OUT (default: a new temporary directory, printed): gpu_check.txt
# (everything), benchmark.md, big_pool.txt, compile_check.txt, one .md per further
# benchmark; Python's bytecode cache, when Python writes one, goes there too.
# --dry-run: the same steps under the CUDA simulator at tiny sizes (a test in `make test`
# runs it): it checks that the script works, and measures nothing.
# Exit status: 0 every step passed; 1 a step failed; 3 pytest missing, the rest passed.
set -uo pipefail
cd "$(dirname "$0")/.."

DRY_RUN=0
if [ "${1:-}" = "--dry-run" ]; then
    DRY_RUN=1
fi

if [ -n "${PYTHON:-}" ]; then
    PY=$PYTHON
elif [ -x .venv/bin/python ]; then
    PY=.venv/bin/python
else
    PY=python3
fi
OUT=${OUT:-$(mktemp -d -t paged_kv_gpu_check.XXXXXX)}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONPYCACHEPREFIX="$OUT/pycache"
BENCH_SIZES=${BENCH_SIZES:-256 1024}
if [ "$DRY_RUN" -eq 1 ]; then
    export PAGED_KV_DEVICE=sim
    export NUMBA_ENABLE_CUDASIM=1
    TINY=(--tiny)
    TESTS=(tests/test_kernels_paths.py tests/test_fences.py)
    # the full compile check is tests/test_compile.py's job in `make test`: one kernel
    # is enough to prove this step's plumbing
    COMPILE_ONLY=(--only block_copy)
else
    export PAGED_KV_DEVICE=gpu
    unset NUMBA_ENABLE_CUDASIM
    TINY=()
    COMPILE_ONLY=()
    TESTS=(tests/test_kernel*.py tests/test_storage.py tests/test_fences.py
           tests/test_cache_data.py tests/test_attention.py tests/test_paged_attention.py)
fi

# >>> further benchmarks: scripts run in step 7 when they exist, each with --tiny in the
# >>> dry run. Add a line per script; its output goes to $OUT/<name>.md.
EXTRA_BENCHMARKS=(
    benchmarks/attention.py  # decode attention: KV bandwidth, latency vs block size
    benchmarks/quantized.py  # int8/FP8 write, gather, decode attention vs float16
)
# <<< further benchmarks

main() {
    local status=0 tests="failed" demo="failed" compile="failed" bench="failed"
    local big="failed" extra=""

    echo "== 1. device (output in $OUT)"
    date -u +"%Y-%m-%dT%H:%M:%SZ"
    git rev-parse --short HEAD 2>/dev/null || true
    if command -v nvidia-smi >/dev/null 2>&1; then
        nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    else
        echo "nvidia-smi not found"
    fi
    if ! DRY_RUN=$DRY_RUN "$PY" - <<'EOF'
import os
import sys

import numba
import numpy

from paged_kv.gpu import device

print(f"python {sys.version.split()[0]}, numpy {numpy.__version__}, numba {numba.__version__}")
try:
    import importlib.metadata as md
    print(f"numba-cuda {md.version('numba-cuda')}")
except Exception as exc:  # the image may ship numba-cuda under another name
    print(f"numba-cuda version unknown ({exc})")
if os.environ["DRY_RUN"] == "1":
    print(f"DRY RUN: kernels run on the {device.device_name()}; nothing below is a measurement")
    sys.exit(0)
cuda = device.cuda_api()
if device.is_simulator() or not cuda.is_available():
    sys.exit("numba sees no CUDA GPU: nothing to check")
print(f"kernels run on: {device.device_name()}, "
      f"compute capability {cuda.get_current_device().compute_capability}")
EOF
    then
        echo "GPU CHECK ABORTED: no usable GPU"
        return 1
    fi

    echo
    echo "== 2. kernel, storage and data-path tests (PAGED_KV_DEVICE=$PAGED_KV_DEVICE)"
    if "$PY" -c "import pytest" >/dev/null 2>&1; then
        if timeout 300 "$PY" -m pytest -q -p no:cacheprovider "${TESTS[@]}"; then
            tests="passed"
        else
            status=1
        fi
    else
        tests="NOT RUN (pytest not installed; the demo below still checks every kernel)"
        echo "$tests"
        [ "$status" -eq 0 ] && status=3
    fi

    echo
    echo "== 3. data-plane demo"
    if timeout 120 "$PY" -c \
        "import sys; from paged_kv.studies.demo import run_demo; sys.exit(0 if run_demo() else 1)"
    then
        demo="passed"
    else
        status=1
    fi

    echo
    echo "== 4. compile check (sm_80, sm_90; needs NVVM and ptxas, no GPU)"
    PAGED_KV_DEVICE=gpu NUMBA_ENABLE_CUDASIM=0 timeout 180 \
        "$PY" -m paged_kv.gpu.kernels.compile_check "${COMPILE_ONLY[@]}" | tee "$OUT/compile_check.txt"
    case ${PIPESTATUS[0]} in
        0) compile="passed" ;;
        2) compile="NOT RUN (NVVM or ptxas missing in this image)" ;;
        *) status=1 ;;
    esac

    echo
    echo "== 5. copy kernels and swap paths vs the driver's copies"
    # shellcheck disable=SC2086  # BENCH_SIZES is a list of numbers
    if timeout 300 "$PY" benchmarks/kernels.py "${TINY[@]}" --sizes $BENCH_SIZES \
            | tee "$OUT/benchmark.md"; then
        bench="passed"
    else
        status=1
    fi

    echo
    echo "== 6. a pool of more than 2^31 elements"
    if timeout 180 "$PY" benchmarks/kernels.py "${TINY[@]}" --big-pool \
            | tee "$OUT/big_pool.txt"; then
        big="passed"
    else
        status=1
    fi

    echo
    echo "== 7. further benchmarks"
    for script in "${EXTRA_BENCHMARKS[@]}"; do
        if [ ! -f "$script" ]; then
            echo "$script: not present, skipped"
            extra="$extra $(basename "$script" .py)=absent"
            continue
        fi
        if timeout 240 "$PY" "$script" "${TINY[@]}" | tee "$OUT/$(basename "$script" .py).md"
        then
            extra="$extra $(basename "$script" .py)=passed"
        else
            extra="$extra $(basename "$script" .py)=failed"
            status=1
        fi
    done

    echo
    echo "== summary"
    [ "$DRY_RUN" -eq 1 ] && echo "DRY RUN under the CUDA simulator: no GPU measured"
    echo "tests:              $tests"
    echo "demo:               $demo"
    echo "compile check:      $compile"
    echo "copy benchmark:     $bench"
    echo "big pool:           $big"
    echo "further benchmarks:${extra:- none}"
    echo "exit status:        $status"
    return "$status"
}

main 2>&1 | tee "$OUT/gpu_check.txt"
exit "${PIPESTATUS[0]}"
