"""The GPU figures: batch-1 decode vs the HBM roofline, offline throughput vs Hugging
Face generate, start-up with and without CUDA graphs (and their record), the Triton decode
attention with and without split contexts.

    python benchmarks/gpu.py [--model default] [--load-format auto] [--num-prompts 256]
                             [--parts startup,decode,attention,offline,hf] [--lens 100,1024]
                             [--hf-batch 16] [--hf-prompts N] [--out res.json]

On a machine that cannot take the weight file (the lent GPU machines: nothing reaches a model
hub, 64 MiB travel per call), ``--model DIR --load-format dummy`` with DIR from
``benchmarks/gpu_kit.py``: the default model's config and tokenizer, random weights of its
shapes (on a GPU the same work per step; outputs meaningless, EOS ignored anyway). See
benchmarks/gpu_session.sh.

- roofline: the model's weight bytes (all parameters, read once per decode step) over the HBM
  bandwidth measured here (a 1 GiB device-to-device copy, read + write);
- batch-1 decode: median step after a 128-token prompt, 128 tokens, CUDA graphs on and off;
- offline: --num-prompts prompts of random token ids, 100-1024 in and 100-1024 out (--lens; EOS
  ignored), Kairos LLM.generate with async scheduling, then with synchronous steps;
- hf: the same prompts (the first --hf-prompts of them, in their random order) through
  transformers generate in batches of --hf-batch (sorted by length, left padding; only the
  requested tokens count): a part of its own so that it can run in a device call of its own;
- start-up: a fresh process from launch to a ready engine: graphs off; graphs on without a
  capture record (its cache folder emptied first: every size checked against the eager step);
  graphs on with the record the previous start left (checks skipped);
- attention: one decode-attention call (bf16, SmolLM2's 9/3 heads of 64, 16-token blocks) at
  batch 1, 8, 64 and contexts of 512 and 4096 tokens, one split per context vs the default.
Each part's results are printed, and written to --out, as soon as it ends: a call cut short
keeps what it measured. Needs a CUDA device; ``--device cpu`` runs the same code on the CPU
(no attention part, no graphs): a check that the script works before GPU time is spent on it,
not a figure.
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
from dataclasses import dataclass
from pathlib import Path

import torch

GPU_KV_CACHE = "16GiB"  # each engine's, fixed: 256 x 2048 tokens of SmolLM2 need ~12 GB, and an
# engine not yet collected cannot starve the next of the 90% of the GPU it would otherwise take


@dataclass(frozen=True)
class Setup:
    model: str
    load_format: str
    device: str

    def __post_init__(self) -> None:
        if self.device not in ("cuda", "cpu") or self.load_format not in ("auto", "dummy"):
            raise ValueError(f"device cuda|cpu and load_format auto|dummy, got {self.device!r}, {self.load_format!r}")

    def llm(self, **kw):
        from kairos import LLM

        if self.device == "cuda":
            kw.setdefault("kv_cache_memory", GPU_KV_CACHE)
        return LLM(self.model, device=self.device, load_format=self.load_format, **kw)

    def sync(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()

    def path(self) -> Path:
        from kairos.loader import resolve_model_path

        return resolve_model_path(self.model)


def release(s: Setup) -> None:
    """Give a deleted engine's memory back: the LLM froze the heap at start-up (engine.heap), so
    collect with it unfrozen first."""
    gc.unfreeze()
    gc.collect()
    if s.device == "cuda":
        torch.cuda.empty_cache()


def mem_bandwidth(s: Setup) -> float:
    """Bytes per second of a copy on the device (each byte read once and written once)."""
    src = torch.empty(1 << 28 if s.device == "cuda" else 1 << 24, dtype=torch.float32, device=s.device)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    s.sync()
    t0 = time.perf_counter()
    for _ in range(10):
        dst.copy_(src)
    s.sync()
    return 2 * src.numel() * 4 * 10 / (time.perf_counter() - t0)


def decode_step_ms(s: Setup, graphs: bool) -> tuple[float, int, list[int]]:
    """(median decode step in ms at batch 1, weight bytes, the batch sizes replayed from graphs)."""
    from kairos import SamplingParams
    from kairos.wire.outputs import EngineRequest

    llm = s.llm(cuda_graphs=graphs, max_num_seqs=64)
    eng = llm.engine
    weights = sum(p.numel() * p.element_size() for p in eng.runner.model.parameters())
    sizes = sorted(eng.runner.graphs.graphs) if eng.runner.graphs else []  # none: every step eager
    rng = random.Random(0)
    prompt = [rng.randrange(min(100, eng.arch.vocab_size // 2), min(10_000, eng.arch.vocab_size)) for _ in range(128)]
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
    release(s)
    return statistics.median(times) * 1e3, weights, sizes


def workload(s: Setup, n: int, lo: int, hi: int) -> tuple[list[tuple[int, int]], list[list[int]]]:
    """``n`` (prompt length, output length) pairs in [lo, hi] and the prompts' random token ids."""
    from kairos.loader import read_arch

    vocab = read_arch(s.path()).vocab_size
    rng = random.Random(0)
    lens = [(rng.randint(lo, hi), rng.randint(lo, hi)) for _ in range(n)]
    skip = min(100, vocab // 4)  # (special and byte tokens at the start and end of the vocabulary)
    return lens, [[rng.randrange(skip, vocab - skip) for _ in range(i)] for i, _ in lens]


def offline(s: Setup, lens: list[tuple[int, int]], prompts: list[list[int]], hi: int, out: dict) -> None:
    from kairos import SamplingParams

    params = [SamplingParams(temperature=0, max_tokens=o, ignore_eos=True) for _, o in lens]
    for on in (True, False):  # async scheduling (the default on GPUs), then synchronous steps
        llm = s.llm(max_num_seqs=256, max_num_batched_tokens=8192, max_model_len=2 * hi, async_scheduling=on)
        llm.generate(prompts[:2], SamplingParams(temperature=0, max_tokens=4, ignore_eos=True))
        t0 = time.perf_counter()
        outs = llm.generate(prompts, params)
        k_s = time.perf_counter() - t0
        k_tok = sum(len(o.outputs[0].token_ids) for o in outs)
        assert k_tok == sum(o for _, o in lens), "every request runs to its max_tokens (EOS ignored)"
        out["kairos_tok_s" if on else "kairos_sync_tok_s"] = k_tok / k_s
        out["kairos_s" if on else "kairos_sync_s"] = k_s
        del llm, outs
        release(s)


def hf_model(s: Setup):
    """The transformers model in bfloat16 on the device; random weights with dummy."""
    from transformers import AutoConfig, AutoModelForCausalLM

    path = s.path()
    kw = {"gguf_file": path.name} if path.is_file() else {}
    where = str(path.parent if path.is_file() else path)
    if s.load_format == "dummy":
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(where, **kw), dtype=torch.bfloat16)
    else:
        model = AutoModelForCausalLM.from_pretrained(where, dtype=torch.bfloat16, **kw)
    return model.to(s.device).eval()


