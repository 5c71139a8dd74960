"""Prefix cache on vs off, same run: requests sharing a long prefix (system prompt / few-shot).

    python benchmarks/prefix_cache.py [--num-requests 32 --prefix-len 1000 --suffix-len 32 --output-len 64]

All requests arrive at once (a burst); TTFT is measured from arrival to the step that
emits the first token. Greedy outputs of the two runs are compared token for token.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from kairos.config import EngineConfig
from kairos.engine.core import EngineCore
from kairos.wire.outputs import EngineRequest
from kairos.wire.sampling_params import SamplingParams


def run(cfg: EngineConfig, prompts: list[list[int]], output_len: int):
    engine = EngineCore(cfg)
    engine.add_request(EngineRequest("warmup", prompts[0][-8:], SamplingParams(max_tokens=2, temperature=0.0)))
    while engine.has_unfinished():
        engine.step()
    params = SamplingParams(max_tokens=output_len, temperature=0.0, ignore_eos=True)
    t0 = time.perf_counter()
    for i, p in enumerate(prompts):
        engine.add_request(EngineRequest(str(i), p, params, arrival_time=t0))
    ttft: dict[str, float] = {}
    tokens: dict[str, list[int]] = {str(i): [] for i in range(len(prompts))}
    while engine.has_unfinished():
        for o in engine.step():
            ttft.setdefault(o.request_id, time.perf_counter() - t0)
            tokens[o.request_id].extend(o.new_token_ids)
    total = time.perf_counter() - t0
    return list(ttft.values()), total, tokens, engine.stats()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="default")
    ap.add_argument("--num-requests", type=int, default=32)
    ap.add_argument("--prefix-len", type=int, default=1000)
    ap.add_argument("--suffix-len", type=int, default=32)
    ap.add_argument("--output-len", type=int, default=64)
    ap.add_argument("--max-num-batched-tokens", type=int, default=512)
    args = ap.parse_args()

    rng = random.Random(0)
    vocab = range(100, 49000)  # plain tokens of the default model's vocabulary (no specials)
    prefix = [rng.choice(vocab) for _ in range(args.prefix_len)]
    prompts = [prefix + [rng.choice(vocab) for _ in range(args.suffix_len)] for _ in range(args.num_requests)]
    rows = []
    outputs = []
    for on in (False, True):
        cfg = EngineConfig.from_kwargs(model=args.model, prefix_cache=on, max_num_seqs=args.num_requests,
                                       max_num_batched_tokens=args.max_num_batched_tokens)
        ttft, total, tokens, stats = run(cfg, prompts, args.output_len)
        outputs.append(tokens)
        rows.append((on, statistics.mean(ttft), statistics.median(ttft), total, stats.get("prefix_cache_hit_rate", 0.0)))
    print(f"workload: {args.num_requests} requests, shared prefix {args.prefix_len} + suffix {args.suffix_len} tokens, "
          f"{args.output_len} out, burst arrival, model {args.model}")
    print(f"{'prefix cache':<13} {'mean TTFT s':>11} {'p50 TTFT s':>10} {'total s':>8} {'hit rate':>8}")
    for on, mean, p50, total, hit in rows:
        print(f"{'on' if on else 'off':<13} {mean:>11.2f} {p50:>10.2f} {total:>8.1f} {hit:>8.1%}")
    off, on = rows
    print(f"TTFT off/on: {off[1] / on[1]:.1f}x mean, {off[2] / on[2]:.1f}x p50; total off/on: {off[3] / on[3]:.2f}x; "
          f"greedy outputs identical: {outputs[0] == outputs[1]}")


if __name__ == "__main__":
    main()
