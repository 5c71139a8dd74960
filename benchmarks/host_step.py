"""Host work per decode step: what the engine spends in Python around the model, which bounds a
GPU's throughput once the model's own step is a millisecond or two (a 135M model at batch 64 on
an H100). Measured on any machine with a model whose compute is negligible (one layer of width
32, a 512-token vocabulary, random weights, built here) and the default model's tokenizer, so
detokenization costs what it does in serving.

    python benchmarks/host_step.py [--batch 64,256] [--prompt-len 100,1000] [--steps 64] [--heap frozen,walked]

Prints, per batch size, microseconds per sequence per step: the whole offline loop
(``LLM.generate``), the engine step alone (``launch`` + ``finish``), and inside it the model
call (prepare + forward), sampling, and the rest (schedule, update, outputs); the output
processing (detokenize, stop strings; on a GPU it overlaps the next step) is the loop minus the
step; then the median and longest interval between steps. Each
batch runs twice in one process: with the start-up heap frozen (engine.heap, the default) and
with it unfrozen (the collector's oldest generation walking it, as before).
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path


def tiny_model(directory: Path, tokenizer: str = "default") -> Path:
    import torch
    import transformers as tf

    from kairos.loader import load_tokenizer
    from kairos.loader.default import resolve_model_path

    torch.manual_seed(0)
    cfg = tf.LlamaConfig(vocab_size=512, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=8192,
                         tie_word_embeddings=True)
    tf.LlamaForCausalLM(cfg).save_pretrained(directory)
    load_tokenizer(resolve_model_path(tokenizer)).save_pretrained(directory)  # ids < 512 are bytes and merges
    return directory


def measure(path: Path, batch: int, prompt_len: int, steps: int, freeze: bool) -> dict[str, float]:
    import gc

    from kairos import LLM, SamplingParams

    llm = LLM(str(path), max_num_seqs=batch, max_num_batched_tokens=max(8192, batch * 128),
              num_blocks=batch * ((prompt_len + steps) // 16 + 2) + 64, block_size=16)
    if not freeze:
        gc.unfreeze()  # as before engine.heap: the collector walks the whole start-up heap
    eng = llm.engine
    timers = {"launch": 0.0, "finish": 0.0, "execute": 0.0, "sample": 0.0}
    starts: list[float] = []

    def timed(name, fn):
        def wrapper(*args):
            t0 = time.perf_counter()
            if name == "launch":
                starts.append(t0)
            out = fn(*args)
            timers[name] += time.perf_counter() - t0
            return out
        return wrapper

    eng.launch = timed("launch", eng.launch)
    eng.finish = timed("finish", eng.finish)
    eng.runner.execute = timed("execute", eng.runner.execute)
    eng.sampler.sample = timed("sample", eng.sampler.sample)  # (queueing it; to_host includes the wait)
    eng.sampler.to_host = timed("sample", eng.sampler.to_host)
    rng = random.Random(0)
    prompts = [[rng.randrange(3, 512) for _ in range(prompt_len)] for _ in range(batch)]
    sp = SamplingParams(temperature=0.0, max_tokens=steps, ignore_eos=True)
    llm.generate(prompts, sp)  # warm-up
    for k in timers:
        timers[k] = 0.0
    starts.clear()
    runs = 5
    t0 = time.perf_counter()
    for _ in range(runs):
        llm.generate(prompts, sp)
    total = time.perf_counter() - t0
    per = 1e6 / (batch * steps * runs)  # (the prompts' prefill steps count too: the same in every variant)
    row = {k: v * per for k, v in timers.items()}
    row["step"] = row.pop("launch") + row.pop("finish")
    row["loop"] = total * per
    row["rest"] = row["step"] - row["execute"] - row["sample"]
    row["outputs"] = row["loop"] - row["step"]
    gaps = sorted(b - a for a, b in zip(starts, starts[1:]))
    row["p50_ms"] = gaps[len(gaps) // 2] * 1e3
    row["max_ms"] = gaps[-1] * 1e3
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", default="64,256")
    ap.add_argument("--prompt-len", default="100,1000")
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--heap", default="frozen,walked")
    ap.add_argument("--tokenizer", default="default", help="where the tokenizer comes from (a model path)")
    args = ap.parse_args()
    cols = ("loop", "step", "execute", "sample", "rest", "outputs", "p50_ms", "max_ms")
    with tempfile.TemporaryDirectory() as d:
        path = tiny_model(Path(d), args.tokenizer)
        print(f"{'batch':>5} {'prompt':>6} {'heap':>8} " + " ".join(f"{c:>8}" for c in cols), flush=True)
        for b in map(int, args.batch.split(",")):
            for n in map(int, args.prompt_len.split(",")):
                for heap in args.heap.split(","):
                    r = measure(path, b, n, args.steps, heap == "frozen")
                    print(f"{b:>5} {n:>6} {heap:>8} " + " ".join(f"{r[c]:>8.1f}" for c in cols), flush=True)
    print("(loop .. outputs: us per sequence per step over 5 runs; p50_ms / max_ms: median and longest "
          "step-to-step interval)")

if __name__ == "__main__":
    main()
