"""Radix tree over token ids at block granularity: prefixes -> KV block ids.

A pure structure: it maps token prefixes to block ids and tracks which nodes are locked;
it never touches requests, and it frees nothing itself — ``evict`` returns the block ids
whose reference the tree drops, and the caller releases them to the pool.

Only full blocks are cached (a block is a node; its key is its ``block_size`` token ids):
a partly filled block is still being written by its sequence, so sharing it would need
a copy; the cost of not caching it is recomputing fewer than ``block_size`` tokens.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field

from kairos.wire.blockhash import ROOT, block_hash


@dataclass(eq=False)
class Node:
    key: tuple[int, ...]  # the block's token ids (empty for the root)
    block: int
    parent: Node | None
    children: dict[tuple[int, ...], Node] = field(default_factory=dict)
    lock_ref: int = 0  # sequences using this node or a descendant
    last_access: int = 0
    hash: int = ROOT  # of the prefix up to and with this block (``kairos.wire.blockhash``)


@dataclass(frozen=True)
class PrefixMatch:
    blocks: list[int]  # KV blocks of the matched prefix, in order
    node: Node  # deepest matched node (the root when nothing matched): pass to lock/unlock

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)


class RadixCache:
    def __init__(self, block_size: int):
        self.block_size = block_size
        self.root = Node((), -1, None)
        self.num_cached_blocks = 0
        self.num_unlocked = 0  # nodes with lock_ref == 0: an upper bound on what eviction can free
        self._clock = itertools.count(1)  # logical time for LRU: deterministic, no wall clock
        # Candidates for eviction, (last_access, push order, node), least recent first. An entry
        # is pushed whenever a node may have become an unlocked leaf or was touched as one, and is
        # checked when popped (stale ones are skipped): eviction costs O(log n) a block instead of
        # a walk of the whole tree, which in a busy server fills the pool (and is walked per block).
        self._leaves: list[tuple[int, int, Node]] = []
        self._pushes = itertools.count()
        # what its owner reports of the cache: the hash of each node added (+h) and evicted (-h),
        # in order, for whoever drains it (None: not kept)
        self.journal: list[int] | None = None

    def _keys(self, token_ids: list[int]):
        bs = self.block_size
        for i in range(len(token_ids) // bs):
            yield tuple(token_ids[i * bs : (i + 1) * bs])

    def match_prefix(self, token_ids: list[int], touch: bool = True) -> PrefixMatch:
        """Longest cached prefix of ``token_ids`` in whole blocks; ``touch`` marks it recently used
        (a look that only ranks requests passes False, so it cannot change eviction order)."""
        node, blocks = self.root, []
        now = next(self._clock) if touch else None
        for key in self._keys(token_ids):
            child = node.children.get(key)
            if child is None:
                break
            if touch:
                child.last_access = now
            blocks.append(child.block)
            node = child
        if touch and blocks:
            self._offer(node)
        return PrefixMatch(blocks, node)

    def insert(self, token_ids: list[int], blocks: list[int]) -> tuple[list[int], Node]:
        """Cache the full blocks of ``token_ids`` (``blocks[i]`` holds block i).

        Returns (block ids the tree took a new reference to, deepest node). Where a prefix
        was cached already, the tree keeps its own block and the caller's duplicate is not taken.
        """
        node, taken, now = self.root, [], next(self._clock)
        for key, block in zip(self._keys(token_ids), blocks):
            child = node.children.get(key)
            if child is None:
                child = Node(key, block, node, hash=block_hash(node.hash, key))
                node.children[key] = child
                if self.journal is not None:
                    self.journal.append(child.hash)
                self.num_cached_blocks += 1
                self.num_unlocked += 1
                taken.append(block)
            child.last_access = now
            node = child
        if node is not self.root:
            self._offer(node)
        return taken, node

    def lock(self, node: Node) -> None:
        while node is not self.root:
            if node.lock_ref == 0:
                self.num_unlocked -= 1
            node.lock_ref += 1
            node = node.parent

    def unlock(self, node: Node) -> None:
        while node is not self.root:
            assert node.lock_ref > 0, "unlock of an unlocked node"
            node.lock_ref -= 1
            if node.lock_ref == 0:
                self.num_unlocked += 1
                self._offer(node)
            node = node.parent

    def evict(self, n: int) -> list[int]:
        """Drop up to ``n`` unlocked blocks, least recently used leaves first; returns their ids."""
        evicted: list[int] = []
        while self._leaves and len(evicted) < n:
            access, _, leaf = heapq.heappop(self._leaves)
            if leaf.parent is None or leaf.children or leaf.lock_ref or leaf.last_access != access:
                continue  # evicted already, no longer a leaf, locked, or touched since (a newer entry exists)
            parent = leaf.parent
            del parent.children[leaf.key]
            leaf.parent = None  # detached: its remaining entries are stale
            self.num_cached_blocks -= 1
            self.num_unlocked -= 1
            evicted.append(leaf.block)
            if self.journal is not None:
                self.journal.append(-leaf.hash)
            if parent is not self.root:
                self._offer(parent)
        return evicted

    def unlocked_leaves(self):
        """Each unlocked leaf once, from the eviction candidates (no walk of the tree): the
        blocks :meth:`evict` would drop first."""
        seen: set[Node] = set()
        for access, _, node in self._leaves:
            if node.parent is None or node.children or node.lock_ref or node.last_access != access or node in seen:
                continue  # (stale, as in evict)
            seen.add(node)
            yield node

    def _offer(self, node: Node) -> None:
        if not node.children and node.lock_ref == 0:
            heapq.heappush(self._leaves, (node.last_access, next(self._pushes), node))
            if len(self._leaves) > 4 * self.num_cached_blocks + 64:  # mostly stale entries (touches): start over
                self._leaves = [(x.last_access, next(self._pushes), x) for x in self.nodes()
                                if not x.children and x.lock_ref == 0]
                heapq.heapify(self._leaves)

    def nodes(self):
        stack = list(self.root.children.values())
        while stack:
            node = stack.pop()
            yield node
            stack.extend(node.children.values())
