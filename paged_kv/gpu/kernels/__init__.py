"""Every ``@cuda.jit`` kernel of paged_kv, each behind a validating host wrapper.

=====================  ============================  ======================================
wrapper                kernel / path                 moves
=====================  ============================  ======================================
write_slots            slot_write_kernel             new K/V tokens -> pool slots (one
                                                     layer)
gather_kv              gather_kernel                 pool -> contiguous K/V of a batch (one
                                                     layer)
copy_blocks            block_copy_kernel             whole blocks within one pool
                                                     (copy-on-write)
swap_blocks            copy engines (memcpy) or      whole blocks between GPU pool and host
                       block_copy_kernel             pool
write_slots_quantized  quantized_write_kernel        float16/32 K/V -> int8 or FP8 E4M3
                                                     codes (and int8 scales)
gather_kv_dequantized  dequantized_gather_kernel     quantized pool -> float16/32 K/V of a
                                                     batch
=====================  ============================  ======================================

`decode_attention` and `prefill_attention` (`paged_kv.gpu.kernels.paged_attention`; the
kernel source is `paged_kv.gpu.kernels._attention_kernel`, variants
``paged_attention_<threads>x<queries>``, and ``..._int8`` / ``..._fp8`` for quantized
pools) attend to one layer's K/V through block tables. Quantized pools and their scales:
`paged_kv.gpu.kernels.quantized`.

Every wrapper takes ``stream=None`` (keyword): the work is enqueued on that stream and
the call returns (`paged_kv.gpu.kernels._launch` has the rules). Kernels move copy units of
up to 16 bytes per thread (`paged_kv.gpu.kernels._units` has the rule). Kernels compile
lazily (no eager signature); importing this package makes the device choice of
`paged_kv.gpu.device` (simulator or GPU) but needs no GPU. `KERNELS` lists each kernel with
the signatures its wrapper launches, for `paged_kv.gpu.kernels.compile_check`.
"""

from __future__ import annotations

from paged_kv.core.config import SUPPORTED_DTYPES
from paged_kv.gpu.kernels import _attention_kernel, block_copy, gather, quantized, slot_write
from paged_kv.gpu.kernels._launch import THREADS_PER_BLOCK, DeviceBuffers, default_buffers
from paged_kv.gpu.kernels._units import UNIT_DTYPES
from paged_kv.gpu.kernels.block_copy import copy_blocks
from paged_kv.gpu.kernels.gather import gather_kv
from paged_kv.gpu.kernels.paged_attention import decode_attention, prefill_attention
from paged_kv.gpu.kernels.quantized import gather_kv_dequantized, write_slots_quantized
from paged_kv.gpu.kernels.slot_write import write_slots
from paged_kv.gpu.kernels.swap import DEFAULT_SWAP_METHOD, SWAP_METHODS, swap_blocks

#: name -> (dispatcher, signature(variant) function, variants) for every kernel. The
#: copy kernels move raw bytes, so their variants are the copy-unit dtypes rather than
#: the KV dtypes; a 2-tuple entry means the variants are the KV dtypes
#: (`paged_kv.core.config.SUPPORTED_DTYPES`).
KERNELS = {
    "slot_write": (slot_write.slot_write_kernel, slot_write.signature, UNIT_DTYPES),
    "gather": (gather.gather_kernel, gather.signature, UNIT_DTYPES),
    "block_copy": (block_copy.block_copy_kernel, block_copy.signature, UNIT_DTYPES),
    # quantized pools: variants are the K/V (write) or output (gather) float dtypes
    **{
        f"quantized_write_{suffix}": (quantized.WRITE_KERNELS[storage],
                                      quantized.write_signature(storage), SUPPORTED_DTYPES)
        for storage, suffix in quantized.SUFFIXES.items()
    },
    **{
        f"dequantized_gather_{suffix}": (quantized.GATHER_KERNELS[storage],
                                         quantized.gather_signature(storage), SUPPORTED_DTYPES)
        for storage, suffix in quantized.SUFFIXES.items()
    },
    **{
        f"paged_attention_{threads}x{queries}": (kernel, _attention_kernel.signature)
        for (threads, queries), kernel in _attention_kernel.KERNEL_VARIANTS.items()
    },
    **{
        f"paged_attention_{threads}x{queries}_{quantized.SUFFIXES[storage]}": (
            kernel, _attention_kernel.signature, (storage,))
        for (threads, queries, storage), kernel in _attention_kernel.QUANTIZED_VARIANTS.items()
    },
}

__all__ = [
    "DEFAULT_SWAP_METHOD",
    "KERNELS",
    "SWAP_METHODS",
    "THREADS_PER_BLOCK",
    "DeviceBuffers",
    "copy_blocks",
    "decode_attention",
    "default_buffers",
    "gather_kv",
    "gather_kv_dequantized",
    "prefill_attention",
    "swap_blocks",
    "write_slots",
    "write_slots_quantized",
]
