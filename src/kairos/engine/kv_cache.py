"""Paged KV cache bookkeeping: a block pool with ref counts and per-sequence block tables.

Only ids live here; the tensors are the runner's. Block 0 is the null block: never handed
out, zeroed, and used as padding for gathers so padded reads stay finite.
"""

from __future__ import annotations

from collections import deque

NULL_BLOCK = 0


class BlockPool:
    """Free list plus reference counts. Freed blocks go to the front so hot memory is reused first."""

    def __init__(self, num_blocks: int):
        if num_blocks < 2:
            raise ValueError(f"the KV cache needs at least 2 blocks (1 is the null block), got {num_blocks}")
        self.num_blocks = num_blocks
        self.ref_counts = [0] * num_blocks
        self.free: deque[int] = deque(range(1, num_blocks))

    @property
    def num_free(self) -> int:
        return len(self.free)

    @property
    def num_usable(self) -> int:
        return self.num_blocks - 1

    def allocate(self, n: int) -> list[int]:
        if n > len(self.free):
            raise RuntimeError(f"out of KV blocks: asked for {n}, {len(self.free)} free")
        ids = [self.free.popleft() for _ in range(n)]
        for b in ids:
            self.ref_counts[b] = 1
        return ids

    def incref(self, ids: list[int]) -> None:
        for b in ids:
            assert self.ref_counts[b] > 0, f"incref of free block {b}"
            self.ref_counts[b] += 1

    def release(self, ids: list[int]) -> None:
        for b in reversed(ids):  # reversed: the sequence's first block ends up at the front
            assert self.ref_counts[b] > 0, f"double free of block {b}"
            self.ref_counts[b] -= 1
            if self.ref_counts[b] == 0:
                self.free.appendleft(b)


class KVCacheManager:
    """Block tables per sequence id, grown on demand from a :class:`BlockPool`."""

    def __init__(self, num_blocks: int, block_size: int):
        self.block_size = block_size
        self.pool = BlockPool(num_blocks)
        self.block_tables: dict[int, list[int]] = {}

    def blocks_needed(self, seq_id: int, num_tokens: int) -> int:
        """Extra blocks ``seq_id`` needs to hold ``num_tokens`` tokens in all."""
        have = len(self.block_tables.get(seq_id, ()))
        return max(0, -(-num_tokens // self.block_size) - have)

    def can_allocate(self, seq_id: int, num_tokens: int, extra_blocks: int = 0) -> bool:
        return self.blocks_needed(seq_id, num_tokens) + extra_blocks <= self.pool.num_free

    def allocate(self, seq_id: int, num_tokens: int) -> list[int]:
        """Grow the table of ``seq_id`` to hold ``num_tokens``; returns the whole table."""
        table = self.block_tables.setdefault(seq_id, [])
        table.extend(self.pool.allocate(self.blocks_needed(seq_id, num_tokens)))
        return table

    def free(self, seq_id: int) -> None:
        self.pool.release(self.block_tables.pop(seq_id, []))

    def fork(self, parent_id: int, child_id: int, num_tokens: int) -> tuple[int, int] | None:
        """Share the parent's full blocks with a child; copy a partly filled last block.

        Returns ``(src, dst)`` when the last block must be copied by the runner, else None.
        """
        table = self.block_tables[parent_id]
        full = num_tokens // self.block_size
        shared = table[:full]
        self.pool.incref(shared)
        child = list(shared)
        copy = None
        if num_tokens % self.block_size:
            (dst,) = self.pool.allocate(1)
            child.append(dst)
            copy = (table[full], dst)
        self.block_tables[child_id] = child
        return copy
