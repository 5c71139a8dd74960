"""Batch-1 greedy decode speed of llama.cpp (llama-cpp-python), run by its venv's python.

    python llamacpp_decode.py GGUF PROMPTS_JSON OUTPUT_LEN THREADS

Decodes OUTPUT_LEN tokens after each of the first 3 prompts (EOS not honoured, like ignore_eos);
prints one JSON line with the median decode rate (tokens after the first / their time) and prefill time.
"""

import json
import sys
import time

from decode_timing import report_decode


def main() -> None:
    gguf, prompts_path, output_len, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    from llama_cpp import Llama

    with open(prompts_path) as f:
        prompts = json.load(f)[:3]
    t0 = time.perf_counter()
    llm = Llama(model_path=gguf, n_ctx=1024, n_threads=threads, n_threads_batch=threads, n_batch=512,
                verbose=False, seed=0)
    load_s = time.perf_counter() - t0

    def run(p: str):
        def tokens():
            llm.reset()
            for n, _tok in enumerate(llm.generate(p, top_k=1, temp=0.0, reset=True), start=1):
                yield n
                if n == output_len:
                    break
        return tokens

    report_decode([run(p) for p in prompts], load_s)


if __name__ == "__main__":
    main()
