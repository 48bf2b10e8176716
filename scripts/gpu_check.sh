#!/usr/bin/env bash
# GPU check: one command, at most 540 s, on a machine with an NVIDIA GPU (docs/gpu.rst).
#
#     OUT=/some/dir bash scripts/gpu_check.sh            # on the GPU machine
#     OUT=/some/dir bash scripts/gpu_check.sh --dry-run  # anywhere: simulator, tiny sizes
#
# It runs the machine's own python3 ($PYTHON to choose another) with this working tree
# on PYTHONPATH, and installs nothing. A package the machine lacks can travel as a wheel
# in gpu_wheels/ ($GPU_WHEELS): each *.whl there is unpacked into a scratch directory put
# first on PYTHONPATH (docs/gpu.rst says how to make one).
#
# Steps, in order of value, each under its own time limit (seconds; they add up to at
# most $TOTAL_S = 540, and no step may run past it), each independent of the others:
#   probe       20  scripts/gpu_probe.py: versions, cuda.detect(), NVVM, one kernel with
#                   launch_bounds / shared_memory_carveout, one mapped-memory round trip.
#                   A failure stops the check (the one-line reason is in the summary).
#   tests      200  pytest -m "device or gpu": every kernel, storage and data-path test
#                   with PAGED_KV_DEVICE=gpu, the realistic sizes and the compiled launch
#                   signatures included (markers: pyproject.toml); no test starts in its
#                   last 20 s (PAGED_KV_TESTS_STOP_AT), so pytest's report is printed
#   copy bench  70  benchmarks/kernels.py --sizes $BENCH_SIZES: copy kernels vs d2d, swap
#                   (both paths) vs pinned memcpy
#   attention  100  benchmarks/attention.py: decode attention, block sizes 1..256 (the
#                   vLLM paper's Fig. 18a sweep), kernel vs copy bandwidth
#   big pool    60  benchmarks/kernels.py --big-pool: a pool of more than 2^31 elements
#   quantized   50  benchmarks/quantized.py: int8 / FP8 write, gather, attention
#   hf decode   35  benchmarks/hf_decode.py: a transformers model's decode step through
#                   paged_kv.hf (gather, and the paged-attention kernels) against
#                   DynamicCache; skipped, saying why, without PyTorch's CUDA build or
#                   transformers 5.24 or newer (carry its wheel: docs/gpu.rst)
#
# Under $OUT (default: a new temporary directory, printed) it leaves at most 6 files:
# gpu_check.log (everything printed), summary.txt (each step's status and seconds),
# results.md (the benchmark tables), attention.json, quantized.json and hf_decode.json
# (the benchmarks' settings and rows). Byte-code and Numba caches go to a scratch directory outside $OUT,
# removed at exit. The summary is printed at the end whatever happened (a failed or
# timed-out step, or an interrupt).
# --dry-run: the same steps under the CUDA simulator at tiny sizes, the tests step
# collecting the GPU-only tests (skipped there): it checks this script, measures nothing
# (tests/test_gpu_check.py runs it in `make test`).
# Exit status: 0 every step passed (or was skipped, saying why); 1 a step failed or timed
# out; 2 the probe failed.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

DRY_RUN=0
if [ "${1:-}" = "--dry-run" ]; then
    DRY_RUN=1
