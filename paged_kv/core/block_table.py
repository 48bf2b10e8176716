"""Block table: one sequence's map from logical to physical blocks (metadata only).

Logical block ``i`` of a sequence holds its token positions ``i*block_size ..
(i+1)*block_size - 1``; position ``p`` lives at::

    block_id = blocks[p // block_size]
    slot     = block_id * block_size + p % block_size

Tables are append-only at the end, except that copy-on-write may replace the last,
partially filled block, and swapping replaces every id with one from the other pool.
"""

from __future__ import annotations

import numpy as np

from paged_kv.core.validate import cdiv, require_range


class BlockTable:
    """The physical blocks of one sequence and how many token slots of them are filled."""

    __slots__ = ("block_size", "blocks", "num_tokens")

    def __init__(
        self, block_size: int, blocks: list[int] | None = None, num_tokens: int = 0
    ) -> None:
        #: token slots per block
        self.block_size = block_size
        #: physical block ids, logical order
        self.blocks: list[int] = list(blocks) if blocks else []
        #: tokens stored; the last block is partial when num_tokens % block_size != 0
        self.num_tokens = num_tokens

    @property
    def num_blocks(self) -> int:
        """Blocks held."""
        return len(self.blocks)

    @property
    def num_full_blocks(self) -> int:
        """Blocks whose every slot holds a token."""
        return self.num_tokens // self.block_size

    @property
    def last_block_partial(self) -> bool:
        """True when the last block has free slots."""
        return self.num_tokens % self.block_size != 0

    def blocks_needed(self, num_new_tokens: int) -> int:
        """How many more blocks holding `num_new_tokens` more tokens takes."""
        return cdiv(self.num_tokens + num_new_tokens, self.block_size) - len(self.blocks)

    def slot(self, position: int) -> int:
        """The pool slot of token `position`."""
        bs = self.block_size
        return self.blocks[position // bs] * bs + position % bs

    def slot_mapping(self, start: int, end: int) -> np.ndarray:
        """Slots of positions ``start .. end-1`` as an int64 array."""
        require_range("this table", start, end, len(self.blocks) * self.block_size)
        bs = self.block_size
        first = start // bs  # only the blocks the range touches leave the list
        table = np.asarray(self.blocks[first:cdiv(end, bs)], dtype=np.int64)
        positions = np.arange(start, end, dtype=np.int64)
        return table[positions // bs - first] * bs + positions % bs

    def copy(self) -> BlockTable:
        """An independent copy (fork)."""
        return BlockTable(self.block_size, self.blocks, self.num_tokens)

    def __repr__(self) -> str:
        return f"BlockTable(blocks={self.blocks}, num_tokens={self.num_tokens})"
