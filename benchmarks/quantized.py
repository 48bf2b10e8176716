"""Quantized KV on a GPU: the quantizing write, the dequantizing gather and decode
attention over int8 and FP8 pools, each against its float16 version in the same run.

Three operations, each timed for a float16 pool and for int8 and FP8 E4M3 pools of the
same shape (OPT-13B heads by default: 40 KV heads, head_dim 128; blocks of 16 tokens;
K/V given and returned in float16):

* **write**: ``--tokens`` new tokens scattered over the pool (a random permutation of
  slots, seed 0): `write_slots` against `write_slots_quantized` (int8 also reduces each
  token's amax per head and writes its scales);
* **gather**: the same number of tokens read back through random block tables of
  ``--seq-len`` tokens each: `gather_kv` against `gather_kv_dequantized` to float16;
* **decode**: one decode step of ``--batch`` sequences of ``--context`` tokens:
  `decode_attention` on each pool (the launch prepared once, the kernel timed), which
  reads 2 bytes per K/V element in float16 and 1 byte (plus int8's scales) quantized.

Inputs are device arrays, so the wrappers upload nothing; each time is the median of
``--repeats`` between CUDA events after ``--warmup`` calls. Reported per row: ms, and
**vs float16** = float16 ms / this ms (above 1: faster than float16). Output: a markdown
table on stdout; with ``--out DIR`` (default: ``$OUT`` when set, as
`scripts/gpu_check.sh` sets it) also ``DIR/quantized.json``. Under the CUDA simulator
nothing can be measured: the script says so and exits 0; ``--tiny`` runs the same code
at tiny sizes there (timings meaningless), which is how the tests keep it working.
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
from paged_kv.core.kv_dtype import KV_DTYPES
from paged_kv.gpu.kernels import (
    gather_kv,
    gather_kv_dequantized,
    write_slots,
    write_slots_quantized,
)
from paged_kv.gpu.kernels.paged_attention import prepare_decode
from paged_kv.gpu.kernels.quantized import scales_shape

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import median_ms  # noqa: E402

cuda = device.cuda_api()  # numba.cuda on a GPU, numba.cuda.simulator otherwise

KV_DTYPE_NAMES = ("float16", "int8", "fp8_e4m3")


@dataclass(frozen=True)
class Setup:
    """Shapes of the three operations (default: OPT-13B heads)."""

    tokens: int = 16384  # tokens written and gathered
    seq_len: int = 1024  # tokens per gathered sequence
    batch: int = 64  # decode sequences
    context: int = 2048  # tokens per decode sequence
    num_kv_heads: int = 40
    head_dim: int = 128
    block_size: int = 16


def measured(ms: float) -> float | None:
    """`ms`, or None when not measurable (the simulator's events report 0 or less)."""
    return ms if ms > 0 else None


class Pools:
    """A zeroed pool of `kv_dtype` with its scales, both on the device."""

    def __init__(self, kv_dtype: str, num_blocks: int, setup: Setup) -> None:
        kv = KV_DTYPES[kv_dtype]
        shape = (1, 2, num_blocks, setup.block_size, setup.num_kv_heads, setup.head_dim)
        self.pool = cuda.device_array(shape, np.dtype(kv.storage))
        self.pool[:] = np.dtype(kv.storage).type(0)
        self.scales = None
        if kv.quantized:
            self.scales = cuda.device_array(scales_shape(kv, shape), np.float32)
            self.scales[:] = np.float32(0.05)  # FP8's static scales; int8's are rewritten

    def write(self, k, v, slots) -> None:
        if self.scales is None:
            write_slots(self.pool, 0, k, v, slots)
        else:
            write_slots_quantized(self.pool, self.scales, 0, k, v, slots)

    def gather(self, tables, lens) -> None:
        if self.scales is None:
            gather_kv(self.pool, 0, tables, lens)
        else:
            gather_kv_dequantized(self.pool, self.scales, 0, tables, lens, dtype="float16")


def measure(setup: Setup, warmup: int, repeats: int) -> list[dict]:
    """Rows ``{operation, kv_dtype, ms}`` for every operation and KV dtype."""
    rng = np.random.default_rng(0)
    heads = (setup.num_kv_heads, setup.head_dim)
    num_blocks = 2 * -(-setup.tokens // setup.block_size)
    slots = rng.permutation(num_blocks * setup.block_size)[:setup.tokens].astype(np.int64)
    k = cuda.to_device(rng.standard_normal((setup.tokens, *heads)).astype(np.float16))
    v = cuda.to_device(rng.standard_normal((setup.tokens, *heads)).astype(np.float16))
    slots_dev = cuda.to_device(slots)
    per_seq = -(-setup.seq_len // setup.block_size)
    num_seqs = setup.tokens // setup.seq_len
    tables = cuda.to_device(rng.permutation(num_blocks)[:num_seqs * per_seq]
                            .reshape(num_seqs, per_seq).astype(np.int32))
    lens = np.full(num_seqs, setup.seq_len, dtype=np.int64)
    dec_per_seq = -(-setup.context // setup.block_size)
    dec_blocks = setup.batch * dec_per_seq
    dec_tables = rng.permutation(dec_blocks).reshape(setup.batch, dec_per_seq)
    dec_lens = np.full(setup.batch, setup.context, dtype=np.int64)
    q = rng.standard_normal((setup.batch, setup.num_kv_heads, setup.head_dim))
    rows = []
    for kv_dtype in KV_DTYPE_NAMES:
        pools = Pools(kv_dtype, num_blocks, setup)
        write_ms = median_ms(lambda p=pools: p.write(k, v, slots_dev), warmup, repeats)
        gather_ms = median_ms(lambda p=pools: p.gather(tables, lens), warmup, repeats)
        decode = Pools(kv_dtype, dec_blocks, setup)
        # any finite contents: codes 0 (zero K/V) time the same as any others
        launch = prepare_decode(decode.pool, 0, q, dec_tables, dec_lens,
                                kv_scales=decode.scales)
        decode_ms = median_ms(launch, warmup, repeats)
        if not np.isfinite(launch.out.copy_to_host()).all():
            raise RuntimeError(f"decode attention over {kv_dtype} gave non-finite output")
        rows += [{"operation": op, "kv_dtype": kv_dtype, "ms": measured(ms)}
                 for op, ms in (("write", write_ms), ("gather", gather_ms),
                                ("decode", decode_ms))]
    base = {r["operation"]: r["ms"] for r in rows if r["kv_dtype"] == "float16"}
    for r in rows:
        b = base[r["operation"]]
        r["vs_float16"] = b / r["ms"] if b and r["ms"] else None
    return rows


def fmt(x: float | None, digits: int) -> str:
    """`x` with `digits` decimals, or "n/a"."""
    return "n/a" if x is None else f"{x:.{digits}f}"


def main(argv: list[str] | None = None) -> int:
    """Print the table (and write the JSON); exit 0, also under the simulator."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=Setup.tokens,
                        help="tokens written and gathered (default: %(default)s)")
    parser.add_argument("--seq-len", type=int, default=Setup.seq_len,
                        help="tokens per gathered sequence (default: %(default)s)")
    parser.add_argument("--batch", type=int, default=Setup.batch,
                        help="decode sequences (default: %(default)s)")
    parser.add_argument("--context", type=int, default=Setup.context,
                        help="tokens per decode sequence (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls first")
    parser.add_argument("--repeats", type=int, default=10, help="timed calls (median)")
    parser.add_argument("--out", type=Path, default=os.environ.get("OUT") or None,
                        help="also write quantized.json here (default: $OUT when set)")
    parser.add_argument("--tiny", action="store_true",
                        help="tiny sizes: a smoke run, also on the simulator")
    args = parser.parse_args(argv)
    if device.is_simulator() and not args.tiny:
        print("benchmarks/quantized.py needs an NVIDIA GPU: kernels are running in Numba's "
              "CUDA simulator, whose timings mean nothing. Nothing measured.")
        return 0
    if args.tiny:
        setup = Setup(tokens=8, seq_len=4, batch=1, context=5, num_kv_heads=1, head_dim=8,
                      block_size=4)
        args.warmup, args.repeats = 0, 1
        if device.is_simulator():
            sys.setswitchinterval(2e-4)  # the simulator's barriers poll under the GIL
    else:
        setup = Setup(tokens=args.tokens, seq_len=args.seq_len, batch=args.batch,
                      context=args.context)
    rows = measure(setup, args.warmup, args.repeats)
    name = device.device_name()
    print(f"# Quantized KV: write, gather and decode attention vs float16 on {name}\n")
    print(f"setup: {setup}; K/V in and out in float16; warm-up {args.warmup}, median of "
          f"{args.repeats}\n")
    lines = ["| operation | KV dtype | ms | vs float16 |", "|---|---|---:|---:|"]
    lines += [f"| {r['operation']} | {r['kv_dtype']} | {fmt(r['ms'], 3)} | "
              f"{fmt(r['vs_float16'], 2)} |" for r in rows]
    print("\n".join(lines))
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        record = {"device": name, "version": __version__, "setup": asdict(setup),
                  "warmup": args.warmup, "repeats": args.repeats, "rows": rows}
        (args.out / "quantized.json").write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
