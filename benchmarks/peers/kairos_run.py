"""Kairos side of vs_peers.py, in its own process like every peer.

    python kairos_run.py offline PROMPTS_JSON OUTPUT_LEN [engine kwargs as k=v ...]
    python kairos_run.py decode  PROMPTS_JSON OUTPUT_LEN [engine kwargs as k=v ...]

offline: LLM.generate over all prompts (greedy, EOS ignored): {"tokens", "seconds", "load_s"}.
decode: batch-1 greedy decode after each of the first 3 prompts, timed from the first output
token to the last (what llamacpp_decode.py measures): {"decode_tok_s", "prefill_s", "load_s"}.
"""

from __future__ import annotations

import json
import sys
import time

from decode_timing import report_decode


def _kwargs(items: list[str]) -> dict:
    out = {}
    for item in items:
        k, v = item.split("=", 1)
        out[k] = int(v) if v.isdigit() else v
    return out


def main() -> None:
    mode, prompts_path, output_len = sys.argv[1], sys.argv[2], int(sys.argv[3])
    from kairos import LLM, SamplingParams
    from kairos.wire.outputs import EngineRequest

    with open(prompts_path) as f:
        prompts = json.load(f)
    t0 = time.perf_counter()
    llm = LLM("default", **_kwargs(sys.argv[4:]))
    load_s = time.perf_counter() - t0
    params = SamplingParams(temperature=0.0, max_tokens=output_len, ignore_eos=True)
    llm.generate(prompts[:2], SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True))  # warm-up
    if mode == "offline":
        t0 = time.perf_counter()
        outs = llm.generate(prompts, params)
        seconds = time.perf_counter() - t0
        print(json.dumps({"tokens": sum(len(o.outputs[0].token_ids) for o in outs), "seconds": seconds,
                          "load_s": load_s}), flush=True)
        return
    engine = llm.engine

    def run(i: int, p: list[int]):
        def tokens():
            engine.add_request(EngineRequest(f"decode-{i}", p, params))
            n = 0
            while engine.has_unfinished():
                n += sum(len(out.new_token_ids) for out in engine.step())
                yield n
        return tokens

    report_decode([run(i, p) for i, p in enumerate(prompts[:3])], load_s)


if __name__ == "__main__":
    main()
