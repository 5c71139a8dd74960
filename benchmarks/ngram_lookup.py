"""The host cost of an n-gram draft lookup per decode step, by context length: the index kept up
to date (``NgramIndex``, what ``--speculative-tokens`` uses) vs a numpy scan of the whole history
each step (what it did before), side by side in one run; and the index's memory per sequence.

    python benchmarks/ngram_lookup.py [--contexts 256,1024,4096,16384] [--steps 200]

Tokens are random over the default model's vocabulary (49,152), so lookups mostly miss: a miss
tries every n, the scan's worst case. A step appends one token, as a decode step does.
"""

from __future__ import annotations

import argparse
import random
import time
import tracemalloc

import numpy as np

from kairos.sched.speculative import NgramIndex


def scan(tokens: list[int], n_min: int, n_max: int, k: int) -> list[int]:
    """The lookup before the index: every n-gram window of the history compared with the suffix."""
    arr = np.asarray(tokens, dtype=np.int64)
    total = len(arr)
    for n in range(min(n_max, total - 1), n_min - 1, -1):
        windows = np.lib.stride_tricks.sliding_window_view(arr[: total - 1], n)
        hits = np.flatnonzero((windows == arr[total - n:]).all(axis=1))
        if len(hits):
            start = int(hits[-1]) + n
            return arr[start : start + k].tolist()
    return []


def per_step(lookup, tokens: list[int], steps: int, rng: random.Random) -> float:
    t = time.perf_counter()
    for _ in range(steps):
        tokens.append(rng.randrange(49152))
        lookup(tokens)
    return (time.perf_counter() - t) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--contexts", default="256,1024,4096,16384")
    ap.add_argument("--steps", type=int, default=200)
    args = ap.parse_args()
    print(f"{'context':>7} {'scan µs/step':>12} {'index µs/step':>13} {'ratio':>6} {'index build ms':>14} {'index MiB':>9}")
    for ctx in map(int, args.contexts.split(",")):
        rng = random.Random(ctx)
        history = [rng.randrange(49152) for _ in range(ctx)]
        build = float("inf")
        for _ in range(3):  # (the first lookup indexes the whole prompt; best of 3: a GC pass may land in one)
            index = NgramIndex(2, 4, catch_up=ctx)  # (all at once here; the engine spreads it, 4096 a step)
            t = time.perf_counter()
            index.draft(history, 4)
            build = min(build, time.perf_counter() - t)
        tracemalloc.start()  # (on another index: tracing slows every allocation)
        traced = NgramIndex(2, 4, catch_up=ctx)
        traced.draft(history, 4)
        mib = tracemalloc.get_traced_memory()[0] / 2**20
        tracemalloc.stop()
        del traced
        scanned = per_step(lambda toks: scan(toks, 2, 4, 4), list(history), args.steps, random.Random(1))
        indexed = per_step(lambda toks, ix=index: ix.draft(toks, 4), list(history), args.steps, random.Random(1))
        print(f"{ctx:>7} {scanned * 1e6:>12.1f} {indexed * 1e6:>13.1f} {scanned / indexed:>5.0f}x "
              f"{build * 1e3:>14.1f} {mib:>9.2f}")


if __name__ == "__main__":
    main()
