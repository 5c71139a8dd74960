"""Radix prefix cache: exact matches, block ids and eviction order; identical greedy output on and off."""

from __future__ import annotations

import pytest

from kairos.kv.manager import PrefixCachingKVManager
from kairos.kv.radix import RadixCache
from kairos.wire.sampling_params import SamplingParams

from conftest import hf_greedy
from engine_helpers import GREEDY, assert_pool_whole, make_engine, prompts_of, run

A = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]  # block size 4: [1-4] [5-8] + 2 loose tokens


def test_match_and_insert_exact_blocks():
    t = RadixCache(block_size=4)
    assert t.match_prefix(A).blocks == []
    taken, _ = t.insert(A, [11, 12, 13])
    assert taken == [11, 12]  # the partial third block is not cached
    assert t.match_prefix(A).blocks == [11, 12]
    assert t.match_prefix([1, 2, 3, 4, 5, 6, 7, 0]).blocks == [11]
    assert t.match_prefix([1, 2, 3]).blocks == []
    # a branch after the first block; a duplicate prefix keeps the tree's block
    taken, _ = t.insert([1, 2, 3, 4, 9, 9, 9, 9, 8, 8, 8, 8], [21, 22, 23])
    assert taken == [22, 23]
    assert t.match_prefix([1, 2, 3, 4, 9, 9, 9, 9, 8, 8, 8, 8, 7]).blocks == [11, 22, 23]
    assert t.num_cached_blocks == 4


def test_eviction_order_is_lru_leaves_and_skips_locked():
    t = RadixCache(block_size=2)
    t.insert([1, 1, 2, 2], [1, 2])  # chain 1 -> 2
    t.insert([3, 3], [3])
    t.insert([4, 4, 5, 5], [4, 5])  # chain 4 -> 5
    t.match_prefix([1, 1, 2, 2])  # touch chain 1-2: now most recent
    locked = t.match_prefix([4, 4, 5, 5]).node
    t.lock(locked)  # chain 4-5 locked (and most recent)
    assert t.evict(1) == [3]
    assert t.evict(10) == [2, 1]  # leaf first, then its parent becomes a leaf
    assert t.evict(10) == []  # only locked nodes remain
    t.unlock(locked)
    assert t.evict(10) == [5, 4]
    assert t.num_cached_blocks == 0


def reference_evict(t: RadixCache, n: int) -> list[int]:
    """The eviction order by definition, from a walk of the whole tree (what the tree did before
    it kept its leaves in a heap): least recently used unlocked leaf, repeatedly."""
    alive = {id(x): x for x in t.nodes()}
    out = []
    while len(out) < n:
        leaves = [x for x in alive.values() if x.lock_ref == 0 and not any(id(c) in alive for c in x.children.values())]
        if not leaves:
            break
        leaf = min(leaves, key=lambda x: x.last_access)
        del alive[id(leaf)]
        out.append(leaf.block)
    return out


