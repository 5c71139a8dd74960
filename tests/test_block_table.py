"""BlockTableRows: the decode steps' block tables as array rows, kept in step by appending."""

from __future__ import annotations

from kairos.kv.block_table import BlockTableRows


def test_rows_follow_growing_tables_and_pad_with_the_null_block():
    rows = BlockTableRows(rows=2, width=2)
    a, b = [5, 6], [9]
    assert rows.gather([1, 2], [a, b], 2).tolist() == [[5, 6], [9, 0]]
    a.append(7)  # a sequence's table grows: only the new id is written
    b.extend([3, 4])
    assert rows.gather([2, 1], [b, a], 3).tolist() == [[9, 3, 4], [5, 6, 7]]  # (the width grew too)
    assert rows.gather([1], [a], 2).tolist() == [[5, 6]]  # a narrower step: the first ids only


def test_a_table_made_anew_replaces_the_row():
    rows = BlockTableRows(rows=2, width=4)
    assert rows.gather([1], [[5, 6, 7]], 3).tolist() == [[5, 6, 7]]
    # preempted and readmitted: the same sequence id, a new (shorter) list
    assert rows.gather([1], [[8]], 3).tolist() == [[8, 0, 0]]


def test_rows_of_sequences_gone_from_the_batch_are_reused_and_the_array_grows():
    rows = BlockTableRows(rows=2, width=2)
    rows.gather([1, 2], [[1], [2]], 1)
    # 1 and 2 left (finished): their rows go to 3 and 4, which must not see their ids
    assert rows.gather([3, 4], [[], [7]], 2).tolist() == [[0, 0], [7, 0]]
    assert rows.gather([3, 4, 5, 6, 7], [[1], [7, 8], [2], [3], [4, 5]], 2).tolist() == \
        [[1, 0], [7, 8], [2, 0], [3, 0], [4, 5]]
    assert rows.buf.shape[0] >= 5 and set(rows.row_of) == {3, 4, 5, 6, 7}
