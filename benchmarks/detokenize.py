"""Detokenization per token with the default model's tokenizer: the window detokenizer (two
decodes of a sliding window per token) vs the byte-table one, and the byte table's build time.

    python benchmarks/detokenize.py

Best of 5 passes over 400 tokens of English text, microseconds per ``add`` of one token.
"""

from __future__ import annotations

import time

from kairos.detok.detokenizer import ByteLevelDetokenizer, IncrementalDetokenizer, byte_table
from kairos.loader import load_tokenizer
from kairos.loader.default import default_model_path


def main() -> None:
    tok = load_tokenizer(default_model_path())
    t0 = time.perf_counter()
    table = byte_table(tok)
    print(f"byte table: {(time.perf_counter() - t0) * 1e3:.1f} ms for {len(table.ids)} tokens")
    ids = tok("The quick brown fox jumps over the lazy dog. " * 40, add_special_tokens=False).input_ids[:400]
    for name, make in (("window", lambda: IncrementalDetokenizer(tok, [1, 2, 3])),
                       ("bytes", lambda: ByteLevelDetokenizer(table))):
        best = float("inf")
        for _ in range(5):
            d = make()
            t0 = time.perf_counter()
            for i in ids:
                d.add([i])
            best = min(best, (time.perf_counter() - t0) / len(ids) * 1e6)
        print(f"{name:>6}: {best:.2f} us per token")


if __name__ == "__main__":
    main()