fi
PY=${PYTHON:-python3}
OUT=${OUT:-$(mktemp -d -t paged_kv_gpu_check.XXXXXX)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
TOTAL_S=${TOTAL_S:-540}
BENCH_SIZES=${BENCH_SIZES:-256 1024}
TESTS_S=200
SCRATCH=$(mktemp -d -t paged_kv_gpu_check_scratch.XXXXXX)
trap 'rm -rf "$SCRATCH"' EXIT

export PYTHONDONTWRITEBYTECODE=1
export PYTHONPYCACHEPREFIX="$SCRATCH/pycache"
export NUMBA_CACHE_DIR="$SCRATCH/numba"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
if [ "$DRY_RUN" -eq 1 ]; then
    export PAGED_KV_DEVICE=sim NUMBA_ENABLE_CUDASIM=1
    TINY=(--tiny)
    PROBE_ARGS=(--dry-run)
    MARKS="gpu"  # collected and skipped under the simulator: the step's plumbing
else
    export PAGED_KV_DEVICE=gpu
    unset NUMBA_ENABLE_CUDASIM
    TINY=()
    PROBE_ARGS=()
    MARKS="device or gpu"
fi

WHEELS=${GPU_WHEELS:-$ROOT/gpu_wheels}
unpack_wheels() {
    local wheel found=0
    for wheel in "$WHEELS"/*.whl; do
        [ -f "$wheel" ] || continue
        found=1
        "$PY" -m zipfile -e "$wheel" "$SCRATCH/wheels" || echo "could not unpack $wheel"
        echo "carried wheel: $(basename "$wheel")"
    done
    if [ "$found" -eq 1 ]; then
        export PYTHONPATH="$SCRATCH/wheels:$PYTHONPATH"
    fi
}

STARTED=$SECONDS
NAMES=()
STATES=()
TIMES=()

# run_step NAME BUDGET_S COPY COMMAND...: run COMMAND under min(budget, time left) and
# record its status and seconds; its stdout is also appended to COPY unless COPY is "-".
run_step() {
    local name=$1 budget=$2 copy=$3 left limit began rc state
    shift 3
    left=$((TOTAL_S - (SECONDS - STARTED) - 5))  # 5 s kept for the summary
    limit=$((budget < left ? budget : left))
    echo
    echo "== $name (limit ${limit} s)"
    if [ "$limit" -lt 5 ]; then
        NAMES+=("$name"); STATES+=("not run: no time left"); TIMES+=(0)
        echo "not run: no time left"
        return 1
    fi
    began=$SECONDS
    if [ "$copy" = "-" ]; then
        timeout --kill-after=5 "$limit" "$@"
        rc=$?
    else
        timeout --kill-after=5 "$limit" "$@" | tee -a "$copy"
        rc=${PIPESTATUS[0]}
    fi
    case $rc in
        0) state="passed" ;;
        124|137) state="TIMED OUT after ${limit} s" ;;
        *) state="FAILED (exit $rc)" ;;
    esac
    NAMES+=("$name"); STATES+=("$state"); TIMES+=($((SECONDS - began)))
    return "$rc"
}

summary() {
    local i status=0
    for i in "${!STATES[@]}"; do
        case "${STATES[$i]}" in
            passed|skipped:*) ;;
            *) status=1 ;;
        esac
    done
    {
        echo "== summary ($(date -u +%Y-%m-%dT%H:%M:%SZ), $((SECONDS - STARTED)) s of ${TOTAL_S} s)"
        [ "$DRY_RUN" -eq 1 ] && echo "DRY RUN under the CUDA simulator: nothing measured"
        for i in "${!NAMES[@]}"; do
            printf '%-11s %5s s  %s\n' "${NAMES[$i]}" "${TIMES[$i]}" "${STATES[$i]}"
        done
        [ -n "${PROBE_LINE:-}" ] && echo "probe: $PROBE_LINE"
        [ -n "${TESTS_LINE:-}" ] && echo "tests: $TESTS_LINE"
        echo "files: $OUT"
    } | tee "$OUT/summary.txt"
    return "$status"
}

section() {  # a heading in results.md for the next benchmark's table
    printf '\n## %s\n\n' "$1" >> "$OUT/results.md"
}

main() {
    trap 'echo; echo "interrupted"; summary; exit 1' INT TERM
    echo "GPU check of $(git rev-parse --short HEAD 2>/dev/null || echo 'this tree'), output in $OUT"
    date -u +"%Y-%m-%dT%H:%M:%SZ"
    if command -v nvidia-smi >/dev/null 2>&1; then
        timeout 10 nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    else
        echo "nvidia-smi not found"
    fi
    unpack_wheels
    : > "$OUT/results.md"

    run_step probe 20 "$SCRATCH/probe.txt" "$PY" "$ROOT/scripts/gpu_probe.py" "${PROBE_ARGS[@]}"
    PROBE_LINE=$(grep -E '^(PROBE FAILED|probe passed)' "$SCRATCH/probe.txt" 2>/dev/null | tail -1)
    if [ "${STATES[0]}" != "passed" ]; then
        [ -z "$PROBE_LINE" ] && PROBE_LINE="no result (${STATES[0]})"
        summary
        return 2
    fi

    # A test module whose imports this machine lacks (the probe warned) is reported and
    # the others still run: --continue-on-collection-errors. pytest stops starting tests
    # 20 s before the step's limit (tests/conftest.py), so it still prints its report.
    PAGED_KV_TESTS_STOP_AT=$(($(date +%s) + TESTS_S - 20)) \
        run_step tests "$TESTS_S" "$SCRATCH/tests.txt" "$PY" -m pytest -q -p no:cacheprovider \
        --continue-on-collection-errors -m "$MARKS" "$ROOT/tests"
    TESTS_LINE=$(grep -E '[0-9]+ (passed|failed|skipped|errors?|deselected)' \
                 "$SCRATCH/tests.txt" 2>/dev/null | tail -1 | tr -d '=' | sed 's/^ *//')
    section "Copy kernels and swap paths"
    # shellcheck disable=SC2086  # BENCH_SIZES is a list of numbers
    run_step "copy bench" 70 "$OUT/results.md" \
        "$PY" "$ROOT/benchmarks/kernels.py" "${TINY[@]}" --sizes $BENCH_SIZES
    section "Decode attention: block-size sweep (vLLM paper, Fig. 18a)"
    run_step attention 100 "$OUT/results.md" \
        "$PY" "$ROOT/benchmarks/attention.py" "${TINY[@]}" --out "$OUT"
    section "A pool of more than 2^31 elements"
    run_step "big pool" 60 "$OUT/results.md" \
        "$PY" "$ROOT/benchmarks/kernels.py" "${TINY[@]}" --big-pool
    section "Quantized pools"
    run_step quantized 50 "$OUT/results.md" \
        "$PY" "$ROOT/benchmarks/quantized.py" "${TINY[@]}" --out "$OUT"
    section "A transformers model's decode step (paged_kv.hf against DynamicCache)"
    HF_WHY=$("$PY" -c "$HF_READY" "$DRY_RUN" 2>&1 | tail -1)
    if [ "$HF_WHY" = "ready" ]; then
        run_step "hf decode" 35 "$OUT/results.md" \
            "$PY" "$ROOT/benchmarks/hf_decode.py" "${TINY[@]}" --out "$OUT"
    else
        NAMES+=("hf decode"); STATES+=("skipped: ${HF_WHY:-no reason printed}"); TIMES+=(0)
        echo "skipped: $HF_WHY" | tee -a "$OUT/results.md"
    fi
    summary
}

# Whether the hf decode step can run: "ready", or why not (one line). Argument: 1 for a
# dry run (the CPU build of PyTorch is enough there).
HF_READY='
import sys
try:
    import torch
    import transformers
except ImportError as err:
    sys.exit(print(f"{err.name} is not importable"))
major, minor = (int(part) for part in transformers.__version__.split(".")[:2])
if (major, minor) < (5, 24):
    sys.exit(print(f"transformers {transformers.__version__} found, 5.24 or newer needed"))
if sys.argv[1] != "1" and not torch.cuda.is_available():
    sys.exit(print(f"PyTorch {torch.__version__} sees no CUDA device"))
print("ready")
'


# main runs in this shell (its output reaches the log through a process substitution, not
# a pipeline's subshell), so the summary sees every step run_step recorded.
main > >(tee "$OUT/gpu_check.log") 2>&1
status=$?
wait $! 2>/dev/null  # the log's tee, until it has written everything
exit "$status"
