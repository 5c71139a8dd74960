"""The decode steps' block tables as one int32 array, kept in step with the KV manager's lists.

A step's decode attention needs ``[B, nblk]`` block ids. Building that from the Python lists
costs a list copy and ``torch.tensor`` over every id of every context, each step: at 1,000
tokens of context with 16-token blocks, 63 ids a sequence, and the runner's preparation took
9.1 us a sequence (3.1 with this; benchmarks/host_step.py's model, B=256). Here each sequence owns a row of a numpy array that is written
only when its table grows — a table is made whole (allocate, match, fork) and then only
extended until its sequence is freed — so a step writes the few new ids and gathers its rows
with one fancy index.
"""

from __future__ import annotations

import numpy as np

from kairos.kv.manager import NULL_BLOCK


class BlockTableRows:
    """Rows of block ids by sequence id; a row is reused once its sequence has left the batches."""

    def __init__(self, rows: int = 64, width: int = 64):
        self.buf = np.full((rows, width), NULL_BLOCK, dtype=np.int32)
        self.row_of: dict[int, int] = {}  # seq id -> row
        self.synced: list[tuple[list[int] | None, int]] = [(None, 0)] * rows  # per row: (table, ids copied)
        self.free = list(range(rows - 1, -1, -1))

    def gather(self, seq_ids: list[int], tables: list[list[int]], width: int) -> np.ndarray:
        """``[len(seq_ids), width]`` int32: row ``i`` is ``tables[i][:width]``, padded with the null block."""
        self._widen(width)
        if len(self.free) < len(seq_ids):
            self._recycle(set(seq_ids))
        rows = [self._sync(sid, table) for sid, table in zip(seq_ids, tables)]
        return self.buf[rows, :width]

    def _sync(self, seq_id: int, table: list[int]) -> int:
        row = self.row_of.get(seq_id)
        if row is None:
            row = self.row_of[seq_id] = self.free.pop()
        known, n = self.synced[row]
        if known is not table or n > len(table):  # a new sequence, or its table was made anew (preempted)
            self.buf[row].fill(NULL_BLOCK)
            n = 0
        if n < len(table):
            self._widen(len(table))  # (a table longer than the step needs: kept whole)
            self.buf[row, n : len(table)] = table[n:]
            self.synced[row] = (table, len(table))
        return row

    def _widen(self, width: int) -> None:
        if width > self.buf.shape[1]:
            grown = np.full((self.buf.shape[0], max(width, 2 * self.buf.shape[1])), NULL_BLOCK, dtype=np.int32)
            grown[:, : self.buf.shape[1]] = self.buf
            self.buf = grown

    def _recycle(self, keep: set[int]) -> None:
        """Free the rows of sequences outside this step (finished, preempted or prefilling: a
        row is rebuilt from its list when the sequence comes back); grow when that is not enough."""
        for sid in [s for s in self.row_of if s not in keep]:
            row = self.row_of.pop(sid)
            self.synced[row] = (None, 0)
            self.free.append(row)
        if len(self.free) < len(keep):
            old = self.buf.shape[0]
            extra = max(old, len(keep))
            self.buf = np.concatenate([self.buf, np.full((extra, self.buf.shape[1]), NULL_BLOCK, dtype=np.int32)])
            self.synced += [(None, 0)] * extra
            self.free += range(old + extra - 1, old - 1, -1)
