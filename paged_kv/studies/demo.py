"""Data-plane demo: every kernel moves real bytes, and every byte is checked.

`run_demo` builds a small `KVStorage`, writes the KV of a few sequences through the
slot-write kernel (random block tables, random data, partial last blocks, a padding
token), gathers it back (whole and from start offsets), copies a block as a
copy-on-write would, swaps blocks out to the host pool and back into other GPU
blocks, and compares bytes after each step with what was written. It prints the
device that ran the kernels and one "verified" line per step, and returns True only
when every comparison matched.
"""

from __future__ import annotations

import sys
from typing import TextIO

import numpy as np

from paged_kv.core.config import ModelSpec, get_model
from paged_kv.core.humanize import format_bytes
from paged_kv.gpu.device import device_name

#: Demo geometry: small enough for the CUDA simulator to finish in about a second.
BLOCK_SIZE = 4
NUM_GPU_BLOCKS = 16
NUM_HOST_BLOCKS = 8
SEQ_LENS = (7, 12, 5)  # 7 and 5 end in a partial block


#: Kernel threads Numba's CUDA simulator runs per second on one core (measured with this
#: demo at 2.6k-3.5k threads/s for 13k-100k threads; the lower end, to err long).
SIMULATOR_THREADS_PER_S = 3000


