"""Paged KV cache bookkeeping: a block pool with ref counts and per-sequence block tables.

Only ids live here; the tensors are the runner's. Block 0 is the null block: never handed
out, zeroed, and used as padding for gathers so padded reads stay finite.
"""

from __future__ import annotations

from collections import deque

from kairos.kv.radix import Node, RadixCache

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
        need = -(-num_tokens // self.block_size) - len(table)
        if need > 0:  # (a decode step needs a block every block_size tokens)
            table.extend(self.pool.allocate(need))
        return table

    def free(self, seq_id: int) -> None:
        self.pool.release(self.block_tables.pop(seq_id, []))

    def take(self, n: int) -> list[int]:
        """``n`` blocks held outside any table (for forks: :meth:`fork` takes one, :meth:`give_back`
        returns the rest). Held, not merely counted: what a count leans on (cached blocks no one
        uses) can be locked by a cache insert before the fork comes."""
        return self.pool.allocate(n)

    def give_back(self, blocks: list[int]) -> None:
        self.pool.release(blocks)

    # Prefix-cache hooks; without a cache nothing is shared between sequences.
    def peek(self, token_ids: list[int]) -> int:
        """Tokens of ``token_ids`` whose KV is cached (nothing is locked)."""
        return 0

    def match(self, seq_id: int, token_ids: list[int]) -> int:
        """Start the table of a new sequence with its cached prefix; returns the cached token count."""
        return 0

    def cache(self, seq_id: int, token_ids: list[int], num_computed: int) -> None:
        """Offer the sequence's computed full blocks to the cache."""

    def count_hit(self, num_tokens: int, num_hit: int) -> None:
        """A sequence started with ``num_hit`` of its ``num_tokens`` tokens matched (the hit
        statistics count started sequences, not lookups an admission then undid)."""

    def stats(self) -> dict[str, float]:
        return {}

    def cache_events(self) -> tuple[list[int], bool]:
        """What the prefix cache gained (+hash) and lost (-hash) since the last call, and whether
        that is instead the whole cache (a snapshot). Without a prefix cache: nothing, ever."""
        return [], False

    def fork(self, parent_id: int, child_id: int, num_tokens: int, held: list[int] | None = None
             ) -> tuple[int, int] | None:
        """Share the parent's full blocks with a child; copy a partly filled last block (into one
        of the ``held`` blocks from :meth:`take` when given).

        Returns ``(src, dst)`` when the last block must be copied by the runner, else None.
        """
        table = self.block_tables[parent_id]
        full = num_tokens // self.block_size
        shared = table[:full]
        self.pool.incref(shared)
        child = list(shared)
        copy = None
        if num_tokens % self.block_size:
            (dst,) = [held.pop()] if held else self.pool.allocate(1)
            child.append(dst)
            copy = (table[full], dst)
        self.block_tables[child_id] = child
        return copy


class PrefixCachingKVManager(KVCacheManager):
    """A :class:`KVCacheManager` whose full blocks outlive their sequences in a :class:`RadixCache`.

    The tree holds one pool reference per cached block; a sequence holds its own reference
    to every block in its table and a lock on its deepest cached node, so blocks in use are
    never evicted. Unlocked blocks are evicted (LRU leaves first) only when the pool runs dry.
    """

    JOURNAL_LIMIT = 1 << 16

    def __init__(self, num_blocks: int, block_size: int):
        super().__init__(num_blocks, block_size)
        self.tree = RadixCache(block_size)
        self.locked: dict[int, Node] = {}  # seq id -> its deepest locked node
        self.queried_tokens = 0
        self.hit_tokens = 0
        self.evicted_blocks = 0

    def peek(self, token_ids: list[int]) -> int:
        return self.tree.match_prefix(token_ids[: len(token_ids) - 1], touch=False).num_blocks * self.block_size

    def match(self, seq_id: int, token_ids: list[int]) -> int:
        # Leave at least one token to compute: its logits give the next token.
        m = self.tree.match_prefix(token_ids[: len(token_ids) - 1])
        self.pool.incref(m.blocks)
        self.block_tables[seq_id] = list(m.blocks)
        self._relock(seq_id, m.node)
        return m.num_blocks * self.block_size

    def count_hit(self, num_tokens: int, num_hit: int) -> None:
        self.queried_tokens += num_tokens
        self.hit_tokens += num_hit

    def cache(self, seq_id: int, token_ids: list[int], num_computed: int) -> None:
        table = self.block_tables[seq_id]
        taken, node = self.tree.insert(token_ids[:num_computed], table)
        self.pool.incref(taken)
        self._relock(seq_id, node)

    def can_allocate(self, seq_id: int, num_tokens: int, extra_blocks: int = 0) -> bool:
        short = self.blocks_needed(seq_id, num_tokens) + extra_blocks - self.pool.num_free
        # (every reclaimable block is unlocked: the count bounds it without a walk)
        return short <= 0 or (short <= self.tree.num_unlocked and self._reclaimable(short))

    def allocate(self, seq_id: int, num_tokens: int) -> list[int]:
        need = self.blocks_needed(seq_id, num_tokens)
        if need > self.pool.num_free:
            self._ensure_free(need)
        return super().allocate(seq_id, num_tokens)

    def take(self, n: int) -> list[int]:
        self._ensure_free(n)
        return super().take(n)

    def cache_events(self) -> tuple[list[int], bool]:
        """What the prefix cache gained (+hash) and lost (-hash) since the last call, and whether
        that is instead the whole cache (a snapshot: the first call, or a journal grown past
        ``JOURNAL_LIMIT`` undrained). Keeps a journal from the first call on."""
        journal = self.tree.journal
        if journal is not None and len(journal) <= self.JOURNAL_LIMIT:
            self.tree.journal = []
            return journal, False
        self.tree.journal = []
        return [n.hash for n in self.tree.nodes()], True

    def fork(self, parent_id: int, child_id: int, num_tokens: int, held: list[int] | None = None
             ) -> tuple[int, int] | None:
        if not held:
            self._ensure_free(1)
        copy = super().fork(parent_id, child_id, num_tokens, held)
        if parent_id in self.locked:
            self._relock(child_id, self.locked[parent_id])
        return copy

    def free(self, seq_id: int) -> None:
        self._relock(seq_id, None)
        super().free(seq_id)

    def stats(self) -> dict[str, float]:
        return {
            "prefix_cache_queried_tokens": self.queried_tokens,
            "prefix_cache_hit_tokens": self.hit_tokens,
            "prefix_cache_hit_rate": self.hit_tokens / self.queried_tokens if self.queried_tokens else 0.0,
            "prefix_cache_evicted_blocks": self.evicted_blocks,
            "prefix_cache_blocks": self.tree.num_cached_blocks,
        }

    def _relock(self, seq_id: int, node: Node | None) -> None:
        old = self.locked.pop(seq_id, None)
        if node is not None:
            self.tree.lock(node)
            self.locked[seq_id] = node
        if old is not None:
            self.tree.unlock(old)

    def _reclaimable(self, k: int) -> bool:
        """Whether at least ``k`` cached blocks are unlocked and referenced by the tree alone
        (evicting them frees memory). The unlocked leaves come first, from the eviction heap:
        a walk of the tree from its root passes every running sequence's locked blocks before it
        reaches them (34 ms a block at 160,000 blocks, benchmarks/prefix_evict.py). Only when
        they are too few (unlocked blocks behind them count too) does it walk the inner nodes
        (the leaves are counted), stopping at the ``k``-th."""
        found = 0
        for n in self.tree.unlocked_leaves():
            if self.pool.ref_counts[n.block] == 1:
                found += 1
                if found >= k:
                    return True
        for n in self.tree.nodes():
            if n.children and n.lock_ref == 0 and self.pool.ref_counts[n.block] == 1:
                found += 1
                if found >= k:
                    return True
        return False

    def _ensure_free(self, n: int) -> None:
        while self.pool.num_free < n:
            evicted = self.tree.evict(n - self.pool.num_free)
            if not evicted:
                return  # the pool's own error names the shortfall
            self.evicted_blocks += len(evicted)
            self.pool.release(evicted)
