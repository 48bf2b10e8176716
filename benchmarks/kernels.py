"""Kernel bandwidth on a GPU, next to the driver's own copy of the same bytes.

For each kernel and size this prints a markdown row with:

* **kernel GB/s**: KV payload bytes moved / kernel time (1 GB = 1e9 B). The payload is
  what the operation moves, each byte read once and written once: slot write and
  gather ``num_tokens * 2 (K, V) * num_kv_heads * head_dim * itemsize``; block copy and
  swap ``num_pairs * num_layers * 2 * block_size * num_kv_heads * head_dim * itemsize``.
  The kernel alone is timed: index arrays are uploaded beforehand.
* **wrapper GB/s**: the same bytes through the public wrapper (`write_slots`, ...),
  which adds host-side validation and the index uploads.
* **d2d GB/s**: ``dst.copy_to_device(src)`` between two device arrays of the same byte
  count (``cuMemcpyDtoD``), and the kernel's ratio to it.
* **memcpy GB/s** (swap rows only): ``copy_to_host`` / ``copy_to_device`` of the same
  bytes between the device and pinned host memory (``cuMemcpyDtoH/HtoD``); the swap
  kernel reads or writes mapped host memory over the same bus, so this is its ceiling.

Timing: CUDA events on the default stream around each call, ``--warmup`` calls first,
the median of ``--repeats`` calls reported. Block ids are a random permutation (seed
0), so copies gather from scattered blocks as a real cache does.

Under the CUDA simulator nothing can be measured: the script says so and exits 0.
``--tiny`` runs the same code at tiny sizes (timings meaningless on the simulator),
which is how the test suite keeps this script working.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from paged_kv import device
from paged_kv.kernels import copy_blocks, gather_kv, swap_blocks, write_slots
from paged_kv.kernels._launch import launch
from paged_kv.kernels.block_copy import block_copy_kernel
from paged_kv.kernels.gather import gather_kernel
from paged_kv.kernels.slot_write import slot_write_kernel

from numba import cuda  # isort: skip  (after paged_kv chose GPU or simulator)

MiB = 1 << 20


@dataclass(frozen=True)
class Dims:
    """Pool dimensions for the benchmark (default: one Llama-3-8B layer group)."""

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
        """Pool shape with `num_blocks` blocks (layout of `paged_kv.storage`)."""
        return (self.num_layers, 2, num_blocks, self.block_size, self.num_kv_heads,
                self.head_dim)


def median_ms(fn: Callable[[], object], warmup: int, repeats: int) -> float:
    """Median milliseconds of `fn` between two CUDA events on the default stream."""
    for _ in range(warmup):
        fn()
    cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, stop = cuda.event(), cuda.event()  # timing events by default
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
    return statistics.median(times)


def gbps(num_bytes: int, ms: float) -> float | None:
    """GB/s, or None when the time is not measurable (the simulator reports 0)."""
    return num_bytes / (ms * 1e-3) / 1e9 if ms > 0 else None


def fmt(x: float | None, digits: int = 1) -> str:
    """`x` with `digits` decimals, or "n/a"."""
    return "n/a" if x is None else f"{x:.{digits}f}"


def ratio(a: float | None, b: float | None) -> str:
    """``a / b`` to two decimals, or "n/a" when either is unknown."""
    return "n/a" if a is None or not b else f"{a / b:.2f}"


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
        header = ["kernel", "MiB", "kernel ms", "kernel GB/s", "wrapper GB/s", "d2d GB/s",
                  "kernel/d2d", "memcpy GB/s", "kernel/memcpy"]
        self.lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]

    def time(self, fn: Callable[[], object]) -> float:
        """Median ms of `fn` (see `median_ms`)."""
        return median_ms(fn, self.warmup, self.repeats)

    def row(self, name: str, nbytes: int, kernel_ms: float, wrapper_ms: float,
            d2d: float | None, memcpy: float | None | str = "-") -> None:
        """Append one table row (`memcpy` is "-" for rows without a host copy)."""
        k = gbps(nbytes, kernel_ms)
        cells = [name, f"{nbytes / MiB:.3g}", fmt(kernel_ms if kernel_ms > 0 else None, 3),
                 fmt(k), fmt(gbps(nbytes, wrapper_ms)), fmt(d2d), ratio(k, d2d)]
        if isinstance(memcpy, str):
            cells += [memcpy, memcpy]
        else:
            cells += [fmt(memcpy), ratio(k, memcpy)]
        self.lines.append("| " + " | ".join(cells) + " |")

    def size(self, size: int) -> None:
        """All kernels moving about `size` bytes each."""
        a, b = self.scratch_a[:size], self.scratch_b[:size]
        d2d = gbps(size, self.time(lambda: b.copy_to_device(a)))
        self.slot_write_and_gather(size, d2d)
        self.copy_and_swap(size, d2d)

    def slot_write_and_gather(self, size: int, d2d: float | None) -> None:
        """Whole blocks of layer 0, blocks in random order."""
        dims, dtype, gpu = self.dims, self.dtype, self.gpu
        num_tokens = max(1, size // dims.token_bytes)
        used = self.block_order[: -(-num_tokens // dims.block_size)]
        slots = (used[:, None] * dims.block_size + np.arange(dims.block_size)).ravel()
        slots = slots[:num_tokens].astype(np.int64)
        heads = (dims.num_kv_heads, dims.head_dim)
        k = cuda.to_device(self.rng.standard_normal((num_tokens, *heads)).astype(dtype))
        v = cuda.to_device(self.rng.standard_normal((num_tokens, *heads)).astype(dtype))
        slots_d = cuda.to_device(slots)
        elems = num_tokens * dims.num_kv_heads * dims.head_dim
        kernel_ms = self.time(lambda: launch(slot_write_kernel, elems, gpu, 0, k, v, slots_d))
        wrapper_ms = self.time(lambda: write_slots(gpu, 0, k, v, slots))
        self.row("slot write", num_tokens * dims.token_bytes, kernel_ms, wrapper_ms, d2d)

        batch = min(64, len(used))
        per_seq = -(-len(used) // batch)
        tables = np.full((batch, per_seq), -1, dtype=np.int32)
        seq_lens = np.zeros(batch, dtype=np.int64)
        for s in range(batch):
            mine = used[s * per_seq:(s + 1) * per_seq]
            tables[s, : len(mine)] = mine
            seq_lens[s] = min(len(mine) * dims.block_size,
                              max(0, num_tokens - s * per_seq * dims.block_size))
        cu_out = np.concatenate([[0], np.cumsum(seq_lens)]).astype(np.int64)
        total = int(cu_out[-1])
        k_out = cuda.device_array((total, *heads), dtype)
        v_out = cuda.device_array((total, *heads), dtype)
        args = (gpu, 0, cuda.to_device(tables), cuda.to_device(cu_out),
                cuda.to_device(np.zeros(batch, np.int64)), k_out, v_out)
        g_elems = total * dims.num_kv_heads * dims.head_dim
        kernel_ms = self.time(lambda: launch(gather_kernel, g_elems, *args))
        wrapper_ms = self.time(lambda: gather_kv(gpu, 0, tables, seq_lens))
        self.row("gather", total * dims.token_bytes, kernel_ms, wrapper_ms, d2d)

    def copy_and_swap(self, size: int, d2d: float | None) -> None:
        """Block copy within the GPU pool, then swaps GPU -> host -> GPU; all layers."""
        dims, gpu, host = self.dims, self.gpu, self.host
        num_pairs = max(1, size // dims.block_bytes)
        nbytes = num_pairs * dims.block_bytes
        src = self.block_order[:num_pairs].astype(np.int32)
        dst = self.block_order[num_pairs:2 * num_pairs].astype(np.int32)
        host_ids = self.rng.permutation(host.shape[2])[:num_pairs].astype(np.int32)
        threads = nbytes // self.dtype.itemsize
        src_d, dst_d, host_d = (cuda.to_device(x) for x in (src, dst, host_ids))
        kernel_ms = self.time(lambda: launch(block_copy_kernel, threads, gpu, gpu, src_d, dst_d))
        pairs = np.stack([src, dst], axis=1)
        wrapper_ms = self.time(lambda: copy_blocks(gpu, pairs))
        self.row("block copy", nbytes, kernel_ms, wrapper_ms, d2d)

        staging, device_side = self.pinned[:nbytes], self.scratch_a[:nbytes]
        memcpy = gbps(nbytes, self.time(lambda: device_side.copy_to_host(staging)))
        self.swap("swap out (GPU->host)", gpu, host, src, host_ids, d2d, memcpy)
        memcpy = gbps(nbytes, self.time(lambda: device_side.copy_to_device(staging)))
        self.swap("swap in (host->GPU)", host, gpu, host_ids, dst, d2d, memcpy)

    def swap(self, name: str, src_pool: object, dst_pool: object, src: np.ndarray,
             dst: np.ndarray, d2d: float | None, memcpy: float | None) -> None:
        """One swap direction: the bare kernel and the `swap_blocks` wrapper."""
        nbytes = len(src) * self.dims.block_bytes
        threads = nbytes // self.dtype.itemsize
        src_d, dst_d = cuda.to_device(src), cuda.to_device(dst)
        kernel_ms = self.time(
            lambda: launch(block_copy_kernel, threads, src_pool, dst_pool, src_d, dst_d))
        pairs = np.stack([src, dst], axis=1)
        wrapper_ms = self.time(lambda: swap_blocks(src_pool, dst_pool, pairs))
        self.row(name, nbytes, kernel_ms, wrapper_ms, d2d, memcpy)


def run(dims: Dims, sizes_bytes: list[int], warmup: int, repeats: int) -> list[str]:
    """Benchmark every kernel at every size; return the markdown table's lines."""
    bench = Bench(dims, max(sizes_bytes), warmup, repeats)
    for size in sorted(sizes_bytes):
        bench.size(size)
    return bench.lines


def main(argv: list[str] | None = None) -> int:
    """Print the benchmark table; exit 0 (also under the simulator, with a message)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=float, nargs="+", default=[16, 64, 256],
                        help="MiB of KV moved per call (default: 16 64 256)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=20)
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
    print(f"# Kernel bandwidth on {device.device_name()}\n")
    print(f"dims: {dims}; warm-up {args.warmup}, median of {args.repeats}; "
          f"GB/s = payload bytes / time / 1e9\n")
    print("\n".join(run(dims, sizes, args.warmup, args.repeats)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
