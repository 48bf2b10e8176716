"""Block tables that stay on the device between steps, updated by rows.

A decode step reads every sequence's block table, but from one step to the next a
table changes only when its sequence crosses a block boundary (one new block id) or
the batch changes. `DeviceBlockTable` keeps the tables of a batch resident in one
device array ``[max_rows, max_blocks]`` (int32, -1 padding: the layout the
paged-attention kernels read) with a NumPy mirror of the same shape, the way vLLM's
``BlockTable`` (``vllm/v1/worker/block_table.py``) keeps a persistent device tensor and
a CPU copy. `update` writes new tables into the mirror row by row, compares, and
uploads only the rows that changed, as one copy of the span from the first changed
row to the last::

    step t:    row 0  [ 7, 3, -1, -1]      step t+1:  row 0  [ 7, 3, -1, -1]  unchanged
               row 1  [ 4, -1, -1, -1]                row 1  [ 4, 9, -1, -1]  <- uploaded
               row 2  [ 5, 8, 2, -1]                  row 2  [ 5, 8, 2, -1]  unchanged

A step with no new block uploads nothing. When a batch needs more rows or a table more
columns than the array has, it grows (doubling) and the whole mirror is uploaded once.

Row ``r`` is batch position ``r``: a caller that keeps its batch order stable between
steps (as vLLM's persistent batch does) uploads only the rows of sequences that grew.
Copies go through `paged_kv.gpu.kernels._launch.DeviceBuffers.copy_in`, so they are
counted with every other upload.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from paged_kv.gpu import device
from paged_kv.gpu.kernels._launch import DeviceBuffers

#: The entry of a row past its table's last block.
PAD = -1

#: Upload name of the row copies (`DeviceBuffers.upload_counts`).
UPLOAD_NAME = "block_table_rows"


class DeviceBlockTable:
    """A batch's block tables, resident on the device, with a NumPy mirror (module doc).

    `buffers` counts the uploads (and owns nothing here: the table array is this
    object's own). The arrays start empty and grow on the first `update`.
    """

    def __init__(self, buffers: DeviceBuffers) -> None:
        self._buffers = buffers
        self._mirror = np.full((0, 0), PAD, dtype=np.int32)
        self._device: Any = None

    @property
    def shape(self) -> tuple[int, int]:
        """``(max_rows, max_blocks)`` of the resident array."""
        return self._mirror.shape

    @property
    def mirror(self) -> np.ndarray:
        """The host copy of the resident array (a read-only view)."""
        view = self._mirror.view()
        view.flags.writeable = False
        return view

    def view(self, num_rows: int) -> Any:
        """The device array's first `num_rows` rows ``[num_rows, max_blocks]`` (int32,
        C-contiguous): the tables a kernel reads. Valid until the next `update`."""
        if not 0 <= num_rows <= self._mirror.shape[0]:
            raise ValueError(f"DeviceBlockTable.view: num_rows {num_rows} out of range "
                             f"[0, {self._mirror.shape[0]}]")
        if self._device is None:  # nothing uploaded yet: an empty batch's table
            return device.cuda_api().device_array((0, 1), dtype=np.int32)
        return self._device[:num_rows]

    def update(self, tables: np.ndarray, rows: Any = None, *, stream: Any = None) -> int:
        """Set row ``rows[i]`` to ``tables[i]`` (default rows ``0 .. len(tables) - 1``)
        and upload the rows that changed; returns how many rows were copied.

        `tables` is a 2-D integer array ``[n, width]`` of block ids in ``[0, 2**31)``,
        -1 padding; a row shorter than the resident width is padded with -1. All
        changed rows travel in one copy (the span between the first and the last one),
        enqueued on `stream`. Raises `ValueError`, changing nothing, for a table of
        another form, a row index out of range or given twice, or an id outside int32.
        """
        tables = np.asarray(tables)
        if tables.ndim != 2 or tables.dtype.kind not in "iu":
            raise ValueError(f"DeviceBlockTable.update: tables must be a 2-D integer array, "
                             f"got shape {tables.shape} dtype {tables.dtype}")
        n, width = tables.shape
        rows = np.arange(n) if rows is None else np.asarray(rows, dtype=np.int64)
        if rows.shape != (n,):
            raise ValueError(f"DeviceBlockTable.update: {n} tables for rows of shape "
                             f"{rows.shape}")
        if n and (rows.min() < 0 or np.unique(rows).size != n):
            raise ValueError(f"DeviceBlockTable.update: rows must be distinct and >= 0, got "
                             f"{rows.tolist()}")
        if tables.size and (tables.min() < PAD or tables.max() > np.iinfo(np.int32).max):
            raise ValueError("DeviceBlockTable.update: block ids must lie in [-1, 2**31)")
        if n == 0:
            return 0
        grown = self._reserve(int(rows.max()) + 1, width)
        new = np.full((n, self._mirror.shape[1]), PAD, dtype=np.int32)
        new[:, :width] = tables
        changed = rows[np.any(self._mirror[rows] != new, axis=1)]
        self._mirror[rows] = new
        if grown:  # a new device array: all of it is copied
            lo, hi = 0, self._mirror.shape[0]
        elif changed.size == 0:
            return 0
        else:
            lo, hi = int(changed.min()), int(changed.max()) + 1
        self._buffers.copy_in(UPLOAD_NAME, self._device[lo:hi], self._mirror[lo:hi], stream)
        return hi - lo

    def _reserve(self, num_rows: int, width: int) -> bool:
        """Grow the arrays (doubling) to hold `num_rows` rows of `width` ids; True if
        they were reallocated (the device array's contents are then undefined)."""
        have_rows, have_cols = self._mirror.shape
        if num_rows <= have_rows and width <= have_cols and self._device is not None:
            return False
        rows = max(num_rows, 2 * have_rows, 1)
        cols = max(width, 2 * have_cols if width > have_cols else have_cols, 1)
        mirror = np.full((rows, cols), PAD, dtype=np.int32)
        mirror[:have_rows, :have_cols] = self._mirror
        self._mirror = mirror
        self._device = device.cuda_api().device_array((rows, cols), dtype=np.int32)
        return True

    def __repr__(self) -> str:
        return f"DeviceBlockTable(shape={self.shape})"
