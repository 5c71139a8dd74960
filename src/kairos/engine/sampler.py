"""Sampler: penalties -> temperature -> top-k / top-p / min-p -> draw, with per-request seeds.

Draws use the exponential race (``argmax(p / E)``, ``E ~ Exp(1)``), an exact sample from ``p``,
so a seeded row needs only its own noise vector and is independent of the rest of the batch.
Logprobs are those of the raw model distribution (before penalties and temperature), as vLLM v1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kairos.engine.sampling_params import SamplingParams


@dataclass
class SamplingRow:
    params: SamplingParams
    generator: torch.Generator | None
    prompt_token_ids: list[int]
    output_token_ids: list[int]


@dataclass
class SamplerOutput:
    token_ids: list[int]
    # per row: None, or (sampled token logprob, [(token id, logprob)] top-N)
    logprobs: list[tuple[float, list[tuple[int, float]]] | None]


class Sampler:
    def __init__(self, generator: torch.Generator):
        self.generator = generator  # for unseeded rows

    def __call__(self, logits: torch.Tensor, rows: list[SamplingRow]) -> SamplerOutput:
        """``logits``: float32 ``[S, V]``, one row per entry of ``rows``."""
        raw = logits
        if any(r.params.has_penalties for r in rows):
            logits = apply_penalties(logits.clone(), rows)
        token_ids = logits.argmax(dim=-1)
        random_rows = [i for i, r in enumerate(rows) if not r.params.greedy]
        if random_rows:
            idx = torch.tensor(random_rows, device=logits.device)
            probs = processed_probs(logits[idx], [rows[i].params for i in random_rows])
            noise = torch.empty_like(probs)
            unseeded = [j for j, i in enumerate(random_rows) if rows[i].generator is None]
            if unseeded:
                noise[unseeded] = torch.empty((len(unseeded), probs.shape[1])).exponential_(generator=self.generator).to(noise.device)
            for j, i in enumerate(random_rows):
                if rows[i].generator is not None:
                    noise[j] = torch.empty(probs.shape[1]).exponential_(generator=rows[i].generator).to(noise.device)
            token_ids[idx] = (probs / noise).argmax(dim=-1)
        ids = token_ids.tolist()
        return SamplerOutput(ids, compute_logprobs(raw, ids, rows))


def apply_penalties(logits: torch.Tensor, rows: list[SamplingRow]) -> torch.Tensor:
    """Repetition penalty (HF/vLLM: prompt and output tokens), presence and frequency (output only)."""
    vocab = logits.shape[1]
    for i, r in enumerate(rows):
        p = r.params
        if not p.has_penalties:
            continue
        if p.repetition_penalty != 1.0:
            seen = torch.tensor(sorted(set(r.prompt_token_ids) | set(r.output_token_ids)), dtype=torch.long, device=logits.device)
            if seen.numel():
                vals = logits[i, seen]
                logits[i, seen] = torch.where(vals > 0, vals / p.repetition_penalty, vals * p.repetition_penalty)
        if r.output_token_ids and (p.presence_penalty or p.frequency_penalty):
            counts = torch.bincount(torch.tensor(r.output_token_ids, device=logits.device), minlength=vocab)[:vocab]
            logits[i] -= p.frequency_penalty * counts + p.presence_penalty * (counts > 0)
    return logits


def processed_probs(logits: torch.Tensor, params: list[SamplingParams]) -> torch.Tensor:
    """Temperature, then top-k, top-p, min-p masks; returns probabilities ``[R, V]``."""
    dev = logits.device
    temps = torch.tensor([p.temperature for p in params], device=dev).unsqueeze(1)
    logits = logits / temps
    top_k = [p.top_k if p.top_k > 0 else logits.shape[1] for p in params]
    top_p = [p.top_p if p.top_p < 1.0 else float("inf") for p in params]  # inf: no cut, immune to rounding
    if any(k < logits.shape[1] for k in top_k) or any(p < 1.0 for p in top_p):
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        ranks = torch.arange(logits.shape[1], device=dev).unsqueeze(0)
        drop = ranks >= torch.tensor(top_k, device=dev).unsqueeze(1)
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        sp = sorted_logits.softmax(dim=-1)
        # drop a token when the tokens ranked above it already reach top_p (the first always stays)
        drop = (sp.cumsum(dim=-1) - sp) >= torch.tensor(top_p, device=dev).unsqueeze(1)
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(1, order, sorted_logits)
    probs = logits.softmax(dim=-1)
    min_p = torch.tensor([p.min_p for p in params], device=dev).unsqueeze(1)
    if (min_p > 0).any():
        probs = probs.masked_fill(probs < min_p * probs.max(dim=-1, keepdim=True).values, 0.0)
    return probs


def compute_logprobs(raw: torch.Tensor, ids: list[int], rows: list[SamplingRow]):
    want = [i for i, r in enumerate(rows) if r.params.logprobs is not None]
    out: list[tuple[float, list[tuple[int, float]]] | None] = [None] * len(rows)
    if not want:
        return out
    lp = raw[want].log_softmax(dim=-1)
    k = max(rows[i].params.logprobs for i in want)
    top_v, top_i = lp.topk(k, dim=-1) if k else (None, None)
    for j, i in enumerate(want):
        n = rows[i].params.logprobs
        top = list(zip(top_i[j, :n].tolist(), top_v[j, :n].tolist())) if n else []
        out[i] = (lp[j, ids[i]].item(), top)
    return out
