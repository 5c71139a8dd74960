"""Issue 8's figures on a GPU, in one run: batch-1 decode vs the HBM roofline, offline throughput
vs Hugging Face generate, start-up with and without CUDA graphs (and their record), the Triton
decode attention with and without split contexts.

    python benchmarks/gpu.py [--model default] [--num-prompts 256] [--hf-batch 16]
                             [--parts startup,decode,attention,offline]

- roofline: the model's weight bytes (all parameters, read once per decode step) over the HBM
  bandwidth measured here (a 1 GiB device-to-device copy, read + write);
- batch-1 decode: median step after a 128-token prompt, 128 tokens, CUDA graphs on and off;
- offline: --num-prompts prompts of random token ids, 100-1024 in and 100-1024 out (EOS
  ignored), Kairos LLM.generate (async scheduling, then synchronous steps) vs transformers
  generate in batches of --hf-batch (left padding; only the requested tokens count);
- start-up: a fresh process from launch to a ready engine: graphs off; graphs on without a
  capture record (its cache folder emptied first: every size checked against the eager step);
  graphs on with the record the previous start left (checks skipped);
- attention: one decode-attention call (bf16, SmolLM2's 9/3 heads of 64, 16-token blocks) at
  batch 1, 8, 64 and contexts of 512 and 4096 tokens, one split per context vs the default.
Needs a CUDA device; exits with a message without one.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import shutil
import statistics
import subprocess
import sys
import time

import torch


def release() -> None:
    """Give a deleted engine's GPU memory back (its KV cache takes most of the device): the
    LLM froze the heap at start-up (engine.heap), so collect with it unfrozen first."""
    gc.unfreeze()
    gc.collect()
    torch.cuda.empty_cache()


def hbm_bandwidth() -> float:
    """Bytes per second of a device-to-device copy (each byte read once and written once)."""
    src = torch.empty(1 << 28, dtype=torch.float32, device="cuda")  # 1 GiB
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(10):
        dst.copy_(src)
    torch.cuda.synchronize()
    return 2 * src.numel() * 4 * 10 / (time.perf_counter() - t0)


def decode_step_ms(model: str, graphs: bool) -> tuple[float, int]:
    """(median decode step in ms at batch 1, weight bytes)."""
    from kairos import LLM, SamplingParams
    from kairos.engine.outputs import EngineRequest

    llm = LLM(model, device="cuda", cuda_graphs=graphs, max_num_seqs=64)
    eng = llm.engine
    weights = sum(p.numel() * p.element_size() for p in eng.runner.model.parameters())
    prompt = [random.Random(0).randrange(100, 10_000) for _ in range(128)]
    times = []
    for r in range(2):  # the first run warms up
        eng.add_request(EngineRequest(f"d{r}", prompt, SamplingParams(temperature=0, max_tokens=128, ignore_eos=True)))
        eng.step()  # prefill
        while eng.has_unfinished():
            t0 = time.perf_counter()
            eng.step()  # the sampler's token ids come back to the host: the step is complete
            if r:
                times.append(time.perf_counter() - t0)
    del llm, eng
    release()
    return statistics.median(times) * 1e3, weights


def offline(model: str, n: int, hf_batch: int) -> dict[str, float]:
    from kairos import LLM, SamplingParams

    rng = random.Random(0)
    lens = [(rng.randint(100, 1024), rng.randint(100, 1024)) for _ in range(n)]
    prompts = params = None
    res: dict[str, float] = {}
    for on in (True, False):  # async scheduling (the default on GPUs), then synchronous steps
        llm = LLM(model, device="cuda", max_num_seqs=256, max_num_batched_tokens=8192, max_model_len=2048,
                  async_scheduling=on)
        if prompts is None:
            vocab = llm.engine.arch.vocab_size
            prompts = [[rng.randrange(100, vocab - 100) for _ in range(i)] for i, _ in lens]
            params = [SamplingParams(temperature=0, max_tokens=o, ignore_eos=True) for _, o in lens]
        llm.generate(prompts[:2], SamplingParams(temperature=0, max_tokens=4, ignore_eos=True))
        t0 = time.perf_counter()
        outs = llm.generate(prompts, params)
        k_s = time.perf_counter() - t0
        k_tok = sum(len(o.outputs[0].token_ids) for o in outs)
        res["kairos_tok_s" if on else "kairos_sync_tok_s"] = k_tok / k_s
        res["kairos_s" if on else "kairos_sync_s"] = k_s
        path = llm.engine.model_path
        del llm, outs
        release()

    from transformers import AutoModelForCausalLM

    kw = {"gguf_file": path.name} if path.is_file() else {}
    hf = AutoModelForCausalLM.from_pretrained(str(path.parent if path.is_file() else path), dtype=torch.bfloat16,
                                              **kw).cuda().eval()
    order = sorted(range(n), key=lambda i: lens[i][0])
    t0 = time.perf_counter()
    hf_tok = 0
    with torch.inference_mode():
        for s in range(0, n, hf_batch):
            idx = order[s : s + hf_batch]
            width = max(lens[i][0] for i in idx)
            ids = torch.tensor([[0] * (width - lens[i][0]) + prompts[i] for i in idx], device="cuda")
            mask = torch.tensor([[0] * (width - lens[i][0]) + [1] * lens[i][0] for i in idx], device="cuda")
            new = max(lens[i][1] for i in idx)
            hf.generate(ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new, do_sample=False,
                        eos_token_id=None, pad_token_id=0)
            hf_tok += sum(lens[i][1] for i in idx)  # what was asked for; the rest is padding work
    torch.cuda.synchronize()
    h_s = time.perf_counter() - t0
    return {**res, "hf_tok_s": hf_tok / h_s, "hf_s": h_s}


def startup_s(model: str, graphs: bool) -> tuple[float, float]:
    """(seconds from launch to a ready engine, of which capturing graphs)."""
    code = ("import time; t0 = time.perf_counter(); from kairos import LLM; "
            f"g = LLM({model!r}, device='cuda', cuda_graphs={graphs}).engine.runner.graphs; "
            "print(time.perf_counter() - t0, g.seconds if g else 0.0)")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    total, capture = map(float, out.split()[-2:])
    return total, capture


def attention_us(batch: int, ctx: int, splits: int | None) -> float:
    from kairos.kernels.triton_attention import paged_decode_attention

    bs, hkv, hq, d = 16, 3, 9, 64
    nblk = ctx // bs
    k, v = (torch.randn(batch * nblk + 1, bs, hkv, d, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    tables = (torch.arange(batch * nblk, device="cuda", dtype=torch.int32) + 1).view(batch, nblk)
    lens = torch.full((batch,), ctx, device="cuda", dtype=torch.int32)
    q = torch.randn(batch, hq, d, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        paged_decode_attention(q, k, v, tables, lens, d**-0.5, splits=splits)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(50):
        paged_decode_attention(q, k, v, tables, lens, d**-0.5, splits=splits)
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / 50 * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--num-prompts", type=int, default=256)
    ap.add_argument("--hf-batch", type=int, default=16)
    ap.add_argument("--parts", default="startup,decode,attention,offline")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("benchmarks/gpu.py needs a CUDA device")
    parts = set(args.parts.split(","))
    res: dict[str, object] = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    if "startup" in parts:
        from kairos.loader.tokenizer import cache_dir

        startup_s(args.model, False)  # converts the GGUF into the cache once: not part of any start below
        res["startup_eager_s"] = startup_s(args.model, False)[0]
        shutil.rmtree(cache_dir() / "graphs", ignore_errors=True)
        res["startup_graphs_s"], res["capture_checked_s"] = startup_s(args.model, True)
        res["startup_graphs_record_s"], res["capture_record_s"] = startup_s(args.model, True)
    if "decode" in parts:
        bw = hbm_bandwidth()
        g, weights = decode_step_ms(args.model, True)
        e, _ = decode_step_ms(args.model, False)
        res.update(hbm_gb_s=bw / 1e9, weight_mb=weights / 1e6, roofline_ms=weights / bw * 1e3,
                   step_graphs_ms=g, step_eager_ms=e)
    if "attention" in parts:
        res["attention_us"] = {f"b{b}_ctx{c}": {"one_split": attention_us(b, c, 1), "default": attention_us(b, c, None)}
                               for b in (1, 8, 64) for c in (512, 4096)}
    if "offline" in parts:
        res.update(offline(args.model, args.num_prompts, args.hf_batch))
    print(json.dumps(res, indent=1))
    if "decode" in parts:
        print(f"batch-1 step: {res['step_graphs_ms']:.2f} ms with graphs, {res['step_eager_ms']:.2f} eager; "
              f"roofline {res['roofline_ms']:.3f} ms ({res['weight_mb']:.0f} MB at {res['hbm_gb_s']:.0f} GB/s): "
              f"{res['roofline_ms'] / res['step_graphs_ms']:.1%} of it")
    if "startup" in parts:
        print(f"start-up: {res['startup_eager_s']:.1f} s eager; graphs {res['startup_graphs_s']:.1f} s "
              f"(capture {res['capture_checked_s']:.1f} s), with the record {res['startup_graphs_record_s']:.1f} s "
              f"(capture {res['capture_record_s']:.1f} s)")
    if "attention" in parts:
        for name, t in res["attention_us"].items():
            print(f"attention {name}: {t['one_split']:.1f} us one split, {t['default']:.1f} us split "
                  f"({t['one_split'] / t['default']:.2f}x)")
    if "offline" in parts:
        print(f"offline: Kairos {res['kairos_tok_s']:.0f} tok/s vs HF {res['hf_tok_s']:.0f} tok/s "
              f"({res['kairos_tok_s'] / res['hf_tok_s']:.2f}x); synchronous steps {res['kairos_sync_tok_s']:.0f} tok/s "
              f"(async/sync {res['kairos_tok_s'] / res['kairos_sync_tok_s']:.2f}x)")


if __name__ == "__main__":
    main()
