"""Copy kernels and swap paths on a GPU, each next to the driver's copy of the same bytes.

Rows (``--sizes`` MiB of KV per call, default 256 and 1024):

* **slot write, gather, block copy**: GB/s of the wrapper with its ids already on the
  device (``device ids``: the kernel, no validation or upload) and with host ids
  (``host ids``: validation and the upload into reused buffers included), and the ratio
  of the former to **d2d**, ``cuMemcpyDtoD`` of the same byte count between two device
  buffers (goal: at least 0.8).
* **swap out / swap in**, for both paths (``memcpy``: copy engines, ``kernel``: the
  mapped-memory kernel) and both block orders (``contiguous``: one run of consecutive
  ids, one 2-D memcpy; ``scattered``: a random permutation, one memcpy per block),
  host ids: GB/s and the ratio to **pinned**, ``cuMemcpyDtoH`` / ``cuMemcpyHtoD`` of the
  same bytes between device memory and page-locked host memory (goal: at least 0.8).
  Which path should be the default (`paged_kv.gpu.kernels.swap`) is what these rows decide.

Payload bytes: each byte of KV the operation moves, counted once (slot write and
gather: ``num_tokens * 2 * num_kv_heads * head_dim * itemsize``; block copy and swap:
``pairs * num_layers * 2 * block_size * num_kv_heads * head_dim * itemsize``).
1 GB = 1e9 B. Timing: CUDA events on the default stream around each call, ``--warmup``
calls first, the median of ``--repeats``. Block ids are a random permutation (seed 0).

``--big-pool`` instead writes and reads back the last block of a pool of more than
2^31 elements (70,000 blocks: 2.29e9 elements, 4.3 GiB of float16), through every
wrapper, and checks the bytes.

Under the CUDA simulator nothing can be measured: the script says so and exits 0.
``--tiny`` runs the same code at tiny sizes (timings meaningless on the simulator),
which is how the test suite keeps this script working.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from paged_kv.gpu import device
from paged_kv.gpu.kernels import (
    SWAP_METHODS,
    DeviceBuffers,
    copy_blocks,
    gather_kv,
    swap_blocks,
    write_slots,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import gbps, median_ms  # noqa: E402

MiB = 1 << 20
cuda = device.cuda_api()


@dataclass(frozen=True)
class Dims:
    """Pool dimensions for the benchmark (default: Llama-3-8B heads, 4 layers)."""

    num_layers: int = 4
    block_size: int = 16
    num_kv_heads: int = 8
    head_dim: int = 128
    dtype: str = "float16"

    @property
    def token_bytes(self) -> int:
        """K+V bytes of one token in one layer."""
        return 2 * self.num_kv_heads * self.head_dim * np.dtype(self.dtype).itemsize

    @property
    def block_bytes(self) -> int:
        """K+V bytes of one block across all layers."""
        return self.num_layers * self.block_size * self.token_bytes

    def shape(self, num_blocks: int) -> tuple[int, ...]:
        """Pool shape with `num_blocks` blocks (layout of `paged_kv.gpu.storage`)."""
        return (self.num_layers, 2, num_blocks, self.block_size, self.num_kv_heads,
                self.head_dim)


def fmt(x: float | None, digits: int = 1) -> str:
    """`x` with `digits` decimals, or "n/a"."""
    return "n/a" if x is None else f"{x:.{digits}f}"


def ratio(a: float | None, b: float | None) -> str:
    """``a / b`` to two decimals, or "n/a" when either is unknown."""
    return "n/a" if a is None or not b else f"{a / b:.2f}"


HEADER = ["operation", "MiB", "device ids GB/s", "host ids GB/s", "baseline",
          "baseline GB/s", "ratio (goal)"]


class Bench:
    """Pools and scratch buffers sized for the largest run, reused at every size."""

    def __init__(self, dims: Dims, largest: int, warmup: int, repeats: int) -> None:
        self.dims = dims
        self.dtype = np.dtype(dims.dtype)
        self.warmup, self.repeats = warmup, repeats
        self.rng = np.random.default_rng(0)
        tokens_max = largest // dims.token_bytes
        pairs_max = max(1, largest // dims.block_bytes)
        # Enough blocks for the largest write/gather in one layer and disjoint copy pairs.
        num_blocks = max(-(-tokens_max // dims.block_size), 2 * pairs_max)
        self.gpu = cuda.device_array(dims.shape(num_blocks), self.dtype)
        self.gpu[:] = self.dtype.type(0)
        self.host = cuda.mapped_array(dims.shape(pairs_max), self.dtype)
        self.host[:] = self.dtype.type(0)
        self.scratch_a = cuda.device_array(largest, np.uint8)
        self.scratch_b = cuda.device_array(largest, np.uint8)
        self.pinned = cuda.pinned_array(largest, np.uint8)
        self.block_order = self.rng.permutation(num_blocks)
        self.buffers = DeviceBuffers()
        self.lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]

    def time(self, fn: Callable[[], object]) -> float:
        """Median ms of `fn` (see `median_ms`)."""
        return median_ms(fn, self.warmup, self.repeats)

    def row(self, name: str, nbytes: int, device_ms: float | None, host_ms: float,
            baseline: str, base_gbps: float | None) -> None:
        """Append one table row; the ratio is of the fastest measured path."""
        best = gbps(nbytes, device_ms if device_ms is not None else host_ms)
        cells = [name, f"{nbytes / MiB:.4g}",
                 "-" if device_ms is None else fmt(gbps(nbytes, device_ms)),
                 fmt(gbps(nbytes, host_ms)), baseline, fmt(base_gbps),
                 f"{ratio(best, base_gbps)} (0.8)"]
        self.lines.append("| " + " | ".join(cells) + " |")

    def size(self, size: int) -> None:
        """Every operation moving about `size` bytes."""
        a, b = self.scratch_a[:size], self.scratch_b[:size]
        d2d = gbps(size, self.time(lambda: b.copy_to_device(a)))
        self.slot_write_and_gather(size, d2d)
        self.block_copy(size, d2d)
        self.swaps(size)

    def slot_write_and_gather(self, size: int, d2d: float | None) -> None:
        """Whole blocks of layer 0, blocks in random order."""
        dims, dtype, gpu, buf = self.dims, self.dtype, self.gpu, self.buffers
        num_tokens = max(1, size // dims.token_bytes)
        used = self.block_order[: -(-num_tokens // dims.block_size)]
        slots = (used[:, None] * dims.block_size + np.arange(dims.block_size)).ravel()
        slots = slots[:num_tokens].astype(np.int64)
        heads = (dims.num_kv_heads, dims.head_dim)
        k = cuda.to_device(self.rng.standard_normal((num_tokens, *heads)).astype(dtype))
        v = cuda.to_device(self.rng.standard_normal((num_tokens, *heads)).astype(dtype))
        slots_d = cuda.to_device(slots)
        nbytes = num_tokens * dims.token_bytes
        device_ms = self.time(lambda: write_slots(gpu, 0, k, v, slots_d, buffers=buf))
        host_ms = self.time(lambda: write_slots(gpu, 0, k, v, slots, buffers=buf))
        self.row("slot write", nbytes, device_ms, host_ms, "d2d", d2d)

        batch = min(64, len(used))
        per_seq = -(-len(used) // batch)
        tables = np.full((batch, per_seq), -1, dtype=np.int32)
        seq_lens = np.zeros(batch, dtype=np.int64)
        for s in range(batch):
            mine = used[s * per_seq:(s + 1) * per_seq]
            tables[s, : len(mine)] = mine
            seq_lens[s] = min(len(mine) * dims.block_size,
                              max(0, num_tokens - s * per_seq * dims.block_size))
        tables_d = cuda.to_device(tables)
        nbytes = int(seq_lens.sum()) * dims.token_bytes
        device_ms = self.time(lambda: gather_kv(gpu, 0, tables_d, seq_lens, buffers=buf))
        host_ms = self.time(lambda: gather_kv(gpu, 0, tables, seq_lens, buffers=buf))
        self.row("gather", nbytes, device_ms, host_ms, "d2d", d2d)

    def block_copy(self, size: int, d2d: float | None) -> None:
        """Copy-on-write of scattered blocks within the GPU pool; all layers."""
        dims, gpu, buf = self.dims, self.gpu, self.buffers
        num_pairs = max(1, size // dims.block_bytes)
        src = self.block_order[:num_pairs]
        dst = self.block_order[num_pairs:2 * num_pairs]
        pairs = np.stack([src, dst], axis=1).astype(np.int32)
        pairs_d = cuda.to_device(pairs)
        device_ms = self.time(lambda: copy_blocks(gpu, pairs_d, buffers=buf))
        host_ms = self.time(lambda: copy_blocks(gpu, pairs, buffers=buf))
        self.row("block copy", num_pairs * dims.block_bytes, device_ms, host_ms, "d2d", d2d)

    def swaps(self, size: int) -> None:
        """Swap out and in, both paths, contiguous and scattered ids; all layers."""
        dims, gpu, host = self.dims, self.gpu, self.host
        num_pairs = max(1, min(size // dims.block_bytes, host.shape[2]))
        nbytes = num_pairs * dims.block_bytes
        staging, device_side = self.pinned[:nbytes], self.scratch_a[:nbytes]
        out_base = gbps(nbytes, self.time(lambda: device_side.copy_to_host(staging)))
        in_base = gbps(nbytes, self.time(lambda: device_side.copy_to_device(staging)))
        orders = {
            "contiguous": (np.arange(num_pairs), np.arange(num_pairs)),
            "scattered": (self.block_order[:num_pairs],
                          self.rng.permutation(host.shape[2])[:num_pairs]),
        }
        for order, (gpu_ids, host_ids) in orders.items():
            out_pairs = np.stack([gpu_ids, host_ids], axis=1)
            in_pairs = np.stack([host_ids, gpu_ids], axis=1)
            for method in SWAP_METHODS:
                for name, src, dst, pairs, base in (
                    ("swap out", gpu, host, out_pairs, out_base),
                    ("swap in", host, gpu, in_pairs, in_base),
                ):
                    ms = self.time(lambda s=src, d=dst, p=pairs, m=method: swap_blocks(
                        s, d, p, method=m, buffers=self.buffers))
                    label = f"{name} {method} {order}"
                    base_name = "pinned DtoH" if name == "swap out" else "pinned HtoD"
                    self.row(label, nbytes, None, ms, base_name, base)


def run(dims: Dims, sizes_bytes: list[int], warmup: int, repeats: int) -> list[str]:
    """Benchmark every operation at every size; return the markdown table's lines."""
    bench = Bench(dims, max(sizes_bytes), warmup, repeats)
    for size in sorted(sizes_bytes):
        bench.size(size)
    return bench.lines


