"""Kairos' CPU kernels vs the torch paths they replace, side by side in one run (default model).

    python benchmarks/cpu_kernels.py [--batches 1,8,64] [--steps 48]

Table 1: the linear layers of all 30 blocks and the lm_head at M rows: GGUF Q4_1/Q8_0 kernel
vs float32 torch matmul on the same (dequantized) weights; the crossover sets
``kairos.models.gguf_linear.MAX_ROWS``. Table 2: whole decode steps of the engine (128-token
prompts, greedy): kernels with the whole decoder stack in one C call, the same kernels per
module, and ``cpu_kernels`` off: step time and output tokens per second. Table 3: prefill
chunks and 64-sequence decode steps with float32 copies of the GGUF weights kept
(``gguf_dense_copy``) vs dequantized into a scratch buffer per call.
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

    llm = LLM("default", dtype="float32", gguf_dense_copy=True)  # the dense column reads the copies
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
    from kairos.models.llama import LlamaForCausalLM

    print("\nengine decode steps, 128-token prompts, greedy (median step after the prefill): kernels with the")
    print("whole stack in one C call (up to 32 sequences), the same kernels called per module, torch only")
    print(f"{'batch':>5} {'stack ms':>9} {'modules ms':>11} {'torch ms':>9} {'stack tok/s':>12} {'modules/stack':>14} "
          f"{'torch/stack':>12}")
    res: dict[tuple[int, str], float] = {}
    for variant in ("stack", "modules", "torch"):
        llm = LLM("default", dtype="float32", cpu_kernels=variant != "torch")
        eng = llm.engine
        if variant == "modules":
            eng.runner.model.__class__ = LlamaForCausalLM  # the kernel modules, one Python call each
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
            res[(b, variant)] = statistics.median(times[2:])
        del llm, eng
    for b in batches:
        k, m, t = res[(b, "stack")], res[(b, "modules")], res[(b, "torch")]
        print(f"{b:>5} {k * 1e3:>9.1f} {m * 1e3:>11.1f} {t * 1e3:>9.1f} {b / k:>12.1f} {m / k:>14.2f} {t / k:>12.2f}")


def dense_copy_table(steps: int) -> None:
    """Big batches (prefill chunks, 64 decodes) with and without float32 copies of the GGUF weights."""
    from kairos import LLM, SamplingParams
    from kairos.engine.outputs import EngineRequest

    print("\nbig batches: float32 copies of the GGUF weights kept (gguf_dense_copy) vs dequantized per call")
    print(f"{'variant':>10} {'prefill 512-tok step ms':>24} {'decode B64 step ms':>19}")
    res = {}
    for copy in (True, False):
        llm = LLM("default", dtype="float32", gguf_dense_copy=copy)
        eng = llm.engine
        rng = random.Random(0)
        for i in range(64):
            prompt = [rng.randrange(100, 49000) for _ in range(128)]
            eng.add_request(EngineRequest(f"{copy}-{i}", prompt, SamplingParams(temperature=0, max_tokens=steps,
                                                                                ignore_eos=True)))
        pre, dec = [], []
        while eng.has_unfinished():
            t0 = time.perf_counter()
            outs = eng.step()
            dt = time.perf_counter() - t0
            if len(outs) == 64 and all(len(o.new_token_ids) == 1 for o in outs):
                dec.append(dt)
            elif not dec:  # the prompts' phase: 512-token steps (prefill chunks, a few decodes)
                pre.append(dt)
        res[copy] = (statistics.median(pre[1:]), statistics.median(dec[2:]))
        print(f"{'copy' if copy else 'dequant':>10} {res[copy][0] * 1e3:>24.1f} {res[copy][1] * 1e3:>19.1f}")
        del llm, eng
    (pc, dc), (pd, dd) = res[True], res[False]
    print(f"{'ratio':>10} {pd / pc:>24.2f} {dd / dc:>19.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default="1,2,4,8,16,32,64")
    ap.add_argument("--batches", default="1,8,64")
    ap.add_argument("--steps", type=int, default=48)
    ap.add_argument("--dense-copy", action=argparse.BooleanOptionalAction, default=True,
                    help="the big-batch table: dense float32 copies vs dequantizing per call")
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    if args.rows:
        linear_table([int(x) for x in args.rows.split(",")])
    if args.batches:
        step_table([int(x) for x in args.batches.split(",")], args.steps)
    if args.dense_copy:
        dense_copy_table(args.steps)


if __name__ == "__main__":
    main()
