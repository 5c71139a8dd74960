"""Async scheduling against a stand-in device: what launching step N+1 before step N is applied
buys when the host's work per step (schedule, prepare, update, detokenize) and the device's
time per step are of the same order, as for a small model on a GPU.

    python benchmarks/async_sched.py [--batch 64,256] [--device-ms 0,2,5,10] [--steps 64]

No GPU is needed, and none is measured: the model is the tiny one of host_step.py (its compute
on this CPU is part of the host's time), and the "device" is an in-order queue that takes
``--device-ms`` per step: a step's tokens are ready ``device-ms`` after it was queued or after
the step before it was ready, whichever is later; reading them (``Sampler.to_host``) sleeps
until then. Every other line of the engine runs as it does in serving (``LLM.generate``).
Prints output tokens per second with synchronous and async steps, side by side in one run.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

from host_step import tiny_model


def measure(path: Path, batch: int, prompt_len: int, steps: int, device_s: float, on: bool) -> float:
    from kairos import LLM, SamplingParams

    llm = LLM(str(path), max_num_seqs=batch, max_num_batched_tokens=max(8192, batch * 128), block_size=16,
              num_blocks=batch * ((prompt_len + steps) // 16 + 3) + 64, async_scheduling=on)
    sampler = llm.engine.sampler
    sample, to_host = sampler.sample, sampler.to_host
    queue = {"ready": 0.0}

    def queued(logits, rows):
        out = sample(logits, rows)
        queue["ready"] = out.ready = max(time.perf_counter(), queue["ready"]) + device_s
        return out

    def wait(out, rows):
        left = out.ready - time.perf_counter()
        if left > 0:
            time.sleep(left)
        return to_host(out, rows)

    sampler.sample, sampler.to_host = queued, wait
    rng = random.Random(0)
    prompts = [[rng.randrange(3, 512) for _ in range(prompt_len)] for _ in range(batch)]
    sp = SamplingParams(temperature=0.0, max_tokens=steps, ignore_eos=True)
    llm.generate(prompts, sp)  # warm-up
    runs = 3
    t0 = time.perf_counter()
    for _ in range(runs):
        llm.generate(prompts, sp)
    return batch * steps * runs / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", default="64,256")
    ap.add_argument("--prompt-len", type=int, default=100)
    ap.add_argument("--device-ms", default="0,2,5,10")
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--tokenizer", default="default", help="where the tokenizer comes from (a model path)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        path = tiny_model(Path(d), args.tokenizer)
        print(f"{'batch':>5} {'device ms':>9} {'sync tok/s':>11} {'async tok/s':>11} {'async/sync':>10}", flush=True)
        for b in map(int, args.batch.split(",")):
            for ms in map(float, args.device_ms.split(",")):
                sync = measure(path, b, args.prompt_len, args.steps, ms / 1e3, False)
                asyn = measure(path, b, args.prompt_len, args.steps, ms / 1e3, True)
                print(f"{b:>5} {ms:>9g} {sync:>11.0f} {asyn:>11.0f} {asyn / sync:>10.2f}", flush=True)


if __name__ == "__main__":
    main()
