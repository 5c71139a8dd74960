"""Batch-1 greedy decode speed of llama.cpp (llama-cpp-python), run by its venv's python.

    python llamacpp_decode.py GGUF PROMPTS_JSON OUTPUT_LEN THREADS

Decodes OUTPUT_LEN tokens after each of the first 3 prompts (EOS not honoured, like ignore_eos);
prints one JSON line with the median decode rate (tokens after the first / their time) and prefill time.
"""

import json
import statistics
import sys
import time


def main() -> None:
    gguf, prompts_path, output_len, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    from llama_cpp import Llama

    with open(prompts_path) as f:
        prompts = json.load(f)[:3]
    t0 = time.perf_counter()
    llm = Llama(model_path=gguf, n_ctx=1024, n_threads=threads, n_threads_batch=threads, n_batch=512,
                verbose=False, seed=0)
    load_s = time.perf_counter() - t0
    rates, prefills = [], []
    for p in prompts:
        llm.reset()
        t0 = time.perf_counter()
        t_first = None
        for n, _tok in enumerate(llm.generate(p, top_k=1, temp=0.0, reset=True), start=1):
            if t_first is None:
                t_first = time.perf_counter()
            if n == output_len:
                break
        end = time.perf_counter()
        prefills.append(t_first - t0)
        rates.append((output_len - 1) / (end - t_first))
    print(json.dumps({"decode_tok_s": statistics.median(rates), "prefill_s": statistics.median(prefills),
                      "load_s": load_s}), flush=True)


if __name__ == "__main__":
    main()
