"""Cost of allocating a KV block once the prefix tree holds the whole pool (a server's steady
state): ``can_allocate`` + ``allocate`` of one block for a new sequence, which must evict.

    python benchmarks/prefix_evict.py [--nodes 16000,160000]

Run it with two checkouts' ``src`` on PYTHONPATH to compare them (it uses only the KV manager's
public methods). Prints milliseconds per allocated block, median of 50: with the pool held by
the tree alone, and with all but 1,000 blocks held by running sequences.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from kairos.kv.manager import PrefixCachingKVManager


def per_block_ms(nodes: int, running: bool, unlocked: int = 1000, bs: int = 16, blocks_per_seq: int = 64) -> float:
    """The pool filled with cached blocks of finished sequences, then (``running``) all but
    ``unlocked`` of it held by running sequences instead (locked in the tree: a busy server).
    Then 50 new sequences of one block each, which must evict; ms per block, the median."""
    kv = PrefixCachingKVManager(nodes + 1, bs)
    rng = random.Random(0)
    sid = 0
    while kv.pool.num_free:
        finished = not running or kv.pool.num_usable - kv.pool.num_free < unlocked
        n = min(blocks_per_seq, kv.pool.num_free, unlocked if finished and running else blocks_per_seq)
        toks = [rng.randrange(50_000) for _ in range(bs * n)]
        kv.allocate(sid, len(toks))
        kv.cache(sid, toks, len(toks))
        if finished:
            kv.free(sid)  # (its blocks stay in the tree, unlocked)
        sid += 1
    times = []
    for _ in range(50):
        sid += 1
        t0 = time.perf_counter()
        assert kv.pool.num_free == 0 and kv.can_allocate(sid, bs)
        kv.allocate(sid, bs)
        times.append(time.perf_counter() - t0)
        kv.cache(sid, [rng.randrange(50_000) for _ in range(bs)], bs)  # the new block joins the tree
        if not running:
            kv.free(sid)  # (else it runs on, holding its block)
    return statistics.median(times) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", default="16000,160000")
    args = ap.parse_args()
    for n in map(int, args.nodes.split(",")):
        print(f"{n:>7} blocks in the tree: {per_block_ms(n, False):.3f} ms per allocated block; "
              f"most of them held by running sequences: {per_block_ms(n, True):.3f} ms")


if __name__ == "__main__":
    main()
