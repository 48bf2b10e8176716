"""Compile every kernel for real GPUs, without one: PTX by NVVM, SASS by ptxas.

For each kernel in `paged_kv.gpu.kernels.KERNELS`, each of its variants (the copy kernels:
the copy-unit dtypes uint16/uint32/uint64; other kernels: the KV dtypes) and each target
architecture (sm_80 = A100, sm_90 = H100), this compiles the exact signature the host
wrapper launches with ``numba.cuda.compile_ptx``, assembles the PTX with ``ptxas -v``
and reads back registers per thread, stack frame and spill bytes. A kernel that spills
is a failure: these kernels hold a handful of indices and one copy unit, and a spill
would mean local-memory traffic on every unit moved. The table also says whether the
PTX holds 16-byte vector loads (``ld.global.v2.u64``), which the uint64 variants of
the copy kernels must.

Kernels that call helper functions (``register_jitable`` or ``device=True``) make
numba-cuda compile those for "the current device"; without a GPU there is none, so the
check stands in a device of the architecture being compiled (`_target_device`).

Run it with the simulator off (no driver needed)::

    PAGED_KV_DEVICE=gpu python -m paged_kv.gpu.kernels.compile_check [--json] [--only K ...]

By default one child process per architecture compiles in parallel (``--jobs 1`` for
one process; ``--arch sm_90`` for one architecture).

Before compiling, it checks that every kernel option a kernel asks for (launch bounds,
shared-memory carveout) is one this numba-cuda's ``cuda.jit`` names: PTX compilation
never sees those options, and an unknown one fails the kernel's first launch.

Exit status: 0 all compiled without spills, 1 a kernel spills or asks for an option
this numba-cuda lacks, 2 the toolchain (NVVM, ptxas) is missing or the simulator is on.
``tests/test_compile.py`` runs it in a subprocess. The NVIDIA toolchain comes from pip:
``pip install -e '.[cuda]'`` (``numba-cuda[cu12]`` pulls NVVM, NVRTC and ptxas).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from paged_kv.core.config import SUPPORTED_DTYPES
from paged_kv.gpu import device

#: Compute capabilities checked: Ampere (A100) and Hopper (H100).
ARCHS: tuple[tuple[int, int], ...] = ((8, 0), (9, 0))

INSTALL_HINT = "install the NVIDIA toolchain from pip: pip install -e '.[cuda]'"


class ToolchainMissing(RuntimeError):
    """NVVM or ptxas could not be found or run."""


@dataclass(frozen=True)
class CompileResult:
    """ptxas's report for one kernel, dtype and architecture."""

    kernel: str
    dtype: str
    arch: str
    registers: int
    stack_bytes: int
    spill_store_bytes: int
    spill_load_bytes: int
    vector_loads: bool = False

    @property
    def spills(self) -> bool:
        """True when ptxas had to spill registers to local memory."""
        return bool(self.spill_store_bytes or self.spill_load_bytes)


def find_ptxas() -> str:
    """Path of ptxas: the pip package ``nvidia-cuda-nvcc`` first, then CUDA_HOME, PATH."""
    candidates = [Path(entry) / "nvidia" / "cuda_nvcc" / "bin" / "ptxas" for entry in sys.path
                  if entry]
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            candidates.append(Path(os.environ[var]) / "bin" / "ptxas")
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    found = shutil.which("ptxas")
    if found:
        return found
    raise ToolchainMissing(f"ptxas not found in site-packages, CUDA_HOME or PATH; {INSTALL_HINT}")


_REGISTERS = re.compile(r"Used (\d+) registers")
_FRAME = re.compile(
    r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads"
)


def parse_ptxas_report(text: str) -> tuple[int, int, int, int]:
    """``(registers, stack_bytes, spill_stores, spill_loads)`` from ``ptxas -v`` output.

    The PTX holds one entry point, so the report has one of each line.
    """
    registers = _REGISTERS.search(text)
    frame = _FRAME.search(text)
    if registers is None or frame is None:
        raise ValueError(f"unrecognised ptxas -v report:\n{text}")
    stack, stores, loads = (int(x) for x in frame.groups())
    return int(registers.group(1)), stack, stores, loads


def kernel_variants() -> list[tuple[str, Any, Any, str]]:
    """``(name, dispatcher, signature function, variant)`` for every kernel variant.

    `paged_kv.gpu.kernels.KERNELS` entries are ``(dispatcher, signature)`` (variants: the
    KV dtypes) or ``(dispatcher, signature, variants)``.
    """
    from paged_kv.gpu.kernels import KERNELS  # noqa: PLC0415 - decorates the kernels

    rows = []
    for name, entry in KERNELS.items():
        kernel, signature = entry[0], entry[1]
        variants = entry[2] if len(entry) > 2 else SUPPORTED_DTYPES
        rows.extend((name, kernel, signature, variant) for variant in variants)
    return rows


