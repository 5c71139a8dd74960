"""What structured output costs, on the default model, side by side in one run.

    python benchmarks/structured.py [--requests 16] [--max-tokens 48]

1. The grammar mask per step: ``sampler.apply_grammar`` with B rows of the default model's
   49,152-token vocabulary (matchers of a JSON schema, advanced to a point inside the object), next
   to the sampler's own greedy step on the same logits. Best of 20, microseconds.
2. End to end (offline ``LLM``, greedy): the same chat prompts unconstrained, as ``json_object``,
   and under a JSON schema. Output tokens per second of each run, and the ratio to the
   unconstrained one. The constrained outputs end when their JSON does, so they differ in length:
   compare tokens per second, not times.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from kairos import LLM, SamplingParams, StructuredOutput
from kairos.grammar.structured import StructuredOutputs
from kairos.loader import load_tokenizer
from kairos.loader.default import default_model_path
from kairos.worker.sampler import Sampler, SamplingRow, apply_grammar

SCHEMA = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 24},
                                           "age": {"type": "integer"}, "city": {"type": "string", "maxLength": 24}},
          "required": ["name", "age", "city"], "additionalProperties": False}
TOPICS = ["a person", "a chef", "a pilot", "a painter", "a farmer", "a doctor", "a poet", "a sailor"]


def best_us(fn, reps: int = 20) -> float:
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best * 1e6


def mask_cost(path) -> None:
    tok = load_tokenizer(path)
    vocab = 49152
    so = StructuredOutputs(lambda: tok, vocab, [tok.eos_token_id])
    spec = StructuredOutput(json=json.dumps(SCHEMA))
    prefix = tok('{"name": "Ada", "age": 3', add_special_tokens=False).input_ids
    sampler = Sampler(torch.device("cpu"), 0)
    print("grammar mask per step (us, best of 20): rows, mask, greedy sampler step, mask / sampler")
    for rows in (1, 8, 32):
        matchers = []
        for _ in range(rows):
            m = so.matcher(spec)
            assert all(m.consume_token(t) for t in prefix)
            matchers.append(m)
        logits = torch.randn(rows, vocab)
        srows = [SamplingRow(SamplingParams(temperature=0.0), None, [], [])] * rows
        mask = best_us(lambda x=logits, m=matchers: apply_grammar(x, m))
        step = best_us(lambda x=logits, r=srows: sampler(x, r))
        print(f"  {rows:>3} {mask:>9.0f} {step:>9.0f} {mask / step:>6.2f}x")


def end_to_end(path, n: int, max_tokens: int) -> None:
    llm = LLM(path, device="cpu")
    chats = [[{"role": "user", "content": f"Describe {TOPICS[i % len(TOPICS)]} (#{i}) as JSON."}] for i in range(n)]
    llm.chat(chats[:2], SamplingParams(temperature=0.0, max_tokens=4))  # warm-up
    runs = {"none": None, "json_object": StructuredOutput(json_object=True),
            "json schema": StructuredOutput(json=json.dumps(SCHEMA))}
    base = None
    print(f"end to end: {n} chats, greedy, max_tokens {max_tokens}")
    for name, spec in runs.items():
        t0 = time.perf_counter()
        outs = llm.chat(chats, SamplingParams(temperature=0.0, max_tokens=max_tokens, structured=spec))
        dt = time.perf_counter() - t0
        toks = sum(len(o.outputs[0].token_ids) for o in outs)
        done = sum(o.outputs[0].finish_reason == "stop" for o in outs)
        valid = sum(_parses(o.outputs[0].text) for o in outs)
        rate = toks / dt
        base = base or rate
        print(f"  {name:>12}: {toks:>5} tokens in {dt:6.2f} s, {rate:7.1f} tok/s ({rate / base:.2f}x), "
              f"{done}/{n} ended by stop, {valid}/{n} parse as JSON")


def _parses(text: str) -> bool:
    try:
        json.loads(text)
        return True
    except ValueError:
        return False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=48)
    args = ap.parse_args()
    path = default_model_path()
    mask_cost(path)
    end_to_end(path, args.requests, args.max_tokens)


if __name__ == "__main__":
    main()
