"""Kairos' CPU kernels vs the torch paths they replace, side by side in one run (default model).

    python benchmarks/cpu_kernels.py [--rows 1,4,8,...] [--batches 1,8,64] [--steps 48]

Table 1: the linear layers of all 30 blocks and the lm_head at M rows, from the GGUF Q4_1/Q8_0
blocks: the few-row kernel, the tiled GEMM, and dequantizing the blocks then MKL's float32 GEMM
(torch.nn.functional.linear), and the opt-in int8 activations (``csrc/gguf_gemm_q8.c``, up to 8
rows; the tiled GEMM above); the crossover of the first two is ``SMALL_M`` in
``csrc/gguf_gemm.c``. Table 2: whole decode steps of the engine (128-token prompts, greedy):
kernels with the whole decoder stack in one C call, the same kernels per module, ``cpu_kernels``
off, and the stack with int8 activations: step time and output tokens per second. Table 3: prefill chunks and
64-sequence decode steps of the engine, the tiled GEMM (and the one-call stack) vs per-module
layers that dequantize the blocks and call MKL above 8 rows (the path before the tiled GEMM).
Table 4: decode attention of all 30 layers (the default model's 9 query / 3 KV heads of 64)
over a paged cache with scattered blocks: the C kernel vs the torch path (gathered blocks, SDPA).

    python benchmarks/cpu_kernels.py --isa [--isa-rows 1,4,16] [--attention 1x256,...]

``--isa``: only the AVX2 kernels vs their AVX-512 variants (``cpu.set_isa``) on the same CPU, in
turns, the best of several rounds: the default model's linear layers (random blocks of its
shapes, no download) and its decode attention. A variant is on by default (``cpu.VARIANTS``)
only where it wins here.
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
    from kairos.kernels.cpu import dequantize, gguf_gemm
    from kairos.models.gguf_linear import GGUFLinear

    llm = LLM("default", dtype="float32")
    mods = [m for m in llm.engine.runner.model.modules() if isinstance(m, GGUFLinear)]
    head = [m for m in mods if m.out_features == llm.engine.arch.vocab_size]
    layers = [m for m in mods if m not in head]
    paths = {"few-row": lambda x, w: gguf_gemm(x, w, tiled=False), "tiled": lambda x, w: gguf_gemm(x, w, tiled=True),
             "deq+MKL": lambda x, w: F.linear(x, dequantize(w)),
             "int8 act": lambda x, w: gguf_gemm(x, w, int8_activations=True)}  # opt-in; tiled above 8 rows
    print(f"\n{len(layers)} GGUF linear layers ({layers[0].qweight.kind}) and the lm_head "
          f"({head[0].qweight.kind if head else '-'}): ms per pass; GFLOP/s of the tiled GEMM on the layers")
    print(f"{'rows':>5} " + " ".join(f"{'layers ' + p:>15}" for p in paths) + f" {'GFLOP/s':>8} "
          + " ".join(f"{'head ' + p:>13}" for p in paths))
    flop = 2 * sum(m.in_features * m.out_features for m in layers)
    with torch.inference_mode():
        for m in rows:
            xs = {k: torch.randn(m, k) for k in {mod.in_features for mod in mods}}
            lt = {p: _time(lambda f=f, xs=xs: [f(xs[mod.in_features], mod.qweight) for mod in layers], 5)
                  for p, f in paths.items()}
            ht = {p: _time(lambda f=f, xs=xs: [f(xs[mod.in_features], mod.qweight) for mod in head], 3)
                  for p, f in paths.items()}
            print(f"{m:>5} " + " ".join(f"{lt[p]:>15.2f}" for p in paths) + f" {flop * m / lt['tiled'] / 1e6:>8.0f} "
                  + " ".join(f"{ht[p]:>13.2f}" for p in paths))


def step_table(batches: list[int], steps: int) -> None:
    from kairos import LLM, SamplingParams
    from kairos.models.llama import LlamaForCausalLM
    from kairos.wire.outputs import EngineRequest

    print("\nengine decode steps, 128-token prompts, greedy (median step after the prefill): kernels with the")
    print("whole stack in one C call, the same kernels called per module, torch only; the stack with int8 activations")
    print(f"{'batch':>5} {'stack ms':>9} {'modules ms':>11} {'torch ms':>9} {'int8 ms':>8} {'stack tok/s':>12} "
          f"{'modules/stack':>14} {'torch/stack':>12} {'stack/int8':>11}")
    res: dict[tuple[int, str], float] = {}
    for variant in ("stack", "modules", "torch", "int8"):
        llm = LLM("default", dtype="float32", cpu_kernels=variant != "torch",
                  activation_quant="int8" if variant == "int8" else "none")
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
        k, m, t, q = (res[(b, v)] for v in ("stack", "modules", "torch", "int8"))
        print(f"{b:>5} {k * 1e3:>9.1f} {m * 1e3:>11.1f} {t * 1e3:>9.1f} {q * 1e3:>8.1f} {b / k:>12.1f} {m / k:>14.2f} "
              f"{t / k:>12.2f} {k / q:>11.2f}")


def big_batch_table(steps: int) -> None:
    """Prefill chunks and 64-sequence decode steps: tiled GEMM vs dequantize + MKL above 8 rows."""
    from kairos import LLM, SamplingParams
    from kairos.kernels import cpu
    from kairos.models import gguf_linear
    from kairos.models.llama import LlamaForCausalLM
    from kairos.wire.outputs import EngineRequest

    def deq_mkl(x, w):  # what batches above 8 rows ran before the tiled GEMM
        return cpu.gguf_gemm(x, w, tiled=False) if x.shape[0] <= 8 else F.linear(x, cpu.dequantize(w))

    print("\nbig batches: the tiled GGUF GEMM (decode steps in one C call) vs per-module layers that")
    print("dequantize the blocks and call MKL's float32 GEMM above 8 rows")
    print(f"{'variant':>10} {'prefill 512-tok step ms':>24} {'decode B64 step ms':>19}")
    res = {}
    for variant in ("tiled", "deq+MKL"):
        llm = LLM("default", dtype="float32")
        eng = llm.engine
        if variant != "tiled":
            eng.runner.model.__class__ = LlamaForCausalLM  # per module: the stack would call the C GEMM
            gguf_linear.gguf_gemm = deq_mkl
        rng = random.Random(0)
        for i in range(64):
            prompt = [rng.randrange(100, 49000) for _ in range(128)]
            eng.add_request(EngineRequest(f"{variant}-{i}", prompt, SamplingParams(temperature=0, max_tokens=steps,
                                                                                   ignore_eos=True)))
        pre, dec = [], []
        try:
            while eng.has_unfinished():
                t0 = time.perf_counter()
                outs = eng.step()
                dt = time.perf_counter() - t0
                if len(outs) == 64 and all(len(o.new_token_ids) == 1 for o in outs):
                    dec.append(dt)
                elif not dec:  # the prompts' phase: 512-token steps (prefill chunks, a few decodes)
                    pre.append(dt)
        finally:
            gguf_linear.gguf_gemm = cpu.gguf_gemm
        res[variant] = (statistics.median(pre[1:]), statistics.median(dec[2:]))
        print(f"{variant:>10} {res[variant][0] * 1e3:>24.1f} {res[variant][1] * 1e3:>19.1f}")
        del llm, eng
    (pt, dt), (pd, dd) = res["tiled"], res["deq+MKL"]
    print(f"{'deq/tiled':>10} {pd / pt:>24.2f} {dd / dt:>19.2f}")


def attention_table(shapes: list[tuple[int, int]]) -> None:
    print("\ndecode attention, 30 layers, 9/3 heads of 64, blocks of 16 in random order: ms per step")
    print(f"{'batch':>5} {'context':>8} {'C kernel':>9} {'torch':>8} {'torch/C':>8} {'C GB/s':>7}")
    for b, ctx in shapes:
        _attention_row(b, ctx)


def _attention_row(b: int, ctx: int, hq: int = 9, hkv: int = 3, d: int = 64, bs: int = 16, layers: int = 30) -> None:
    from kairos.kernels.cpu import paged_decode_attention
    from kairos.layers.attention import AttentionMetadata, _decode

    gen = torch.Generator().manual_seed(0)
    nblk = (ctx + bs - 1) // bs
    caches = [(torch.randn(b * nblk + 1, bs, hkv, d, generator=gen), torch.randn(b * nblk + 1, bs, hkv, d, generator=gen))
              for _ in range(layers)]
    tables = (torch.randperm(b * nblk, generator=gen) + 1).view(b, nblk).to(torch.int32)
    lens = torch.full((b,), ctx, dtype=torch.int32)
    q = torch.randn(b, hq, d, generator=gen)
    mask = (torch.arange(nblk * bs) < ctx).view(1, 1, 1, -1).expand(b, 1, 1, -1)
    meta = AttentionMetadata(torch.zeros(b, dtype=torch.long), torch.arange(b), tables.long().flatten(), mask, [])
    with torch.inference_mode():
        c = _time(lambda: [paged_decode_attention(q, k, v, tables, lens, d**-0.5) for k, v in caches], 5)
        t = _time(lambda: [_decode(q, k, v, meta, d**-0.5) for k, v in caches], 3)
    gbs = layers * b * ctx * hkv * d * 4 * 2 / c / 1e6
    print(f"{b:>5} {ctx:>8} {c:>9.2f} {t:>8.2f} {t / c:>8.2f} {gbs:>7.1f}")


def _best(fns: dict[str, object], rounds: int, n: int) -> dict[str, float]:
    """ms per call of each fn, the best of ``rounds`` (taken in turns, so a busy core hurts all)."""
    best = {k: float("inf") for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            best[k] = min(best[k], _time(fn, n))
    return best


def isa_table(rows: list[int], attention: list[tuple[int, int]], rounds: int = 5) -> None:
    from kairos.kernels import cpu

    def weight(kind: str, n: int, k: int) -> cpu.GGUFWeight:  # random blocks: the kernels' time is data-blind
        gen = torch.Generator().manual_seed(n * k)
        d = (torch.rand(n, k // 32, generator=gen) * 0.01).half()
        if kind == "q4_1":
            return cpu.GGUFWeight(kind, torch.randint(0, 256, (n, k // 2), dtype=torch.uint8, generator=gen), d, -8 * d)
        return cpu.GGUFWeight(kind, torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=gen), d, None)

    h, i, v, layers = 576, 1536, 49152, 30  # SmolLM2-135M: 9 query / 3 KV heads of 64
    shapes = [(960, h), (h, h), (2 * i, h), (h, i)]
    ws = [weight("q4_1", n, k) for _ in range(layers) for n, k in shapes]
    head = weight("q8_0", v, h)
    flags = cpu.cpu_flags()
    print(f"\nAVX2 kernels vs AVX-512 variants, {torch.get_num_threads()} threads; AVX-512 variants this CPU has: "
          f"{[name for name, (bit, need, _) in cpu.VARIANTS.items() if set(need) <= flags] or 'none'}")
    print("the default model's shapes: 30 layers' linears (Q4_1) and the lm_head (Q8_0), ms per pass, best of "
          f"{rounds}; float32: the kernel picked by rows (few-row up to 8 rows, 16 with AVX-512; above, the "
          "tiled GEMM, AVX2 only); int8 act: up to 8 rows")
    print(f"{'rows':>5} {'path':>14} {'layers avx2':>12} {'avx512':>8} {'ratio':>6} {'head avx2':>10} {'avx512':>8} "
          f"{'ratio':>6}")
    with torch.inference_mode():
        for m in rows:
            xs = {k: torch.randn(m, k) for k in (h, i)}
            paths = {"float32": {}, "int8 act": {"int8_activations": True}}
            if m > 8:
                paths["few-row forced"] = {"tiled": False}
            for name, kw in paths.items():
                res = {}
                for part, mods, n in (("layers", ws, 3), ("head", [head], 5)):
                    def run(mods=mods, kw=kw, xs=xs):
                        for w in mods:
                            cpu.gguf_gemm(xs[w.shape[1]], w, **kw)

                    fns = {isa: (lambda isa=isa, run=run: (cpu.set_isa(isa), run())) for isa in ("avx2", "avx512")}
                    res[part] = _best(fns, rounds, n)
                lt, ht = res["layers"], res["head"]
                print(f"{m:>5} {name:>14} {lt['avx2']:>12.2f} {lt['avx512']:>8.2f} {lt['avx2'] / lt['avx512']:>6.2f} "
                      f"{ht['avx2']:>10.2f} {ht['avx512']:>8.2f} {ht['avx2'] / ht['avx512']:>6.2f}")
    if attention:
        print("\ndecode attention, 30 layers, 9/3 heads of 64, blocks of 16 in random order: ms per step")
        print(f"{'batch':>5} {'context':>8} {'avx2':>8} {'avx512':>8} {'ratio':>6}")
        for b, ctx in attention:
            t = {isa: _attention_ms(b, ctx, isa, rounds) for isa in ("avx2", "avx512")}
            print(f"{b:>5} {ctx:>8} {t['avx2']:>8.2f} {t['avx512']:>8.2f} {t['avx2'] / t['avx512']:>6.2f}")
    cpu.set_isa("auto")


def _attention_ms(b: int, ctx: int, isa: str, rounds: int, hq: int = 9, hkv: int = 3, d: int = 64, bs: int = 16,
                  layers: int = 30) -> float:
    from kairos.kernels import cpu

    gen = torch.Generator().manual_seed(0)
    nblk = (ctx + bs - 1) // bs
    caches = [(torch.randn(b * nblk + 1, bs, hkv, d, generator=gen), torch.randn(b * nblk + 1, bs, hkv, d, generator=gen))
              for _ in range(layers)]
    tables = (torch.randperm(b * nblk, generator=gen) + 1).view(b, nblk).to(torch.int32)
    lens = torch.full((b,), ctx, dtype=torch.int32)
    q = torch.randn(b, hq, d, generator=gen)
    cpu.set_isa(isa)
    return _best({isa: lambda: [cpu.paged_decode_attention(q, k, v, tables, lens, d**-0.5) for k, v in caches]},
                 rounds, 5)[isa]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default="1,4,8,12,16,32,64,128,512")
    ap.add_argument("--batches", default="1,8,64")
    ap.add_argument("--steps", type=int, default=48)
    ap.add_argument("--big-batches", action=argparse.BooleanOptionalAction, default=True,
                    help="the big-batch table: tiled GEMM vs dequantize + MKL")
    ap.add_argument("--attention", default="1x256,8x256,64x192,64x512", help="BxCONTEXT shapes ('' skips)")
    ap.add_argument("--isa", action="store_true", help="only the AVX2 vs AVX-512 tables")
    ap.add_argument("--isa-rows", default="1,4,16")
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    if args.isa:
        isa_table([int(x) for x in args.isa_rows.split(",")],
                  [tuple(int(v) for v in x.split("x")) for x in args.attention.split(",") if x])
        return
    if args.rows:
        linear_table([int(x) for x in args.rows.split(",")])
    if args.batches:
        step_table([int(x) for x in args.batches.split(",")], args.steps)
    if args.big_batches:
        big_batch_table(args.steps)
    if args.attention:
        attention_table([tuple(int(v) for v in x.split("x")) for x in args.attention.split(",")])


if __name__ == "__main__":
    main()