#: The kernel options paged_kv's kernels may ask for (`paged_kv.gpu.device.jit_accepts`).
LAUNCH_OPTIONS = ("launch_bounds", "shared_memory_carveout")


def launch_option_problems() -> list[str]:
    """One line per kernel option that this numba-cuda's ``cuda.jit`` does not name.

    PTX compilation does not see such an option (it is applied when a launch builds the
    kernel), so without this check a kernel would compile here and fail at its first
    launch on a GPU.
    """
    problems = []
    for name, kernel, _, _ in kernel_variants():
        for option in LAUNCH_OPTIONS:
            if kernel.targetoptions.get(option) is not None and not device.jit_accepts(option):
                problems.append(f"{name}: this numba-cuda's cuda.jit has no {option}")
    return sorted(set(problems))


@contextmanager
def _target_device(cc: tuple[int, int]) -> Iterator[None]:
    """Let numba-cuda compile helper functions for `cc` with no GPU present (module doc)."""
    import numba.cuda.dispatcher as dispatcher  # noqa: PLC0415

    real = getattr(dispatcher, "get_current_device", None)
    if real is None:  # another numba-cuda: helpers compile without a device
        yield
        return
    dispatcher.get_current_device = lambda: SimpleNamespace(compute_capability=cc)
    try:
        yield
    finally:
        dispatcher.get_current_device = real


def compile_all(
    ptxas: str, workdir: Path, only: Collection[str] | None = None,
    archs: Collection[tuple[int, int]] = ARCHS,
) -> list[CompileResult]:
    """Compile every kernel variant x arch of `archs` (or only the kernels named in
    `only`); return ptxas's figures for each."""
    from numba import cuda  # noqa: PLC0415 - only after paged_kv.gpu.device chose "gpu"

    results = []
    for name, kernel, signature, dtype in kernel_variants():
        if only is not None and name not in only:
            continue
        for cc in archs:
            arch = f"sm_{cc[0]}{cc[1]}"
            try:
                # The kernel's own launch bounds (its register cap), as a launch uses.
                bounds = kernel.targetoptions.get("launch_bounds")
                with _target_device(cc):
                    ptx, _ = cuda.compile_ptx(kernel.py_func, signature(dtype), cc=cc,
                                              launch_bounds=bounds)
            except Exception as exc:  # NVVM missing shows up as various errors
                if "nvvm" in str(exc).lower() or "libnvvm" in type(exc).__name__.lower():
                    raise ToolchainMissing(f"NVVM unavailable ({exc}); {INSTALL_HINT}") from exc
                raise
            ptx_path = workdir / f"{name}_{dtype}_{arch}.ptx"
            ptx_path.write_text(ptx)
            proc = subprocess.run(
                [ptxas, f"-arch={arch}", "-v", str(ptx_path), "-o",
                 str(ptx_path.with_suffix(".cubin"))],
                capture_output=True, text=True, check=False,
            )
            if proc.returncode != 0:
                raise ToolchainMissing(
                    f"ptxas ({ptxas}) failed on {ptx_path.name} (exit {proc.returncode}):\n"
                    f"{proc.stdout}{proc.stderr}"
                )
            regs, stack, stores, loads = parse_ptxas_report(proc.stdout + proc.stderr)
            results.append(CompileResult(name, dtype, arch, regs, stack, stores, loads,
                                         "ld.global.v2.u64" in ptx))
    return results


def format_table(results: list[CompileResult]) -> str:
    """A markdown table: registers per thread for each kernel and dtype, per arch."""
    archs = sorted({r.arch for r in results})
    rows = {}
    for r in results:
        rows.setdefault((r.kernel, r.dtype), {})[r.arch] = r
    header = (["kernel", "variant"] + [f"{a} regs" for a in archs]
              + ["stack (B)", "spills (B)", "16-byte loads"])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for (kernel, dtype), by_arch in rows.items():
        stack = max(r.stack_bytes for r in by_arch.values())
        spills = max(r.spill_store_bytes + r.spill_load_bytes for r in by_arch.values())
        vector = "yes" if all(r.vector_loads for r in by_arch.values()) else "no"
        cells = [kernel, dtype] + [str(by_arch[a].registers) for a in archs]
        lines.append("| " + " | ".join(cells + [str(stack), str(spills), vector]) + " |")
    return "\n".join(lines)


