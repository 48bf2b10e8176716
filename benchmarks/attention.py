"""Decode attention on a GPU: effective KV bandwidth against a copy, and latency against
block size.

One decode step of one layer: ``--batch`` sequences of ``--context`` tokens each, one
query per sequence, OPT-13B head shapes by default (40 heads, head_dim 128, float16,
no GQA), block tables a random permutation of the pool's blocks (seed 0), as a
fragmented cache has them. For each block size (1 to 256: the vLLM paper's Fig. 18a
sweep) it reports:

* **kernel ms**: the paged attention kernel alone (`prepare_decode` checks and uploads
  once; the launch is timed), median of ``--repeats`` between CUDA events after
  ``--warmup`` launches;
* **wrapper ms**: the same step through `decode_attention`, which adds the host-side
  checks of every block table and the uploads;
* **KV GB/s**: bytes of K and V the step must read (``batch * context * 2 * kv_heads *
  head_dim * itemsize``, each once) / kernel time, 1 GB = 1e9 B;
* **vs copy**: that rate over a device-to-device copy of the same number of bytes
  (``copy_to_device`` between two device arrays, ``cuMemcpyDtoD``) timed in the same
  run: copy GB/s = bytes / copy time. The goal is at least 0.5x at batch 64, context
  2,048, OPT-13B heads.

Output: a markdown table on stdout; with ``--out DIR`` (default: ``$OUT`` when set, as
`scripts/gpu_check.sh` sets it) also ``DIR/attention.json`` with the settings, the
device and every row. Under the CUDA simulator nothing can be measured: the script says
so and exits 0; ``--tiny`` runs the same code at tiny sizes there (timings meaningless),
which is how the test suite keeps it working.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from paged_kv import __version__, device
from paged_kv.gpu.kernels.paged_attention import decode_attention, prepare_decode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import gbps, median_ms  # noqa: E402

cuda = device.cuda_api()  # numba.cuda on a GPU, numba.cuda.simulator otherwise

BLOCK_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
GOAL = 0.5  # KV GB/s over copy GB/s at batch 64, context 2048, OPT-13B heads


@dataclass(frozen=True)
class Setup:
    """One decode step's shape (default: OPT-13B heads, the setting of the 0.5x goal)."""

    batch: int = 64
    context: int = 2048
    num_kv_heads: int = 40
    q_heads: int = 40
    head_dim: int = 128
    dtype: str = "float16"

    @property
    def kv_bytes(self) -> int:
        """Bytes of K and V one decode step reads (each once)."""
        itemsize = np.dtype(self.dtype).itemsize
        return self.batch * self.context * 2 * self.num_kv_heads * self.head_dim * itemsize


def measured(ms: float) -> float | None:
    """`ms`, or None when not measurable (the simulator's events report 0 or less)."""
    return ms if ms > 0 else None


def copy_gbps(num_bytes: int, warmup: int, repeats: int) -> float | None:
    """A device-to-device copy of `num_bytes`, as GB/s."""
    src = cuda.device_array(num_bytes, np.uint8)
    dst = cuda.device_array(num_bytes, np.uint8)
    src[:] = np.uint8(1)
    return gbps(num_bytes, median_ms(lambda: dst.copy_to_device(src), warmup, repeats))


