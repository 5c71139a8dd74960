"""The batch-1 decode timing both sides of vs_peers.py use (plain Python: each peer's venv imports it).

A run is an iterator of cumulative output-token counts, yielded as tokens arrive: prefill is
the time to the first token, the decode rate counts the tokens after it over their time.
"""

import json
import statistics
import time
from collections.abc import Callable, Iterable


def report_decode(runs: Iterable[Callable[[], Iterable[int]]], load_s: float) -> None:
    """Time each run (started by calling it) and print one JSON line with the medians."""
    rates, prefills = [], []
    for start in runs:
        t0 = time.perf_counter()
        t_first, n = None, 0
        for n in start():
            if t_first is None and n:
                t_first = time.perf_counter()
        end = time.perf_counter()
        prefills.append(t_first - t0)
        rates.append((n - 1) / (end - t_first))
    print(json.dumps({"decode_tok_s": statistics.median(rates), "prefill_s": statistics.median(prefills),
                      "load_s": load_s}), flush=True)
