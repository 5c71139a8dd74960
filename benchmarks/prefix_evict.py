"""Cost of allocating a KV block once the prefix tree holds the whole pool (a server's steady
state): ``can_allocate`` + ``allocate`` of one block for a new sequence, which must evict.

    python benchmarks/prefix_evict.py [--nodes 16000,160000]

Run it with two checkouts' ``src`` on PYTHONPATH to compare them (it uses only the KV manager's
public methods). Prints milliseconds per allocated block, median of 50.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from kairos.engine.kv_cache import PrefixCachingKVManager


def per_block_ms(nodes: int, bs: int = 16, blocks_per_seq: int = 64) -> float:
    kv = PrefixCachingKVManager(nodes + 1, bs)
    rng = random.Random(0)
    sid = 0
    while kv.pool.num_free:  # distinct prompts, computed, cached, finished, until no block is free
        toks = [rng.randrange(50_000) for _ in range(bs * min(blocks_per_seq, kv.pool.num_free))]
        kv.allocate(sid, len(toks))
        kv.cache(sid, toks, len(toks))
        kv.free(sid)
        sid += 1
    times = []
    for _ in range(50):
        sid += 1
        t0 = time.perf_counter()
        assert kv.pool.num_free == 0 and kv.can_allocate(sid, bs)
        kv.allocate(sid, bs)
        times.append(time.perf_counter() - t0)
        toks = [rng.randrange(50_000) for _ in range(bs)]
        kv.cache(sid, toks, bs)  # the new block joins the tree: the pool stays full
        kv.free(sid)
    return statistics.median(times) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", default="16000,160000")
    args = ap.parse_args()
    for n in map(int, args.nodes.split(",")):
        print(f"{n:>7} blocks in the tree: {per_block_ms(n):.3f} ms per allocated block")


if __name__ == "__main__":
    main()