def _thread_work(run_bytes: int, itemsize: int) -> int:
    """Thread-steps of one copy run: threads per run times the steps each takes.

    Mirrors `paged_kv.gpu.kernels._units`: units of the largest of 16, 8, 4, 2 bytes that
    divides the run, two 8-byte units per step at 16, at most 256 threads per run.
    """
    width = next(w for w in (16, 8, 4, 2) if w >= itemsize and run_bytes % w == 0)
    steps = run_bytes // 16 if width == 16 else run_bytes // width
    threads = max(1, min(256, steps))
    return threads * -(-steps // threads)


def simulator_seconds(model: str | ModelSpec = "tiny") -> float:
    """Seconds `run_demo` takes in the CUDA simulator for `model`, estimated from its
    launch sizes (slot writes, three gathers and a block copy per layer; swaps are
    memcpy and launch no threads)."""
    spec = model if isinstance(model, ModelSpec) else get_model(model)
    token_bytes = spec.num_kv_heads * spec.head_dim * spec.itemsize
    tokens = sum(SEQ_LENS)
    token_runs = spec.num_layers * ((tokens + 1) + 3 * tokens)  # + 1: the padding token
    work = token_runs * _thread_work(token_bytes, spec.itemsize)
    work += 2 * spec.num_layers * _thread_work(BLOCK_SIZE * token_bytes, spec.itemsize)
    return work / SIMULATOR_THREADS_PER_S


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


def run_demo(model: str | ModelSpec = "tiny", seed: int = 0, file: TextIO | None = None) -> bool:
    """Run the data-plane demo on `model` with random data from `seed`; print to `file`
    (default: the `sys.stdout` of the moment of the call).

    Returns True when every byte read back matched what was written, False otherwise
    (each mismatch is printed as a FAILED line).
    """
    from paged_kv.gpu.storage import KVStorage  # noqa: PLC0415 - loads numba

    file = sys.stdout if file is None else file
    spec = model if isinstance(model, ModelSpec) else get_model(model)
    rng = np.random.default_rng(seed)
    dtype = np.dtype(spec.dtype)
    heads = (spec.num_kv_heads, spec.head_dim)
    storage = KVStorage(spec, BLOCK_SIZE, NUM_GPU_BLOCKS, NUM_HOST_BLOCKS)
    ok = True

    def report(passed: bool, what: str) -> None:
        nonlocal ok
        ok &= passed
        print(f"{'verified' if passed else 'FAILED  '} {what}", file=file)

    print(f"paged_kv data-plane demo on {device_name()}", file=file)
    print(
        f"model {spec.name}: {spec.num_layers} layers x {spec.num_kv_heads} KV heads x "
        f"head_dim {spec.head_dim}, {spec.dtype}; block_size {BLOCK_SIZE}; GPU pool "
        f"{NUM_GPU_BLOCKS} blocks ({format_bytes(storage.nbytes_gpu)}), host pool "
        f"{NUM_HOST_BLOCKS} blocks ({format_bytes(storage.nbytes_host)})",
        file=file,
    )

    # Random, disjoint block tables; the remaining blocks stay free for copy and swap.
    order = [int(b) for b in rng.permutation(NUM_GPU_BLOCKS)]
    tables, free = [], order
    for seq_len in SEQ_LENS:
        n = -(-seq_len // BLOCK_SIZE)
        tables.append(free[:n])
        free = free[n:]
    print(f"sequences: lengths {list(SEQ_LENS)}, block tables {tables}", file=file)

    # One batch per layer: every token of every sequence, plus one padding token.
    slots = [table[pos // BLOCK_SIZE] * BLOCK_SIZE + pos % BLOCK_SIZE
             for table, seq_len in zip(tables, SEQ_LENS, strict=True) for pos in range(seq_len)]
    pad_at = int(rng.integers(len(slots) + 1))
    mapping = np.array(slots[:pad_at] + [-1] + slots[pad_at:], dtype=np.int64)
    real = mapping >= 0
    written = []
    for layer in range(spec.num_layers):
        k = rng.standard_normal((len(mapping), *heads)).astype(dtype)
        v = rng.standard_normal((len(mapping), *heads)).astype(dtype)
        storage.write(layer, k, v, mapping)
        written.append((k[real], v[real]))  # in sequence order: what a gather returns
    total = len(slots)
    kv_bytes = 2 * total * spec.num_layers * heads[0] * heads[1] * dtype.itemsize

    matched = all(
        all(_same(a, b) for a, b in zip(storage.gather(layer, tables, SEQ_LENS),
                                        written[layer], strict=True))
        for layer in range(spec.num_layers)
    )
    report(matched, f"slot write -> gather: {total} tokens x {spec.num_layers} layers, "
                    f"{format_bytes(kv_bytes)} of K/V byte-exact (padding token skipped)")

    starts = [int(rng.integers(n + 1)) for n in SEQ_LENS]
    offsets = np.cumsum([0, *SEQ_LENS])
    keep = np.concatenate([np.arange(offsets[s] + starts[s], offsets[s + 1])
                           for s in range(len(SEQ_LENS))])
    matched = all(
        all(_same(a, b[keep]) for a, b in zip(storage.gather(layer, tables, SEQ_LENS, starts),
                                              written[layer], strict=True))
        for layer in range(spec.num_layers)
    )
    report(matched, f"gather from start offsets {starts}: {len(keep)} tokens byte-exact")

    # Copy-on-write of sequence 0's partial last block into a free block.
    src, dst = tables[0][-1], free.pop(0)
    storage.copy_blocks([(src, dst)])
    gpu = storage.gpu_snapshot()
    report(_same(gpu[:, :, dst], gpu[:, :, src]),
           f"block copy {src} -> {dst}: {format_bytes(spec.bytes_per_block(BLOCK_SIZE))} "
           f"(all layers, K and V) byte-exact")
    before_swap = gpu

    # Swap sequence 1 out to scattered host blocks, then back into other GPU blocks.
    host_ids = [int(b) for b in rng.permutation(NUM_HOST_BLOCKS)[: len(tables[1])]]
    storage.swap_out(list(zip(tables[1], host_ids, strict=True)))
    host = storage.host_snapshot()
    report(all(_same(host[:, :, h], before_swap[:, :, g])
               for g, h in zip(tables[1], host_ids, strict=True)),
           f"swap out GPU {tables[1]} -> host {host_ids}: "
           f"{format_bytes(len(host_ids) * spec.bytes_per_block(BLOCK_SIZE))} byte-exact")
    new_ids, free = free[: len(host_ids)], free[len(host_ids):]
    storage.swap_in(list(zip(host_ids, new_ids, strict=True)))
    tables[1] = new_ids
    matched = all(
        all(_same(a, b) for a, b in zip(storage.gather(layer, tables, SEQ_LENS),
                                        written[layer], strict=True))
        for layer in range(spec.num_layers)
    )
    report(matched, f"swap in host {host_ids} -> GPU {new_ids}, then gather through the new "
                    f"block table: {total} tokens byte-exact")

    print("all verified" if ok else "DEMO FAILED: bytes read back differ from bytes written",
          file=file)
    return ok
