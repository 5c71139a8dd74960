"""Speculative decoding by n-gram lookup (``--speculative-tokens``) vs plain decoding, side by side
in one run, on the default model, greedy (the outputs are the same token for token: checked).

    python benchmarks/speculative.py [--k 0,2,4] [--batch 1,4] [--max-tokens 128] [--repeat 2]

Two kinds of chats: "quote" asks the model to repeat or lightly edit a passage it is given (its
output follows its prompt: the lookup finds drafts), "free" asks open questions (few repeats).
Prints output tokens per second, the share of drafted tokens kept, and the speed-up over k = 0.
"""

from __future__ import annotations

import argparse
import time

PASSAGE = ("The scheduler keeps a cost model of this engine on this hardware: prefill cost per token, decode "
           "step cost as a function of batch size and context, fitted online from its own step timings. From "
           "it, it orders requests by earliest deadline or least slack, and refuses early a request that cannot "
           "meet its objective instead of spending compute on a miss.")
CHATS = {
    "quote": [f"Repeat this text exactly, word for word:\n\n{PASSAGE}",
              f"Rewrite this text with every sentence on its own line:\n\n{PASSAGE}",
              f"Copy this text and replace 'engine' by 'server':\n\n{PASSAGE}",
              f"Repeat the following paragraph:\n\n{PASSAGE}"],
    "free": ["Write a short story about a lighthouse keeper.", "Explain how a bicycle works.",
             "List some good habits for programmers.", "Describe the water cycle."],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--k", default="0,2,4")
    ap.add_argument("--batch", default="1,4")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    from kairos import LLM, SamplingParams

    ks = [int(k) for k in args.k.split(",")]
    llms = {k: LLM("default", speculative_tokens=k) for k in ks}
    tok = llms[ks[0]].tokenizer
    params = SamplingParams(max_tokens=args.max_tokens, temperature=0.0)
    print(f"{'chats':>6} {'batch':>5} {'k':>2} {'tok/s':>8} {'kept':>6} {'speed-up':>8}")
    for kind, texts in CHATS.items():
        prompts = [tok.apply_chat_template([{"role": "user", "content": t}], tokenize=False, add_generation_prompt=True)
                   for t in texts]
        for b in map(int, args.batch.split(",")):
            batch = (prompts * b)[:b] if b <= len(prompts) else (prompts * (b // len(prompts) + 1))[:b]
            best, outs, kept = {}, {}, {}
            for _ in range(args.repeat):  # (rounds alternate k: a noisy host slows all alike)
                for k in ks:
                    eng = llms[k].engine
                    before = eng.stats()
                    t0 = time.perf_counter()
                    res = llms[k].generate(batch, params)
                    dt = time.perf_counter() - t0
                    n = sum(len(r.outputs[0].token_ids) for r in res)
                    best[k] = max(best.get(k, 0.0), n / dt)
                    outs[k] = [r.outputs[0].token_ids for r in res]
                    if k:
                        after = eng.stats()
                        drafted = after["spec_draft_tokens"] - before["spec_draft_tokens"]
                        kept[k] = (after["spec_accepted_tokens"] - before["spec_accepted_tokens"]) / max(1, drafted)
            for k in ks:
                assert outs[k] == outs[ks[0]], f"k={k} changed a greedy output"
                share = f"{kept[k]:6.0%}" if k else f"{'-':>6}"
                print(f"{kind:>6} {b:>5} {k:>2} {best[k]:8.1f} {share} {best[k] / best[ks[0]]:7.2f}x", flush=True)


if __name__ == "__main__":
    main()
