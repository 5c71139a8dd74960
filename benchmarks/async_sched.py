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

``--rows`` picks what every row asks for: ``plain`` (greedy), ``penalties`` (a frequency
penalty: the host counts each row's last token) or ``grammar`` (a regex: each row's matcher
advances on the host). Where a row needs its last token, an async step's forward is launched
ahead and only its sampling waits for the step before: the stand-in device takes the step's
``device-ms`` from the end of its launch, and its tokens are ready no sooner than
``--sample-ms`` after its sampling is queued.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

from host_step import tiny_model


def with_small_tokenizer(model: Path, directory: Path) -> Path:
    """The model with a byte-level BPE tokenizer of its own inside its 512 ids: llguidance needs
    every token of the tokenizer to be one of the model's."""
    import shutil

    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(["the quick brown fox jumps over the lazy dog 0123456789"] * 10, vocab_size=500,
                            min_frequency=1, special_tokens=["<pad>", "<s>", "</s>"], show_progress=False)
    shutil.copytree(model, directory)
    for f in directory.glob("tokenizer*"):
        f.unlink()
    PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<s>", eos_token="</s>",
                            pad_token="<pad>").save_pretrained(directory)
    return directory


def params_of(rows: str, steps: int):
    from kairos import SamplingParams, StructuredOutput

    extra = {"plain": {}, "penalties": {"frequency_penalty": 0.5},
             "grammar": {"structured": StructuredOutput(regex="[a-z0-9 ]+")}}[rows]
    return SamplingParams(temperature=0.0, max_tokens=steps, ignore_eos=True, **extra)


def measure(path: Path, batch: int, prompt_len: int, steps: int, device_s: float, on: bool, rows: str,
            sample_s: float) -> float:
    from kairos import LLM

    llm = LLM(str(path), max_num_seqs=batch, max_num_batched_tokens=max(8192, batch * 128), block_size=16,
              num_blocks=batch * ((prompt_len + steps) // 16 + 3) + 64, async_scheduling=on)
    sampler = llm.engine.sampler
    sample, to_host = sampler.sample, sampler.to_host
    execute = llm.engine.runner.execute
    queue = {"ready": 0.0, "launched": 0.0}

    def launched(*args, **kwargs):
        out = execute(*args, **kwargs)  # (the CPU's forward: host time)
        queue["launched"] = time.perf_counter()
        return out

    def queued(logits, rows):
        out = sample(logits, rows)
        # the device starts the step's forward when it is launched and the step before is done; a
        # sampling put off until the host knows the last token (penalties, a grammar) ends no
        # sooner than sample_s after it is queued
        start = max(queue["launched"], queue["ready"])
        queue["ready"] = out.ready = max(start + device_s, time.perf_counter() + sample_s)
        return out

    def wait(out, rows):
        left = out.ready - time.perf_counter()
        if left > 0:
            time.sleep(left)
        return to_host(out, rows)

    sampler.sample, sampler.to_host, llm.engine.runner.execute = queued, wait, launched
    rng = random.Random(0)
    prompts = [[rng.randrange(3, 512) for _ in range(prompt_len)] for _ in range(batch)]
    sp = params_of(rows, steps)
    llm.generate(prompts, sp)  # warm-up (and the grammar's compile)
    tokens, t0 = 0, time.perf_counter()
    for _ in range(3):
        tokens += sum(len(o.token_ids) for r in llm.generate(prompts, sp) for o in r.outputs)
    return tokens / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", default="64,256")
    ap.add_argument("--prompt-len", type=int, default=100)
    ap.add_argument("--device-ms", default="0,2,5,10")
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--tokenizer", default="default", help="where the tokenizer comes from (a model path)")
    ap.add_argument("--rows", default="plain", help="comma-separated: plain, penalties, grammar")
    ap.add_argument("--sample-ms", type=float, default=0.05, help="a put-off sampling's device time")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        model = tiny_model(Path(d) / "model", args.tokenizer)
        small = with_small_tokenizer(model, Path(d) / "small") if "grammar" in args.rows else None
        print(f"{'rows':>9} {'batch':>5} {'device ms':>9} {'sync tok/s':>11} {'async tok/s':>11} {'async/sync':>10}",
              flush=True)
        for rows in args.rows.split(","):
            for b in map(int, args.batch.split(",")):
                for ms in map(float, args.device_ms.split(",")):
                    path = small if rows == "grammar" else model
                    sync, asyn = (measure(path, b, args.prompt_len, args.steps, ms / 1e3, on, rows,
                                          args.sample_ms / 1e3) for on in (False, True))
                    print(f"{rows:>9} {b:>5} {ms:>9g} {sync:>11.0f} {asyn:>11.0f} {asyn / sync:>10.2f}", flush=True)


if __name__ == "__main__":
    main()