def big_pool_check(dims: Dims, num_blocks: int) -> list[str]:
    """Write and read back the last block of a pool of `num_blocks` blocks, every wrapper.

    Returns one line per check; raises AssertionError on a byte mismatch.
    """
    rng = np.random.default_rng(1)
    dtype = np.dtype(dims.dtype)
    shape = dims.shape(num_blocks)
    elements = int(np.prod(shape))
    pool = cuda.device_array(shape, dtype)
    lines = [f"pool {shape} = {elements:,} elements ({elements * dtype.itemsize / 2**30:.2f} "
             f"GiB), more than 2^31: {elements > 2**31}"]
    last = num_blocks - 1
    bs, heads = dims.block_size, (dims.num_kv_heads, dims.head_dim)
    layer = dims.num_layers - 1
    k = rng.standard_normal((bs, *heads)).astype(dtype)
    v = rng.standard_normal((bs, *heads)).astype(dtype)
    write_slots(pool, layer, k, v, last * bs + np.arange(bs))
    got_k, got_v = gather_kv(pool, layer, [[last]], [bs])
    assert np.array_equal(got_k.copy_to_host(), k) and np.array_equal(got_v.copy_to_host(), v)
    assert np.array_equal(pool[layer, 1, last].copy_to_host(), v), "direct read of the end"
    lines.append(f"slot write + gather of block {last} (the pool's last bytes): ok")
    copy_blocks(pool, [(last, 0), (1, last - 1)])
    got_k, _ = gather_kv(pool, layer, [[0]], [bs])
    assert np.array_equal(got_k.copy_to_host(), k)
    lines.append(f"block copy {last} -> 0: ok")
    host = cuda.mapped_array(dims.shape(2), dtype)
    for method in SWAP_METHODS:
        host[:] = dtype.type(0)
        swap_blocks(pool, host, [(last, 1)], method=method)
        cuda.synchronize()
        assert np.array_equal(device.host_copy(host)[layer, 0, 1], k)  # a mapped array
        swap_blocks(host, pool, [(1, last - 2)], method=method)
        got_k, got_v = gather_kv(pool, layer, [[last - 2]], [bs])
        assert np.array_equal(got_k.copy_to_host(), k)
        assert np.array_equal(got_v.copy_to_host(), v)
        lines.append(f"swap ({method}) of block {last} out and back in: ok")
    return lines


