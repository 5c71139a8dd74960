"""Resident memory of compiled grammars: what the engine's grammar cache holds per character of a
JSON schema (its budget, ``structured._CACHED_CHARS``, counts characters).

    python benchmarks/grammar_memory.py [--props 100,1000] [--schemas 16]

For each size, compiles ``--schemas`` distinct JSON schemas of ``--props`` string properties
each for the default model's tokenizer, as the engine does, and prints the process's resident
memory above a baseline (the tokenizer and one small grammar already compiled).
"""

from __future__ import annotations

import argparse
import json


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--props", default="100,1000")
    ap.add_argument("--schemas", type=int, default=16)
    args = ap.parse_args()
    from kairos.grammar.structured import StructuredOutputs
    from kairos.loader import load_tokenizer
    from kairos.loader.default import resolve_model_path
    from kairos.wire.sampling_params import StructuredOutput

    tok = load_tokenizer(resolve_model_path("default"))
    print(f"{'props':>5} {'schemas':>7} {'chars':>9} {'MiB':>6} {'bytes/char':>10}")
    for n in map(int, args.props.split(",")):
        cache = StructuredOutputs(lambda: tok, 49152, [0], max_cached=args.schemas + 1, max_cached_chars=1 << 40)
        cache.matcher(StructuredOutput(json=json.dumps({"type": "object"})))
        base, chars = rss_mib(), 0
        for k in range(args.schemas):
            props = {f"field_{k}_{i}": {"type": "string", "maxLength": 20} for i in range(n)}
            spec = StructuredOutput(json=json.dumps({"type": "object", "properties": props}))
            cache.matcher(spec)
            chars += spec.chars()
        grown = rss_mib() - base
        print(f"{n:>5} {args.schemas:>7} {chars:>9} {grown:>6.0f} {grown * 2**20 / chars:>10.0f}", flush=True)


if __name__ == "__main__":
    main()
