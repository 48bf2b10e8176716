"""Every ``@cuda.jit`` kernel of paged_kv, each behind a validating host wrapper.

=============  ======================  =============================================
wrapper        kernel                  moves
=============  ======================  =============================================
write_slots    slot_write_kernel       new K/V tokens -> pool slots (one layer)
gather_kv      gather_kernel           pool -> contiguous K/V of a batch (one layer)
copy_blocks    block_copy_kernel       whole blocks within one pool (copy-on-write)
swap_blocks    block_copy_kernel       whole blocks between GPU pool and host pool
=============  ======================  =============================================

Kernels compile lazily (no eager signature), so importing this package needs no GPU.
`KERNELS` lists each kernel with the signatures its wrapper launches, for
`paged_kv.kernels.compile_check`.
"""

from __future__ import annotations

from paged_kv.kernels import block_copy, gather, slot_write
from paged_kv.kernels._launch import THREADS_PER_BLOCK
from paged_kv.kernels.block_copy import copy_blocks
from paged_kv.kernels.gather import gather_kv
from paged_kv.kernels.slot_write import write_slots
from paged_kv.kernels.swap import swap_blocks

#: name -> (dispatcher, signature(dtype) function) for every kernel in the package.
KERNELS = {
    "slot_write": (slot_write.slot_write_kernel, slot_write.signature),
    "gather": (gather.gather_kernel, gather.signature),
    "block_copy": (block_copy.block_copy_kernel, block_copy.signature),
}

__all__ = [
    "KERNELS",
    "THREADS_PER_BLOCK",
    "copy_blocks",
    "gather_kv",
    "swap_blocks",
    "write_slots",
]
