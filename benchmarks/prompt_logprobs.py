"""What prompt_logprobs cost: scoring prompts (the logprob of each prompt token, as
lm-evaluation-harness asks with ``echo`` and ``max_tokens: 0``) vs running them to one token,
side by side in one run, on the default model.

    python benchmarks/prompt_logprobs.py [--prompts 16] [--len 512] [--top 0,5] [--repeat 3]

The prefix cache is off for every row (a prompt_logprobs request never reads it): the rows differ
only in the work on the logits, the lm_head over every prompt position (not just the last), the
log-softmax, rank and top-N, and the host's decoding of the tokens.
"""

from __future__ import annotations

import argparse
import random
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--len", type=int, default=512)
    ap.add_argument("--top", default="0,5", help="prompt_logprobs values to time")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    from kairos import LLM, SamplingParams

    llm = LLM("default", prefix_cache=False)
    rng = random.Random(0)
    prompts = [[rng.randrange(100, 40000) for _ in range(args.len)] for _ in range(args.prompts)]
    rows = [("one token", None)] + [(f"prompt_logprobs={k}", int(k)) for k in args.top.split(",")]
    llm.generate(prompts[:2], SamplingParams(max_tokens=1, prompt_logprobs=0))  # warm-up
    best = {}
    for _ in range(args.repeat):  # (rounds alternate the rows: a noisy host slows all alike)
        for name, k in rows:
            t0 = time.perf_counter()
            outs = llm.generate(prompts, SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=k))
            best[name] = min(best.get(name, float("inf")), time.perf_counter() - t0)
            assert k is None or all(len(o.prompt_logprobs) == args.len for o in outs)
    base = best["one token"]
    print(f"{args.prompts} prompts x {args.len} tokens, best of {args.repeat}")
    for name, _ in rows:
        s = best[name]
        print(f"{name:>18}: {s:6.2f} s  {args.prompts * args.len / s:8.0f} prompt tok/s  {s / base:5.2f}x")


if __name__ == "__main__":
    main()