def hf(s: Setup, lens: list[tuple[int, int]], prompts: list[list[int]], batch: int, out: dict) -> None:
    hf = hf_model(s)
    n = len(prompts)
    order = sorted(range(n), key=lambda i: lens[i][0])
    t0 = time.perf_counter()
    hf_tok = 0
    with torch.inference_mode():
        for b in range(0, n, batch):
            idx = order[b : b + batch]
            width = max(lens[i][0] for i in idx)
            ids = torch.tensor([[0] * (width - lens[i][0]) + prompts[i] for i in idx], device=s.device)
            mask = torch.tensor([[0] * (width - lens[i][0]) + [1] * lens[i][0] for i in idx], device=s.device)
            new = max(lens[i][1] for i in idx)
            hf.generate(ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new, do_sample=False,
                        eos_token_id=None, pad_token_id=0)
            hf_tok += sum(lens[i][1] for i in idx)  # what was asked for; the rest is padding work
    s.sync()
    h_s = time.perf_counter() - t0
    del hf
    release(s)
    out.update(hf_prompts=n, hf_tok_s=hf_tok / h_s, hf_s=h_s)


def startup_s(s: Setup, graphs: bool) -> tuple[float, float, bool]:
    """(seconds from launch to a ready engine, of which capturing graphs, whether graphs are on)."""
    code = ("import time; t0 = time.perf_counter(); from kairos import LLM; "
            f"g = LLM({s.model!r}, device={s.device!r}, load_format={s.load_format!r}, "
            f"cuda_graphs={graphs}).engine.runner.graphs; "
            "print(time.perf_counter() - t0, g.seconds if g else 0.0, int(g is not None))")
    # (stderr not captured: a failing child's traceback and a capture's warnings reach the log)
    out = subprocess.run([sys.executable, "-c", code], check=True, stdout=subprocess.PIPE, text=True).stdout
    total, capture, on = out.split()[-3:]
    return float(total), float(capture), on == "1"


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


