"""BlockTable: slot arithmetic and blocks needed at boundaries."""

import numpy as np
import pytest

from paged_kv.core.block_table import BlockTable


def test_slot_mapping_crosses_blocks():
    table = BlockTable(4, [7, 2, 5], num_tokens=10)
    np.testing.assert_array_equal(table.slot_mapping(2, 7), [30, 31, 8, 9, 10])
    assert table.slot(9) == 5 * 4 + 1
    assert (table.num_full_blocks, table.last_block_partial) == (2, True)


@pytest.mark.parametrize(
    ("num_tokens", "new", "needed"),
    [(0, 1, 1), (3, 1, 0), (4, 1, 1), (4, 4, 1), (4, 5, 2), (5, 0, 0)],
)
def test_blocks_needed_only_at_boundaries(num_tokens, new, needed):
    table = BlockTable(4, list(range(-(-num_tokens // 4))), num_tokens)
    assert table.blocks_needed(new) == needed


def test_slot_mapping_rejects_positions_beyond_blocks():
    with pytest.raises(ValueError, match="outside"):
        BlockTable(4, [0], 3).slot_mapping(0, 5)
