"""The block map: the GPU pool over time, blocks coloured by owner and state."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from paged_kv.block_map import EVICTABLE, FREE, SHARED, BlockMapRecorder
from paged_kv.plots._style import new_axes

#: colours of the block-map states that are not an owner
BLOCK_MAP_COLORS = {
    "shared": "#212529",
    "unfilled": "#ff8787",
    "evictable": "#868e96",
    "free": "#f8f9fa",
}
# tab20 without its reds, pinks and greys, so owners never look like a state
_OWNER_COLORS = [plt.cm.tab20(i) for i in (0, 2, 4, 8, 10, 16, 18, 1, 3, 5, 9, 11, 17, 19)]


def plot_block_map(recorder: BlockMapRecorder, ax=None, title: str = "") -> plt.Figure:
    """The GPU pool over time: one column per snapshot, one row per token slot.

    `recorder` is a `paged_kv.block_map.BlockMapRecorder` (or anything with ``states``
    and ``fill`` arrays of shape ``[snapshot, block]`` and a ``block_size``). A slot that
    holds a token takes its owner's colour (black when several owners share the block);
    a slot of a held block with no token yet is internal fragmentation; evictable cached
    blocks are grey and free blocks blank.
    """
    from matplotlib.colors import to_rgb
    from matplotlib.patches import Patch

    states = np.asarray(recorder.states)
    fill = np.asarray(recorder.fill)
    bs = int(recorder.block_size)
    num_snaps, num_blocks = states.shape
    rgb = {k: np.array(to_rgb(c)) for k, c in BLOCK_MAP_COLORS.items()}
    owners = np.array([to_rgb(c) for c in _OWNER_COLORS])
    block_rgb = np.empty((num_snaps, num_blocks, 3))
    block_rgb[:] = rgb["free"]
    held = states >= 0
    block_rgb[held] = owners[states[held] % len(owners)]
    block_rgb[states == SHARED] = rgb["shared"]
    block_rgb[states == EVICTABLE] = rgb["evictable"]
    block_rgb[states == FREE] = rgb["free"]
    # expand each block into its slots: slot o of a held block is filled when o < fill
    offset = np.arange(bs)[None, None, :]
    image = np.repeat(block_rgb[:, :, None, :], bs, axis=2)
    unfilled = ((states >= 0) | (states == SHARED))[:, :, None] & (offset >= fill[:, :, None])
    image[unfilled] = rgb["unfilled"]
    image = image.reshape(num_snaps, num_blocks * bs, 3).transpose(1, 0, 2)

    fig, ax = new_axes(ax, size=(9, 5))
    ax.imshow(image, aspect="auto", interpolation="nearest",
              extent=(-0.5, num_snaps - 0.5, num_blocks, 0))
    ax.set_xlabel("snapshot (step)")
    ax.set_ylabel(f"physical block (rows: its {bs} token slots)")
    ax.set_title(title or "The GPU block pool over time")
    handles = [
        Patch(color=owners[0], label="token of one request (a colour each)"),
        Patch(color=rgb["shared"], label="block shared by several requests"),
        Patch(color=rgb["unfilled"], label="slot reserved, no token yet (internal frag.)"),
        Patch(color=rgb["evictable"], label="evictable cached block"),
        Patch(facecolor=rgb["free"], edgecolor="#adb5bd", label="free block"),
    ]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    return fig