def main(argv: list[str] | None = None) -> int:
    """Print the benchmark table; exit 0 (also under the simulator, with a message)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=float, nargs="+", default=[256, 1024],
                        help="MiB of KV moved per call (default: 256 1024)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--big-pool", action="store_true",
                        help="check a pool of more than 2^31 elements instead")
    parser.add_argument("--tiny", action="store_true",
                        help="tiny dims and sizes: a smoke run, also on the simulator")
    args = parser.parse_args(argv)
    if device.is_simulator() and not args.tiny:
        print("benchmarks/kernels.py needs an NVIDIA GPU: kernels are running in Numba's "
              "CUDA simulator, whose timings mean nothing. Nothing measured.")
        return 0
    if args.tiny:
        dims = Dims(num_layers=2, block_size=4, num_kv_heads=2, head_dim=4)
        sizes = [dims.block_bytes * 2, dims.block_bytes * 3]
        args.warmup, args.repeats = 1, 1
    else:
        dims = Dims()
        sizes = [int(mib * MiB) for mib in args.sizes]
    if args.big_pool:
        big = Dims(num_layers=1) if not args.tiny else dims
        # 2 * 16 * 8 * 128 = 32,768 elements per block: 70,000 blocks are 2.29e9 > 2^31
        num_blocks = 70_000 if not args.tiny else 6
        print(f"# Pool beyond 2^31 elements on {device.device_name()}\n")
        print("\n".join(big_pool_check(big, num_blocks)))
        return 0
    print(f"# Copy kernels and swap paths on {device.device_name()}\n")
    print(f"dims: {dims}; warm-up {args.warmup}, median of {args.repeats}; "
          f"GB/s = payload bytes / time / 1e9\n")
    print("\n".join(run(dims, sizes, args.warmup, args.repeats)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
