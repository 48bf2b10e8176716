"""Grid sizing shared by every host wrapper: one element per thread, 1-D grid."""

from __future__ import annotations

from typing import Any

#: Threads per CUDA block. 256 keeps eight warps per block, enough to hide memory
#: latency on every architecture since Volta, while staying under the 1024 limit.
THREADS_PER_BLOCK = 256


def blocks_for(num_threads: int, threads_per_block: int = THREADS_PER_BLOCK) -> int:
    """How many blocks of `threads_per_block` cover `num_threads` (ceiling division)."""
    return (num_threads + threads_per_block - 1) // threads_per_block


def launch(kernel: Any, num_threads: int, *args: Any) -> None:
    """Launch `kernel` over `num_threads` threads (no launch at all when zero).

    The launch is asynchronous on the default stream, so later launches and copies on
    that stream see its writes; a host read of mapped memory must synchronize first.
    """
    if num_threads <= 0:
        return
    kernel[blocks_for(num_threads), THREADS_PER_BLOCK](*args)
