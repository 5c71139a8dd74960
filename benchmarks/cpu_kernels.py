"""Kairos' CPU kernels vs the torch paths they replace, side by side in one run (default model).

    python benchmarks/cpu_kernels.py [--batches 1,8,64] [--steps 48]

Table 1: the linear layers of all 30 blocks and the lm_head at M rows: GGUF Q4_1/Q8_0 kernel
vs float32 torch matmul on the same (dequantized) weights; the crossover sets
``kairos.models.gguf_linear.MAX_ROWS``. Table 2: whole decode steps of the engine (128-token
prompts, greedy) with ``cpu_kernels`` on and off: step time and output tokens per second.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import torch
import torch.nn.functional as F


def _time(fn, n: int) -> float:
    for _ in range(2):
        fn()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n * 1e3


def linear_table(rows: list[int]) -> None:
    from kairos import LLM
    from kairos.models.gguf_linear import GGUFLinear

    llm = LLM("default", dtype="float32")
    mods = [m for m in llm.engine.runner.model.modules() if isinstance(m, GGUFLinear)]
    head = [m for m in mods if m.out_features == llm.engine.arch.vocab_size]
    layers = [m for m in mods if m not in head]
    print(f"\n{len(layers)} GGUF linear layers + lm_head ({head[0].qweight.kind if head else '-'}); ms per pass")
    print(f"{'rows':>5} {'layers kernel':>14} {'layers dense':>13} {'ratio':>6} {'head kernel':>12} {'head dense':>11} {'ratio':>6}")
    with torch.inference_mode():
        for m in rows:
            xs = {k: torch.randn(m, k) for k in {mod.in_features for mod in mods}}
            lk, ld, hk, hd = (_time(lambda f=f, ms=ms, xs=xs: [f(mod, xs[mod.in_features]) for mod in ms], 10)
                              for ms in (layers, head) for f in (_kernel, _dense))
            print(f"{m:>5} {lk:>14.2f} {ld:>13.2f} {ld / lk:>6.2f} {hk:>12.2f} {hd:>11.2f} {hd / hk:>6.2f}")


def _dense(mod, x):
    return F.linear(x, mod.weight)


def _kernel(mod, x):
    from kairos.kernels.cpu import gguf_gemm

    return gguf_gemm(x, mod.qweight)


def step_table(batches: list[int], steps: int) -> None:
    from kairos import LLM, SamplingParams
    from kairos.engine.outputs import EngineRequest

    print("\nengine decode steps, 128-token prompts, greedy (median step after the prefill)")
    print(f"{'batch':>5} {'kernels ms':>11} {'torch ms':>9} {'kernels tok/s':>14} {'torch tok/s':>12} {'speed-up':>9}")
    res: dict[tuple[int, bool], float] = {}
    for on in (True, False):
        llm = LLM("default", dtype="float32", cpu_kernels=on)
        eng = llm.engine
        rng = random.Random(0)
        for b in batches:
            for i in range(b):
                prompt = [rng.randrange(100, 49000) for _ in range(128)]
                eng.add_request(EngineRequest(f"{b}-{i}", prompt, SamplingParams(temperature=0, max_tokens=steps,
                                                                                 ignore_eos=True)))
            times = []
            while eng.has_unfinished():
                t0 = time.perf_counter()
                outs = eng.step()
                dt = time.perf_counter() - t0
                if len(outs) == b and all(len(o.new_token_ids) == 1 for o in outs):
                    times.append(dt)
            res[(b, on)] = statistics.median(times[2:])
        del llm, eng
    for b in batches:
        k, t = res[(b, True)], res[(b, False)]
        print(f"{b:>5} {k * 1e3:>11.1f} {t * 1e3:>9.1f} {b / k:>14.1f} {b / t:>12.1f} {t / k:>9.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default="1,2,4,8,16,32,64")
    ap.add_argument("--batches", default="1,8,64")
    ap.add_argument("--steps", type=int, default=48)
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    linear_table([int(x) for x in args.rows.split(",")])
    step_table([int(x) for x in args.batches.split(",")], args.steps)


if __name__ == "__main__":
    main()