def _arch(text: str) -> tuple[int, int]:
    """``sm_80`` -> ``(8, 0)``: one of `ARCHS`."""
    for cc in ARCHS:
        if text == f"sm_{cc[0]}{cc[1]}":
            return cc
    names = ", ".join(f"sm_{a}{b}" for a, b in ARCHS)
    raise argparse.ArgumentTypeError(f"expected one of {names}, got {text!r}")


def compile_in_parallel(argv: list[str], jobs: int) -> tuple[list[CompileResult], str]:
    """Run this check as `jobs` child processes, one architecture each (compilation is
    single-threaded, so this divides its wall time by the cores it may use); returns
    their results merged and the ptxas path. A child's failure is re-raised as
    `ToolchainMissing` with its output."""
    env = dict(os.environ)
    groups = [ARCHS[i::jobs] for i in range(jobs)]
    children = [
        subprocess.Popen(
            [sys.executable, "-m", "paged_kv.gpu.kernels.compile_check", *argv, "--json",
             "--jobs", "1", "--arch", *(f"sm_{a}{b}" for a, b in group)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for group in groups
    ]
    results: list[CompileResult] = []
    ptxas = ""
    for child in children:
        out, err = child.communicate()
        if child.returncode not in (0, 1) or not out.strip():  # 1: spills, in the table
            raise ToolchainMissing(f"a compile-check worker failed (exit {child.returncode}):"
                                   f"\n{out}{err}")
        lines = out.strip().splitlines()
        results += [CompileResult(**row) for row in json.loads(lines[-1])]
        ptxas = lines[-2].split("(ptxas: ", 1)[-1].split(")", 1)[0]
    order = {(name, variant): i for i, (name, _, _, variant) in enumerate(kernel_variants())}
    results.sort(key=lambda r: (order[r.kernel, r.dtype], r.arch))
    return results, ptxas


def main(argv: list[str] | None = None) -> int:
    """Run the check; print the table (and a JSON line with ``--json``); see module doc."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="also print results as JSON")
    parser.add_argument("--keep", type=Path, help="write the PTX/cubin files here")
    parser.add_argument("--only", nargs="+", metavar="KERNEL",
                        help="compile only these kernels (names as in the table)")
    parser.add_argument("--arch", nargs="+", type=_arch, default=list(ARCHS),
                        metavar="SM", help="compile only for these (sm_80, sm_90)")
    parser.add_argument("--jobs", type=int, default=min(len(ARCHS), os.cpu_count() or 1),
                        help="processes, one or more architectures each (default: one per "
                             "architecture, at most the CPU count)")
    args = parser.parse_args(argv)
    if device.is_simulator():
        print("compile_check: the CUDA simulator is on; run with PAGED_KV_DEVICE=gpu and "
              "NUMBA_ENABLE_CUDASIM unset (no GPU or driver is needed)", file=sys.stderr)
        return 2
    problems = launch_option_problems()
    if problems:
        print("\n".join(f"LAUNCH OPTION: {line}" for line in problems), file=sys.stderr)
        return 1
    started = time.perf_counter()
    try:
        jobs = max(1, min(args.jobs, len(args.arch)))
        if jobs > 1 and args.arch == list(ARCHS):
            forwarded = [] if args.keep is None else ["--keep", str(args.keep)]
            forwarded += [] if args.only is None else ["--only", *args.only]
            results, ptxas = compile_in_parallel(forwarded, jobs)
        elif args.keep:
            ptxas = find_ptxas()
            args.keep.mkdir(parents=True, exist_ok=True)
            results = compile_all(ptxas, args.keep, args.only, args.arch)
        else:
            ptxas = find_ptxas()
            with tempfile.TemporaryDirectory(prefix="paged_kv_ptx_") as tmp:
                results = compile_all(ptxas, Path(tmp), args.only, args.arch)
    except ToolchainMissing as exc:
        print(f"compile_check: {exc}", file=sys.stderr)
        return 2
    elapsed = time.perf_counter() - started
    print(format_table(results))
    print(f"\n{len(results)} compilations (ptxas: {ptxas}) in {elapsed:.1f} s")
    spilling = [r for r in results if r.spills]
    for r in spilling:
        print(f"SPILL: {r.kernel} {r.dtype} {r.arch}: {r.spill_store_bytes} B stores, "
              f"{r.spill_load_bytes} B loads", file=sys.stderr)
    if args.json:
        print(json.dumps([asdict(r) for r in results]))
    return 1 if spilling else 0


if __name__ == "__main__":
    sys.exit(main())