def test_random_operations_evict_as_the_definition_and_count_unlocked_nodes():
    import random

    rng = random.Random(0)
    t = RadixCache(block_size=2)
    next_block = iter(range(1, 10_000))
    locks = []
    for step in range(600):
        op = rng.random()
        tokens = [rng.randrange(3) for _ in range(2 * rng.randrange(1, 5))]  # few symbols: shared prefixes
        if op < 0.35:
            t.insert(tokens, [next(next_block) for _ in range(len(tokens) // 2)])
        elif op < 0.55:
            t.match_prefix(tokens)
        elif op < 0.7:
            node = t.match_prefix(tokens, touch=False).node
            if node is not t.root:
                t.lock(node)
                locks.append(node)
        elif op < 0.85 and locks:
            t.unlock(locks.pop(rng.randrange(len(locks))))
        else:
            n = rng.randrange(1, 4)
            expected = reference_evict(t, n)
            assert t.evict(n) == expected, step
        assert t.num_unlocked == sum(1 for x in t.nodes() if x.lock_ref == 0)
        assert t.num_cached_blocks == sum(1 for _ in t.nodes())
        leaves = list(t.unlocked_leaves())  # (from the heap: each unlocked leaf once, no other node)
        assert sorted(x.block for x in leaves) == sorted(x.block for x in t.nodes() if not x.children and x.lock_ref == 0)
    for node in locks:
        t.unlock(node)
    expected = reference_evict(t, 10_000)
    assert t.evict(10_000) == expected and t.num_cached_blocks == 0 == t.num_unlocked


def test_manager_hits_refcounts_and_eviction_under_pressure():
    kv = PrefixCachingKVManager(num_blocks=6, block_size=4)  # 5 usable
    assert kv.match(1, A) == 0
    kv.allocate(1, 10)
    assert kv.block_tables[1] == [1, 2, 3]
    kv.cache(1, A, 10)
    kv.free(1)  # blocks 1, 2 stay cached; 3 is free again
    assert kv.pool.num_free == 3 and kv.pool.ref_counts[1:3] == [1, 1]
    assert kv.match(2, A) == 8  # hit: two blocks
    assert kv.block_tables[2] == [1, 2] and kv.pool.ref_counts[1:3] == [2, 2]
    assert kv.match(3, A[:8]) == 4  # keep one token to compute: only the first block
    kv.free(3)
    # seq 4 needs all 3 free blocks + 1: nothing is evictable while seq 2 holds the prefix
    assert not kv.can_allocate(4, 16)
    kv.free(2)
    assert kv.can_allocate(4, 20)
    # LRU leaf 2 is evicted before its parent 1; freed blocks go to the front of the free list
    assert kv.allocate(4, 20) == [2, 1, 3, 4, 5]
    assert kv.evicted_blocks == 2
    # the hit statistics count sequences that started (the scheduler's word), not lookups
    assert kv.stats()["prefix_cache_hit_tokens"] == 0
    kv.count_hit(10, 8)
    assert kv.stats()["prefix_cache_queried_tokens"] == 10 and kv.stats()["prefix_cache_hit_tokens"] == 8


@pytest.fixture(scope="module")
def shared_prompts():
    system = prompts_of([40])[0]
    return [system + p for p in prompts_of([3, 9, 17, 1])]


@pytest.mark.parametrize("block_size", [4, 16])
def test_greedy_identical_with_cache_on_and_off(tiny_model, shared_prompts, block_size):
    model, path = tiny_model
    params = SamplingParams(max_tokens=12, **GREEDY)
    refs = [hf_greedy(model, p, 12) for p in shared_prompts]
    for prefix_cache in (True, False):
        engine = make_engine(path, block_size=block_size, prefix_cache=prefix_cache, max_num_batched_tokens=24)
        # the first request fills the cache, the rest arrive later and hit it
        arrivals = {0: [("0", shared_prompts[0], params)]}
        arrivals[6] = [(str(i), p, params) for i, p in enumerate(shared_prompts[1:], 1)]
        done = run(engine, arrivals)
        assert [done[(str(i), 0)][0] for i in range(len(refs))] == refs
        stats = engine.stats()
        if prefix_cache:
            assert stats["prefix_cache_hit_tokens"] >= 3 * (40 // block_size) * block_size
        assert_pool_whole(engine)


def test_multi_turn_hits_mid_block(tiny_llama):
    model, path = tiny_llama
    engine = make_engine(path, block_size=8)
    params = SamplingParams(max_tokens=7, **GREEDY)
    turn1 = prompts_of([13])[0]
    out1 = run(engine, {0: [("t1", turn1, params)]})[("t1", 0)][0]
    turn2 = turn1 + out1 + [5, 6, 7]  # 23 tokens: history ends mid-block
    out2 = run(engine, {0: [("t2", turn2, params)]})[("t2", 0)][0]
    assert out2 == hf_greedy(model, turn2, 7)
    # turn 1 computed 19 tokens (13 + 6 of its 7 outputs): two full blocks of 8 are reused
    assert engine.stats()["prefix_cache_hit_tokens"] == 16
    assert_pool_whole(engine)


def test_touches_without_eviction_keep_the_candidate_heap_bounded():
    t = RadixCache(block_size=2)
    for _ in range(5_000):  # one prompt over and over, a pool that never runs dry: nothing evicts
        node = t.insert([1, 1, 2, 2, 3, 3], [1, 2, 3])[1]
        t.lock(node)
        t.unlock(node)
        t.match_prefix([1, 1, 2, 2, 3, 3])
    assert t.num_cached_blocks == 3 and len(t._leaves) <= 4 * 3 + 64 + 1
    assert t.evict(10) == [3, 2, 1]
