"""Sampler: grammar mask -> logit bias and min_tokens -> penalties -> temperature -> top-k / top-p / min-p -> draw, with per-request seeds.

Draws use the exponential race (``argmax(p / E)``, ``E ~ Exp(1)``), an exact sample from ``p``,
so a seeded row needs only its own noise vector and is independent of the rest of the batch.
Logprobs are those of the raw model distribution (before penalties and temperature), as vLLM v1.

Everything runs on the logits' device, noise included (the generators live there), with the
per-row parameters sent by :func:`~kairos.worker.h2d.h2d`: on a GPU :meth:`Sampler.sample`
queues kernels and never waits, and a step waits once, when :meth:`Sampler.to_host` reads the
token ids (then the logprobs, already computed, in the same wait).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from kairos.wire.sampling_params import SamplingParams
from kairos.worker.h2d import HostCopy, d2h, h2d

_WORD = 32  # tokens per int32 word of a grammar's bitmask


@dataclass
class SamplingRow:
    params: SamplingParams
    generator: torch.Generator | None
    prompt_token_ids: Sequence[int] | np.ndarray  # (read by the repetition penalty only: may be the distinct ids)
    output_token_ids: list[int]
    suppress: tuple[int, ...] = ()  # token ids this row must not sample (min_tokens not reached)
    matcher: Any = None  # structured output: the sequence's llguidance matcher, at its last token

    @property
    def biased(self) -> bool:
        # (a constrained row's suppressed tokens are taken out of its grammar mask: apply_grammar)
        return bool(self.params.logit_bias or (self.suppress and self.matcher is None))


@dataclass
class SamplerOutput:
    token_ids: list[int]
    # per row: None, or (sampled token logprob, [(token id, logprob)] top-N)
    logprobs: list[tuple[float, list[tuple[int, float]]] | None]


@dataclass
class DeviceSample:
    """What :meth:`Sampler.sample` leaves on the device for one step."""

    token_ids: torch.Tensor  # [S] long
    logprob_rows: list[int]  # rows that asked for logprobs
    chosen: torch.Tensor | None  # [len(logprob_rows)] float32: logprob of the sampled token
    top_v: torch.Tensor | None  # [len(logprob_rows), k] float32, k = the largest top-N asked
    top_i: torch.Tensor | None  # [len(logprob_rows), k] long
    host: HostCopy | None = None  # the above on their way to the host (set by Sampler.sample)


@dataclass
class PromptLogprobs:
    """Logprobs of prompt tokens found by a step (:func:`prompt_logprobs`), on their way to the host."""

    host: HostCopy  # [E] logprob of each token, [E] its rank, then [E, k] top logprobs and [E, k] top ids (k > 0)
    spans: list  # (sequence, lo, hi): its positions lo..hi-1, rows in order

    def rows(self) -> list[tuple[float, int, list[tuple[int, float]]]]:
        """Per position: (the next token's logprob, its rank, [(token id, logprob)] top-k)."""
        chosen, rank, *top = (t.tolist() for t in self.host.wait())
        tops = [list(zip(i, v)) for v, i in zip(*top)] if top else [[] for _ in chosen]
        return list(zip(chosen, rank, tops))


def prompt_logprobs(compute_logits: Callable[[torch.Tensor], torch.Tensor], hidden: torch.Tensor,
                    targets: torch.Tensor, k: int, spans: list, rows_at_once: int = 256) -> PromptLogprobs:
    """For each row of ``hidden`` ``[E, H]`` (a prompt position), the raw logprob of ``targets[e]``
    (the prompt's next token), its rank (the tokens at least as likely, itself included) and the
    top ``k``; ``spans``: whose positions the rows are (:class:`PromptLogprobs`).
    ``rows_at_once`` bounds the ``[rows, V]`` float32 logits held at once (a 2k-token chunk of a
    152k vocabulary would be 1.2 GB)."""
    parts: list[list[torch.Tensor]] = []
    for a in range(0, hidden.shape[0], rows_at_once):
        lp = compute_logits(hidden[a : a + rows_at_once]).log_softmax(dim=-1)  # [r, V]
        chosen = lp.gather(1, targets[a : a + rows_at_once, None])  # [r, 1]
        rank = (lp >= chosen).sum(dim=-1)  # (as vLLM's: a tie ranks below, so a bfloat16 model's ties count)
        parts.append([chosen.squeeze(1), rank, *(lp.topk(k, dim=-1) if k else ())])
    return PromptLogprobs(d2h([torch.cat(col) for col in zip(*parts)]), spans)


class Sampler:
    def __init__(self, device: torch.device, seed: int):
        self.device = device
        self.generator = self.new_generator(seed)  # for unseeded rows

    def new_generator(self, seed: int) -> torch.Generator:
        """A generator on the sampling device: a seeded request draws its noise from its own."""
        return torch.Generator(device=self.device).manual_seed(seed)

    def __call__(self, logits: torch.Tensor, rows: list[SamplingRow]) -> SamplerOutput:
        """``logits``: float32 ``[S, V]``, one row per entry of ``rows``."""
        return self.to_host(self.sample(logits, rows), rows)

    def sample(self, logits: torch.Tensor, rows: list[SamplingRow]) -> DeviceSample:
        """Token ids (and logprobs) of a step, left on the logits' device: no host sync."""
        raw = logits
        dev = logits.device
        if any(r.matcher is not None for r in rows):
            logits = apply_grammar(logits, [r.matcher for r in rows], [r.suppress for r in rows])
        if any(r.biased for r in rows):
            logits = apply_bias(logits if logits is not raw else logits.clone(), rows)
        if any(r.params.has_penalties for r in rows):
            logits = apply_penalties(logits if logits is not raw else logits.clone(), rows)
        token_ids = logits.argmax(dim=-1)
        random_rows = [i for i, r in enumerate(rows) if not r.params.greedy]
        if random_rows:
            idx = h2d(random_rows, dev, torch.long)
            probs = processed_probs(logits.index_select(0, idx), [rows[i].params for i in random_rows])
            noise = torch.empty_like(probs)
            unseeded = [j for j, i in enumerate(random_rows) if rows[i].generator is None]
            if len(unseeded) == len(random_rows):
                noise.exponential_(generator=self.generator)
            elif unseeded:
                draws = torch.empty((len(unseeded), probs.shape[1]), device=dev).exponential_(generator=self.generator)
                noise.index_copy_(0, h2d(unseeded, dev, torch.long), draws)
            for j, i in enumerate(random_rows):
                if rows[i].generator is not None:
                    noise[j].exponential_(generator=rows[i].generator)
            token_ids.index_copy_(0, idx, (probs / noise).argmax(dim=-1))
        want = [i for i, r in enumerate(rows) if r.params.logprobs is not None]
        if not want:
            out = DeviceSample(token_ids, [], None, None, None)
        else:
            widx = h2d(want, dev, torch.long)
            lp = raw.index_select(0, widx).log_softmax(dim=-1)
            chosen = lp.gather(1, token_ids.index_select(0, widx).unsqueeze(1)).squeeze(1)
            k = max(rows[i].params.logprobs for i in want)
            top_v, top_i = lp.topk(k, dim=-1) if k else (None, None)
            out = DeviceSample(token_ids, want, chosen, top_v, top_i)
        out.host = d2h([t for t in (out.token_ids, out.chosen, out.top_v, out.top_i) if t is not None])
        return out

    @staticmethod
    def to_host(out: DeviceSample, rows: list[SamplingRow]) -> SamplerOutput:
        ids, *rest = out.host.wait()  # the step's one wait for the device
        ids = ids.tolist()
        logprobs: list[tuple[float, list[tuple[int, float]]] | None] = [None] * len(rows)
        if out.logprob_rows:
            chosen = rest[0].tolist()
            top_v, top_i = (rest[1].tolist(), rest[2].tolist()) if out.top_v is not None else (None, None)
            for j, i in enumerate(out.logprob_rows):
                n = rows[i].params.logprobs
                top = list(zip(top_i[j][:n], top_v[j][:n])) if n else []
                logprobs[i] = (chosen[j], top)
        return SamplerOutput(ids, logprobs)


def apply_grammar(logits: torch.Tensor, matchers: list[Any], suppress: list[tuple[int, ...]] | None = None
                  ) -> torch.Tensor:
    """``logits`` [S, V] with every token a row's matcher does not allow now set to -inf, as a new
    tensor. ``matchers``: one per row, None for an unconstrained row. ``suppress``: per row, tokens
    to take out too (``min_tokens``), unless that leaves none: then the grammar wins."""
    rows = [i for i, m in enumerate(matchers) if m is not None]
    words = (logits.shape[1] + _WORD - 1) // _WORD
    bitmask = torch.empty((len(rows), words), dtype=torch.int32)  # [R, W], bit b of word w: token 32w + b
    for j, i in enumerate(rows):
        # (what llguidance.torch.fill_next_token_bitmask does; importing that module costs 2 s of torch.compile set-up)
        matchers[i].unsafe_compute_mask_ptr(bitmask[j].data_ptr(), words * 4)
        if suppress and suppress[i]:
            _take_out(bitmask[j], suppress[i])
    dev, vocab = logits.device, logits.shape[1]
    allowed = unpack_bits(bitmask, vocab) if dev.type == "cpu" else unpack_bits_on(h2d(bitmask, dev), vocab)
    if len(rows) == logits.shape[0]:
        return torch.where(allowed, logits, float("-inf"))
    idx = h2d(rows, dev, torch.long)
    return logits.index_copy(0, idx, torch.where(allowed, logits.index_select(0, idx), float("-inf")))


def _take_out(row: torch.Tensor, tokens: tuple[int, ...]) -> None:
    """Clear ``tokens``' bits in one bitmask row [W] int32, unless no bit would be left."""
    words = row.numpy().view(np.uint32)  # (unsigned: bit 31 like the rest; numpy scalars, not torch ops)
    kept = words.copy()
    for t in tokens:
        if t < _WORD * len(kept):
            kept[t // _WORD] &= ~np.uint32(1 << (t % _WORD))
    if kept.any():
        words[:] = kept


def unpack_bits(bitmask: torch.Tensor, vocab: int) -> torch.Tensor:
    """[R, W] int32 on the CPU -> [R, vocab] bool (numpy's unpackbits: 3x the shifts' speed there)."""
    bytes_ = bitmask.numpy().view(np.uint8)  # (little-endian words: byte k of word w holds tokens 32w + 8k ...)
    return torch.from_numpy(np.unpackbits(bytes_, axis=1, bitorder="little")[:, :vocab]).bool()


def unpack_bits_on(bitmask: torch.Tensor, vocab: int) -> torch.Tensor:
    """[R, W] int32 on any device -> [R, vocab] bool, on that device (by bytes: a [R, 4W, 8] uint8
    intermediate, a byte per token)."""
    bits = torch.arange(8, device=bitmask.device, dtype=torch.uint8)
    by_byte = bitmask.view(torch.uint8)  # [R, 4W] (little-endian words, as on every CUDA host)
    return ((by_byte.unsqueeze(-1) >> bits) & 1).reshape(bitmask.shape[0], -1)[:, :vocab].bool()


def apply_bias(logits: torch.Tensor, rows: list[SamplingRow]) -> torch.Tensor:
    """Add each row's logit_bias and set its suppressed tokens to -inf, in one scatter."""
    entries = [(i, t, b) for i, r in enumerate(rows)
               for t, b in r.params.logit_bias + tuple((t, float("-inf")) for t in r.suppress if r.matcher is None)]
    r_idx, t_idx, vals = zip(*entries)
    dev = logits.device
    index = h2d([r_idx, t_idx], dev, torch.long)  # [2, N]: rows, tokens (one copy)
    return logits.index_put_((index[0], index[1]), h2d(list(vals), dev, logits.dtype), accumulate=True)


def apply_penalties(logits: torch.Tensor, rows: list[SamplingRow]) -> torch.Tensor:
    """Repetition penalty (HF/vLLM: prompt and output tokens), presence and frequency (output only),
    for every row that has them at once: the logits of the tokens a row has seen are gathered,
    penalised and put back, in a few kernels and two host-to-device copies a step, however many
    rows (one row at a time was ~6 kernels and copies a row). Only the counts are ``[P, V]``."""
    pen = [i for i, r in enumerate(rows) if r.params.has_penalties]
    dev, vocab = logits.device, logits.shape[1]
    rep = [j for j, i in enumerate(pen) if rows[i].params.repetition_penalty != 1.0]
    cnt = [j for j, i in enumerate(pen) if rows[i].params.presence_penalty or rows[i].params.frequency_penalty]
    outs = [np.asarray(rows[i].output_token_ids, dtype=np.int64) for i in pen]
    # the (row among pen, token id) pairs: every token a repetition-penalised row has seen (prompt
    # and output: a token seen twice is one pair written twice, with one value), then every output
    # token of a counting row; ints: [P] rows of pen, [2, R] seen pairs, [2, C] counted pairs
    seen = [np.asarray(rows[pen[j]].prompt_token_ids, dtype=np.int64) for j in rep]
    seen = [np.concatenate([a, outs[j]]) for a, j in zip(seen, rep)]
    counted = [outs[j] for j in cnt]
    pairs = [np.asarray(pen, dtype=np.int64),
             np.repeat(np.asarray(rep, dtype=np.int64), [len(a) for a in seen]), *seen,
             np.repeat(np.asarray(cnt, dtype=np.int64), [len(a) for a in counted]), *counted]
    n_seen, n_counted = sum(len(a) for a in seen), sum(len(a) for a in counted)
    ints = h2d(np.concatenate(pairs), dev, torch.long)
    rows_t = ints[: len(pen)]
    seen_t = ints[len(pen): len(pen) + 2 * n_seen].view(2, n_seen)
    counted_t = ints[len(pen) + 2 * n_seen:].view(2, n_counted)
    knobs = h2d([[rows[i].params.repetition_penalty, rows[i].params.presence_penalty, rows[i].params.frequency_penalty]
                 for i in pen], dev, logits.dtype)  # [P, 3]
    if n_seen:
        at = (rows_t[seen_t[0]], seen_t[1])
        vals, penalty = logits[at], knobs[seen_t[0], 0]
        logits.index_put_(at, torch.where(vals > 0, vals / penalty, vals * penalty))
    if n_counted:
        # (index_add_ of ones: exact in any order, no host sync on CUDA; bincount reads the ids'
        # range back to size its output, and index_put_ accumulating did in older torch)
        counts = torch.zeros((len(pen), vocab), dtype=logits.dtype, device=dev)
        counts.view(-1).index_add_(0, counted_t[0] * vocab + counted_t[1],
                                   torch.ones(n_counted, dtype=logits.dtype, device=dev))
        c = counts[counted_t[0], counted_t[1]]
        at = (rows_t[counted_t[0]], counted_t[1])
        presence, frequency = knobs[counted_t[0], 1], knobs[counted_t[0], 2]
        logits.index_put_(at, logits[at] - (frequency * c + presence * (c > 0)))
    return logits


def processed_probs(logits: torch.Tensor, params: list[SamplingParams]) -> torch.Tensor:
    """Temperature, then top-k, top-p, min-p masks; returns probabilities ``[R, V]``."""
    dev = logits.device
    temps = h2d([p.temperature for p in params], dev, torch.float32).unsqueeze(1)
    logits = logits / temps
    top_k = [p.top_k if p.top_k > 0 else logits.shape[1] for p in params]
    top_p = [p.top_p if p.top_p < 1.0 else float("inf") for p in params]  # inf: no cut, immune to rounding
    if any(k < logits.shape[1] for k in top_k) or any(p < 1.0 for p in top_p):
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        ranks = torch.arange(logits.shape[1], device=dev).unsqueeze(0)
        drop = ranks >= h2d(top_k, dev, torch.long).unsqueeze(1)
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        sp = sorted_logits.softmax(dim=-1)
        # drop a token when the tokens ranked above it already reach top_p (the first always stays)
        drop = (sp.cumsum(dim=-1) - sp) >= h2d(top_p, dev, torch.float32).unsqueeze(1)
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(1, order, sorted_logits)
    probs = logits.softmax(dim=-1)
    if any(p.min_p > 0 for p in params):  # (decided on the host: a tensor test would wait for the device)
        min_p = h2d([p.min_p for p in params], dev, torch.float32).unsqueeze(1)
        probs = probs.masked_fill(probs < min_p * probs.max(dim=-1, keepdim=True).values, 0.0)
    return probs
