"""The block map: the GPU pool over time, blocks coloured by owner and state."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from paged_kv.plots._style import COLORS, new_axes
from paged_kv.studies.block_map import EVICTABLE, FREE, SHARED, BlockMapRecorder

#: colours of the block-map states that are not an owner (unfilled slots of a held block
#: are internal fragmentation, in that category's colour in every figure)
BLOCK_MAP_COLORS = {
    "shared": "#212529",
    "unfilled": COLORS["internal_frag"],
    "evictable": "#adb5bd",
    "free": "#f8f9fa",
}
#: owner colours: saturated, no reds, none grey, near-black or near-white, so an owner
#: never looks like a state; chosen farthest-first, so any leading run of them is as
#: distinct as the list allows (CIE76 distance >= 20 between any two, >= 35 from
#: every state colour; tests/test_plots.py checks both)
OWNER_COLORS = (
    "#1f77b4", "#ff7f00", "#2ca02c", "#e7cb94", "#e377c2", "#66c2a5", "#bcbd22",
    "#a65628", "#6a3d9a", "#637939", "#b2df8a", "#e6ab02", "#fdb462", "#7b4173",
    "#8c6d31", "#756bb1", "#a6d854", "#bd9e39", "#de9ed6",
)


def owner_colors(states: np.ndarray) -> dict[int, int]:
    """An index into `OWNER_COLORS` for each owner id in `states` (``[snapshot, block]``).

    Owners are taken in order of first appearance. Each takes a colour no owner has used
    yet while one is left; after that, the colour whose last owner left the pool
    longest ago. So two owners in the pool at the same time never share a colour (while
    no more than ``len(OWNER_COLORS)`` are), and a colour comes back as late as it can.
    """
    states = np.asarray(states)
    snaps, _ = np.nonzero(states >= 0)
    owners = states[states >= 0]
    if owners.size == 0:
        return {}
    # nonzero walks snapshot by snapshot: an owner's first hit is its first snapshot
    ids, first_at = np.unique(owners, return_index=True)
    _, last_from_end = np.unique(owners[::-1], return_index=True)
    first = dict(zip(ids.tolist(), snaps[first_at].tolist()))
    last = dict(zip(ids.tolist(), snaps[::-1][last_from_end].tolist()))
    free_since = [-1] * len(OWNER_COLORS)  # last snapshot of the colour's latest owner
    used = [False] * len(OWNER_COLORS)
    out: dict[int, int] = {}
    for owner in sorted(first, key=lambda o: (first[o], o)):
        start = first[owner]
        unused = [i for i in range(len(OWNER_COLORS)) if not used[i]]
        idle = [i for i in range(len(OWNER_COLORS)) if free_since[i] < start]
        if unused:
            pick = unused[0]
        elif idle:
            pick = min(idle, key=lambda i: free_since[i])
        else:  # more owners at once than colours: reuse the one that frees soonest
            pick = min(range(len(OWNER_COLORS)), key=lambda i: free_since[i])
        used[pick] = True
        free_since[pick] = max(free_since[pick], last[owner])
        out[owner] = pick
    return out


def plot_block_map(recorder: BlockMapRecorder, ax=None, title: str = "") -> plt.Figure:
    """The GPU pool over time: one column per snapshot, one row per token slot.

    `recorder` is a `paged_kv.studies.block_map.BlockMapRecorder` (or anything with ``states``
    and ``fill`` arrays of shape ``[snapshot, block]`` and a ``block_size``). A slot that
    holds a token takes its owner's colour (`owner_colors`; black when several owners
    share the block); a slot of a held block with no token yet is internal
    fragmentation (red); evictable cached blocks are grey and free blocks blank.
    """
    from matplotlib.colors import to_rgb
    from matplotlib.patches import Patch

    states = np.asarray(recorder.states)
    fill = np.asarray(recorder.fill)
    bs = int(recorder.block_size)
    num_snaps, num_blocks = states.shape
    rgb = {k: np.array(to_rgb(c)) for k, c in BLOCK_MAP_COLORS.items()}
    palette = np.array([to_rgb(c) for c in OWNER_COLORS])
    block_rgb = np.empty((num_snaps, num_blocks, 3))
    block_rgb[:] = rgb["free"]
    held = states >= 0
    if held.any():
        colour_of = owner_colors(states)
        lookup = np.zeros(int(states.max()) + 1, dtype=np.int64)
        for owner, index in colour_of.items():
            lookup[owner] = index
        block_rgb[held] = palette[lookup[states[held]]]
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
    ax.set_xlabel("step (one snapshot each)")
    ax.set_ylabel(f"physical block (rows: its {bs} token slots)")
    ax.set_title(title or f"The GPU pool over time: {num_blocks} blocks of {bs} tokens",
                 fontsize=10)
    owners = len(np.unique(states[held])) if held.any() else 0
    reuse = ("" if owners <= len(OWNER_COLORS)
             else f";\ncolours reused after {len(OWNER_COLORS)} requests")
    handles = [
        Patch(color=palette[0], label=f"token of one request (a colour each{reuse})"),
        Patch(color=rgb["shared"], label="block shared by several requests"),
        Patch(color=rgb["unfilled"], label="slot reserved, no token yet (internal frag.)"),
        Patch(color=rgb["evictable"], label="evictable cached block"),
        Patch(facecolor=rgb["free"], edgecolor="#adb5bd", label="free block"),
    ]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    return fig