def measure(s: Setup, parts: list[str], args: argparse.Namespace, res: dict, done) -> None:
    """Run ``parts`` in order into ``res``, calling ``done()`` after each."""
    lo, hi = map(int, args.lens.split(","))
    for part in parts:
        if part == "startup":
            from kairos.loader.tokenizer import cache_dir

            startup_s(s, False)  # converts a GGUF into the cache once: not part of any start below
            res["startup_eager_s"] = startup_s(s, False)[0]
            shutil.rmtree(cache_dir() / "graphs", ignore_errors=True)
            res["startup_graphs_s"], res["capture_checked_s"], res["startup_graphs_on"] = startup_s(s, True)
            res["startup_graphs_record_s"], res["capture_record_s"], _ = startup_s(s, True)
        elif part == "decode":
            bw = mem_bandwidth(s)
            g, weights, sizes = decode_step_ms(s, True)
            e, _, _ = decode_step_ms(s, False)
            res.update(hbm_gb_s=bw / 1e9, weight_mb=weights / 1e6, roofline_ms=weights / bw * 1e3,
                       step_graphs_ms=g, step_eager_ms=e, graph_sizes=sizes)
        elif part == "attention":
            res["attention_us"] = {f"b{b}_ctx{c}": {"one_split": attention_us(b, c, 1),
                                                    "default": attention_us(b, c, None)}
                                   for b in (1, 8, 64) for c in (512, 4096)}
        elif part == "offline":
            offline(s, *workload(s, args.num_prompts, lo, hi), hi, res)
        elif part == "hf":
            lens, prompts = workload(s, args.num_prompts, lo, hi)
            n = args.hf_prompts or len(prompts)
            hf(s, lens[:n], prompts[:n], args.hf_batch, res)
        done()


def report(res: dict) -> None:
    if "step_graphs_ms" in res:
        print(f"batch-1 step: {res['step_graphs_ms']:.2f} ms with graphs (sizes {res['graph_sizes']}), "
              f"{res['step_eager_ms']:.2f} eager; roofline {res['roofline_ms']:.3f} ms ({res['weight_mb']:.0f} MB "
              f"at {res['hbm_gb_s']:.0f} GB/s): {res['roofline_ms'] / res['step_graphs_ms']:.1%} of it")
    if "startup_eager_s" in res:
        print(f"start-up: {res['startup_eager_s']:.1f} s eager; graphs {res['startup_graphs_s']:.1f} s "
              f"(capture {res['capture_checked_s']:.1f} s, graphs on: {res['startup_graphs_on']}), with the record "
              f"{res['startup_graphs_record_s']:.1f} s (capture {res['capture_record_s']:.1f} s)")
    for name, t in res.get("attention_us", {}).items():
        print(f"attention {name}: {t['one_split']:.1f} us one split, {t['default']:.1f} us split "
              f"({t['one_split'] / t['default']:.2f}x)")
    if "kairos_tok_s" in res:
        print(f"offline: Kairos {res['kairos_tok_s']:.0f} tok/s async, {res['kairos_sync_tok_s']:.0f} synchronous "
              f"(async/sync {res['kairos_tok_s'] / res['kairos_sync_tok_s']:.2f}x)")
    if "hf_tok_s" in res:
        print(f"HF generate: {res['hf_tok_s']:.0f} tok/s over {res['hf_prompts']} prompts"
              + (f"; Kairos/HF {res['kairos_tok_s'] / res['hf_tok_s']:.2f}x" if "kairos_tok_s" in res else ""))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--load-format", default="auto", choices=("auto", "dummy"))
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    ap.add_argument("--num-prompts", type=int, default=256)
    ap.add_argument("--lens", default="100,1024", help="lo,hi: prompt and output lengths drawn in [lo, hi]")
    ap.add_argument("--hf-batch", type=int, default=16)
    ap.add_argument("--hf-prompts", type=int, default=None, help="HF generate on the first N prompts only")
    ap.add_argument("--parts", default="startup,decode,attention,offline,hf")
    ap.add_argument("--out", help="JSON results, rewritten after each part (merged into what is there)")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("benchmarks/gpu.py needs a CUDA device (--device cpu checks the script on the CPU)")
    parts = [p for p in args.parts.split(",") if not (p == "attention" and args.device == "cpu")]  # (interpreter)
    out = Path(args.out) if args.out else None
    res = json.loads(out.read_text()) if out and out.is_file() else {}  # parts of earlier calls stay
    res.update(device=torch.cuda.get_device_name() if args.device == "cuda" else "cpu", torch=torch.__version__,
               load_format=args.load_format)

    def done() -> None:
        if out:
            out.write_text(json.dumps(res, indent=1))
        report(res)
        print(flush=True)

    measure(Setup(args.model, args.load_format, args.device), parts, args, res, done)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
