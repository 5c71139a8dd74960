"""CPU time the API server process spends per streamed token: with a fast GPU the engine makes
tokens faster than one Python process can frame and send them, so this bounds a GPU server.

    python benchmarks/api_stream.py [--streams 256] [--max-tokens 128] [--rounds 2]

Starts ``kairos serve`` on 127.0.0.1 with a model whose compute is small (one layer of width 8,
random weights, the default model's tokenizer and vocabulary, built here), sends ``--streams``
concurrent streaming completions of ``--max-tokens`` tokens (EOS ignored) per round, and
prints, per round, the API process's and the engine process's CPU time (user + system, from
/proc) per streamed token, the chunks received, and tokens per second. Compare two trees by
running it with ``PYTHONPATH=<tree>/src``, alternated, in one sitting.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from server_helpers import ServerProcess  # noqa: E402


def tiny_model(directory: Path, tokenizer: str = "default") -> Path:
    import torch
    import transformers as tf

    from kairos.loader import load_tokenizer
    from kairos.loader.default import resolve_model_path

    tok = load_tokenizer(resolve_model_path(tokenizer))
    torch.manual_seed(0)
    cfg = tf.LlamaConfig(vocab_size=len(tok), hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096,
                         tie_word_embeddings=True)
    tf.LlamaForCausalLM(cfg).save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


async def load(url: str, streams: int, max_tokens: int) -> tuple[int, int]:
    body = {"model": "default", "prompt": "Count the waves of the sea, one by one:", "max_tokens": max_tokens,
            "temperature": 0, "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}

    async def one(http: httpx.AsyncClient) -> tuple[int, int]:
        chunks = tokens = 0
        async with http.stream("POST", url + "/v1/completions", json=body) as r:
            r.raise_for_status()
            async for line in r.aiter_lines():
                if line.startswith("data: {"):
                    chunk = json.loads(line[6:])
                    if chunk["choices"]:
                        chunks += 1
                    else:
                        tokens = chunk["usage"]["completion_tokens"]
        return chunks, tokens

    limits = httpx.Limits(max_connections=streams, max_keepalive_connections=streams)
    async with httpx.AsyncClient(timeout=600, limits=limits) as http:
        res = await asyncio.gather(*(one(http) for _ in range(streams)))
    return sum(c for c, _ in res), sum(t for _, t in res)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--streams", type=int, default=256)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--tokenizer", default="default", help="where the tokenizer comes from (a model path)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        model = tiny_model(Path(d), args.tokenizer)
        server = ServerProcess("--model", str(model), "--max-num-seqs", str(args.streams), "--max-num-batched-tokens",
                               "16384", "--num-blocks", str(args.streams * 16 + 64))
        url = server.url
        try:
            engine = httpx.get(url + "/stats").json()["engine_pid"]
            asyncio.run(load(url, min(16, args.streams), 8))  # warm-up
            print(f"{'round':>5} {'api us/tok':>10} {'engine us/tok':>13} {'chunks':>7} {'tokens':>7} {'tok/s':>7}")
            for r in range(args.rounds):
                a0, e0, t0 = cpu_s(server.proc.pid), cpu_s(engine), time.perf_counter()
                chunks, tokens = asyncio.run(load(url, args.streams, args.max_tokens))
                a1, e1, t1 = cpu_s(server.proc.pid), cpu_s(engine), time.perf_counter()
                print(f"{r:>5} {(a1 - a0) / tokens * 1e6:>10.1f} {(e1 - e0) / tokens * 1e6:>13.1f} {chunks:>7} "
                      f"{tokens:>7} {tokens / (t1 - t0):>7.0f}", flush=True)
        finally:
            server.stop()


if __name__ == "__main__":
    main()
