"""Offline output throughput: Kairos LLM.generate vs Hugging Face transformers generate, same run.

    python benchmarks/offline_throughput.py [--num-prompts 64 --input-len 128 --output-len 128 --hf-batch 8]

Prompts are random token ids (fixed seed) of exactly --input-len tokens; every request
produces exactly --output-len tokens (EOS ignored), so both sides do the same work.
"""

from __future__ import annotations

import argparse
import platform
import random
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="default")
    ap.add_argument("--num-prompts", type=int, default=64)
    ap.add_argument("--input-len", type=int, default=128)
    ap.add_argument("--output-len", type=int, default=128)
    ap.add_argument("--hf-batch", type=int, default=8)
    ap.add_argument("--hf-prompts", type=int, default=None, help="run HF on the first N prompts only (default: all)")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--max-num-seqs", type=int, default=64)
    ap.add_argument("--max-num-batched-tokens", type=int, default=512)
    args = ap.parse_args()

    from kairos import LLM, SamplingParams

    t0 = time.perf_counter()
    llm = LLM(args.model, dtype=args.dtype, max_num_seqs=args.max_num_seqs,
              max_num_batched_tokens=args.max_num_batched_tokens)
    load_s = time.perf_counter() - t0
    rng = random.Random(0)
    special = set(llm.tokenizer.all_special_ids) if llm.tokenizer else set()
    vocab = [t for t in range(llm.engine.arch.vocab_size) if t not in special]
    prompts = [[rng.choice(vocab) for _ in range(args.input_len)] for _ in range(args.num_prompts)]
    params = SamplingParams(temperature=0.0, max_tokens=args.output_len, ignore_eos=True)

    llm.generate(prompts[:2], SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True))  # warm-up
    t0 = time.perf_counter()
    outs = llm.generate(prompts, params)
    kairos_s = time.perf_counter() - t0
    kairos_tokens = sum(len(o.outputs[0].token_ids) for o in outs)

    from transformers import AutoModelForCausalLM

    from kairos.loader import resolve_dtype, resolve_model_path

    path = resolve_model_path(args.model)
    dtype = resolve_dtype(llm.config.model, torch.device("cpu"))
    del llm
    kw = {"gguf_file": path.name} if path.is_file() else {}
    hf = AutoModelForCausalLM.from_pretrained(str(path.parent if path.is_file() else path), dtype=dtype, **kw).eval()
    hf_prompts = prompts[: args.hf_prompts or len(prompts)]
    t0 = time.perf_counter()
    hf_tokens = 0
    with torch.inference_mode():
        for i in range(0, len(hf_prompts), args.hf_batch):
            ids = torch.tensor(hf_prompts[i : i + args.hf_batch])
            out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=args.output_len,
                              min_new_tokens=args.output_len, do_sample=False, pad_token_id=0)
            hf_tokens += out[:, ids.shape[1]:].numel()
    hf_s = time.perf_counter() - t0

    k_tps, h_tps = kairos_tokens / kairos_s, hf_tokens / hf_s
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, dtype {str(dtype).removeprefix('torch.')}")
    print(f"workload: {args.num_prompts} x ({args.input_len} in / {args.output_len} out), model {args.model}; "
          f"kairos load {load_s:.1f} s")
    print(f"{'engine':<28} {'requests':>8} {'out tokens':>10} {'seconds':>8} {'out tok/s':>10} {'ratio':>6}")
    print(f"{'kairos (continuous batch)':<28} {len(prompts):>8} {kairos_tokens:>10} {kairos_s:>8.1f} {k_tps:>10.1f} {k_tps / h_tps:>6.2f}")
    print(f"{f'hf generate (batch {args.hf_batch})':<28} {len(hf_prompts):>8} {hf_tokens:>10} {hf_s:>8.1f} {h_tps:>10.1f} {1.0:>6.2f}")


if __name__ == "__main__":
    main()
