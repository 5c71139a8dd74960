"""Penalties of a batch: the batched kernels (``sampler.apply_penalties``) vs one row at a time
(the loop they replaced, kept here as the baseline), side by side in one run.

    python benchmarks/penalties.py [--rows 1,64,256] [--vocab 49152] [--prompt 1000] [--output 256]

Each row has a repetition, presence and frequency penalty, a prompt of ``--prompt`` tokens and
``--output`` tokens of output, as ``EngineCore`` hands them to the sampler: the loop got the
prompt as a list, the batched kernels get its distinct ids (``Sequence.prompt_set``, made once). Prints the best of
``--repeat`` times per call and the ratio. On a GPU (``--device cuda``) the loop's cost is its
~6 kernel launches and host-to-device copies per row; on a CPU it is the work itself.
"""

from __future__ import annotations

import argparse
import random
import time
from dataclasses import replace

import numpy as np
import torch

from kairos.wire.sampling_params import SamplingParams
from kairos.worker.h2d import h2d
from kairos.worker.sampler import SamplingRow, apply_penalties


def per_row(logits: torch.Tensor, rows: list[SamplingRow]) -> torch.Tensor:
    """The loop apply_penalties replaced (the per-row Python loop it was before)."""
    vocab = logits.shape[1]
    for i, r in enumerate(rows):
        p = r.params
        if p.repetition_penalty != 1.0:
            seen = sorted(set(r.prompt_token_ids) | set(r.output_token_ids))
            if seen:
                seen = h2d(seen, logits.device, torch.long)
                vals = logits[i, seen]
                logits[i, seen] = torch.where(vals > 0, vals / p.repetition_penalty, vals * p.repetition_penalty)
        if r.output_token_ids and (p.presence_penalty or p.frequency_penalty):
            ids = h2d(r.output_token_ids, logits.device, torch.long)
            counts = torch.zeros(vocab, dtype=logits.dtype, device=logits.device).index_add_(
                0, ids, torch.ones(len(r.output_token_ids), dtype=logits.dtype, device=logits.device))
            logits[i] -= p.frequency_penalty * counts + p.presence_penalty * (counts > 0)
    return logits


def best(fn, logits: torch.Tensor, rows: list[SamplingRow], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        x = logits.clone()
        if x.is_cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn(x, rows)
        if x.is_cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default="1,64,256")
    ap.add_argument("--vocab", type=int, default=49152)
    ap.add_argument("--prompt", type=int, default=1000)
    ap.add_argument("--output", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    dev, rnd = torch.device(args.device), random.Random(0)
    params = SamplingParams(repetition_penalty=1.2, presence_penalty=0.5, frequency_penalty=0.3)
    print(f"{'rows':>5} {'per row ms':>10} {'batched ms':>10} {'per row / batched':>17}")
    for n in map(int, args.rows.split(",")):
        rows = [SamplingRow(params, None, [rnd.randrange(args.vocab) for _ in range(args.prompt)],
                            [rnd.randrange(args.vocab) for _ in range(args.output)]) for _ in range(n)]
        sets = [replace(r, prompt_token_ids=np.unique(np.asarray(r.prompt_token_ids, dtype=np.int64))) for r in rows]
        logits = torch.randn(n, args.vocab, device=dev)
        assert torch.equal(apply_penalties(logits.clone(), sets), per_row(logits.clone(), rows))
        old, new = best(per_row, logits, rows, args.repeat), best(apply_penalties, logits, sets, args.repeat)
        print(f"{n:>5} {old * 1e3:>10.2f} {new * 1e3:>10.2f} {old / new:>17.2f}", flush=True)


if __name__ == "__main__":
    main()