def measure(setup: Setup, block_size: int, warmup: int, repeats: int,
            rng: np.random.Generator) -> dict:
    """One row: kernel and wrapper time of a decode step at `block_size`."""
    per_seq = -(-setup.context // block_size)
    num_blocks = setup.batch * per_seq
    shape = (1, 2, num_blocks, block_size, setup.num_kv_heads, setup.head_dim)
    pool = cuda.device_array(shape, np.dtype(setup.dtype))
    pool[:] = np.dtype(setup.dtype).type(0.01)  # any finite values: the time is the same
    tables = rng.permutation(num_blocks).reshape(setup.batch, per_seq).astype(np.int32)
    lens = np.full(setup.batch, setup.context, dtype=np.int64)
    q = rng.standard_normal((setup.batch, setup.q_heads, setup.head_dim)).astype(np.float32)
    launch = prepare_decode(pool, 0, q, tables, lens)
    kernel_ms = measured(median_ms(launch, warmup, repeats))
    wrapper_ms = measured(median_ms(lambda: decode_attention(pool, 0, q, tables, lens),
                                    warmup, repeats))
    if not np.isfinite(launch.out.copy_to_host()).all():
        raise RuntimeError(f"decode attention at block size {block_size} gave non-finite output")
    return {"block_size": block_size, "kernel_ms": kernel_ms, "wrapper_ms": wrapper_ms,
            "kv_gbps": gbps(setup.kv_bytes, kernel_ms)}


def fmt(x: float | None, digits: int) -> str:
    """`x` with `digits` decimals, or "n/a"."""
    return "n/a" if x is None else f"{x:.{digits}f}"


def table(rows: list[dict], copy: float | None) -> list[str]:
    """The markdown table of `rows`, with each row's ratio to the copy rate."""
    header = ["block size", "kernel ms", "wrapper ms", "KV GB/s", "copy GB/s", "vs copy"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---:|" * len(header)]
    for r in rows:
        ratio = r["kv_gbps"] / copy if r["kv_gbps"] and copy else None
        r["vs_copy"] = ratio
        lines.append("| " + " | ".join([
            str(r["block_size"]), fmt(r["kernel_ms"], 3), fmt(r["wrapper_ms"], 3),
            fmt(r["kv_gbps"], 1), fmt(copy, 1), fmt(ratio, 2)]) + " |")
    return lines


def main(argv: list[str] | None = None) -> int:
    """Print the table (and write the JSON); exit 0, also under the simulator."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=Setup.batch)
    parser.add_argument("--context", type=int, default=Setup.context,
                        help="tokens per sequence (default: %(default)s)")
    parser.add_argument("--block-sizes", type=int, nargs="+", default=list(BLOCK_SIZES))
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", type=Path, default=os.environ.get("OUT") or None,
                        help="also write attention.json here (default: $OUT when set)")
    parser.add_argument("--tiny", action="store_true",
                        help="tiny sizes: a smoke run, also on the simulator")
    args = parser.parse_args(argv)
    if device.is_simulator() and not args.tiny:
        print("benchmarks/attention.py needs an NVIDIA GPU: kernels are running in Numba's "
              "CUDA simulator, whose timings mean nothing. Nothing measured.")
        return 0
    if args.tiny:
        setup = Setup(batch=2, context=9, num_kv_heads=2, q_heads=4, head_dim=8)
        block_sizes, args.warmup, args.repeats = [1, 4, 16], 0, 1
        if device.is_simulator():
            sys.setswitchinterval(2e-4)  # the simulator's barriers poll under the GIL
    else:
        setup = Setup(batch=args.batch, context=args.context)
        block_sizes = args.block_sizes
    rng = np.random.default_rng(0)
    copy = copy_gbps(setup.kv_bytes, args.warmup, args.repeats)
    rows = [measure(setup, bs, args.warmup, args.repeats, rng) for bs in block_sizes]
    name = device.device_name()
    print(f"# Decode attention on {name}\n")
    print(f"setup: {setup}; {setup.kv_bytes / 2**20:.4g} MiB of K and V per step; "
          f"warm-up {args.warmup}, median of {args.repeats}; goal: KV GB/s >= {GOAL}x a "
          f"device-to-device copy of the same bytes\n")
    print("\n".join(table(rows, copy)))
    at16 = [r for r in rows if r["block_size"] == 16 and r["vs_copy"] is not None]
    if at16:
        verdict = "meets" if at16[0]["vs_copy"] >= GOAL else "misses"
        print(f"\nblock size 16: {at16[0]['vs_copy']:.2f}x the copy ({verdict} the {GOAL}x "
              f"goal{'' if setup == Setup() else '; the goal is set at the default setup'})")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        record = {"device": name, "version": __version__, "setup": asdict(setup),
                  "kv_bytes": setup.kv_bytes, "warmup": args.warmup, "repeats": args.repeats,
                  "copy_gbps": copy, "goal_vs_copy": GOAL, "rows": rows}
        (args.out / "attention.json").write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
