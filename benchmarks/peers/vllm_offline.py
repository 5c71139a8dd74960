"""Offline throughput of vLLM, run by the vLLM venv's python (see vs_peers.py).

    python vllm_offline.py MODEL_DIR PROMPTS_JSON OUTPUT_LEN DTYPE

Prints one JSON line: {"tokens": N, "seconds": S, "load_s": L}.
"""

import json
import sys
import time

import vllm_compat  # noqa: F401  (answers the distribution-name lookup before vllm is imported)


def main() -> None:
    model, prompts_path, output_len, dtype = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    with open(prompts_path) as f:
        prompts = json.load(f)
    t0 = time.perf_counter()
    llm = LLM(model=model, dtype=dtype, max_model_len=1024, max_num_seqs=max(len(prompts), 1), seed=0)
    load_s = time.perf_counter() - t0
    params = SamplingParams(temperature=0.0, max_tokens=output_len, ignore_eos=True)
    llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts[:2]],
                 SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True), use_tqdm=False)
    t0 = time.perf_counter()
    outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
    seconds = time.perf_counter() - t0
    tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    print(json.dumps({"tokens": tokens, "seconds": seconds, "load_s": load_s}), flush=True)


if __name__ == "__main__":
    main()
