"""Sampler: seeded reproducibility, masks that never let an excluded token through, penalties, logprobs."""

from __future__ import annotations

import math

import pytest
import torch

from kairos.engine.sampler import Sampler, SamplingRow, apply_penalties
from kairos.engine.sampling_params import SamplingParams

from engine_helpers import make_engine, prompts_of, run

PROBS = torch.tensor([[0.5, 0.3, 0.15, 0.05]])


def draw(params: SamplingParams, logits: torch.Tensor, n: int = 400) -> set[int]:
    sampler = Sampler(torch.device("cpu"), 0)
    rows = [SamplingRow(params, None, [], [])] * n
    return set(sampler(logits.expand(n, -1).contiguous(), rows).token_ids)


def test_top_k_never_emits_outside_k():
    logits = torch.linspace(0, 3, 50).unsqueeze(0)  # token 49 best
    assert draw(SamplingParams(temperature=2.0, top_k=3), logits) == {47, 48, 49}


def test_top_p_keeps_smallest_set_reaching_p():
    assert draw(SamplingParams(top_p=0.8), PROBS.log()) == {0, 1}
    assert draw(SamplingParams(top_p=0.81), PROBS.log()) == {0, 1, 2}


def test_min_p_drops_tokens_below_fraction_of_best():
    assert draw(SamplingParams(min_p=0.35), PROBS.log()) == {0, 1}  # 0.35 * 0.5 = 0.175 > 0.15
    assert draw(SamplingParams(), PROBS.log()) == {0, 1, 2, 3}


def test_greedy_is_argmax_and_temperature_zero_ignores_masks():
    assert draw(SamplingParams(temperature=0.0, top_k=2), PROBS.log(), n=3) == {0}


def test_penalties_exact_values():
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0]])
    row = SamplingRow(SamplingParams(repetition_penalty=2.0, presence_penalty=0.5, frequency_penalty=0.25),
                      None, prompt_token_ids=[0], output_token_ids=[1, 1, 3])
    out = apply_penalties(logits.clone(), [row])[0].tolist()
    # token 0: prompt only -> 2/2; token 1: -1*2 - 0.5 - 2*0.25; token 2 untouched; token 3: 3/2 - 0.5 - 0.25
    assert out == pytest.approx([1.0, -3.0, 0.5, 0.75])


def test_logprobs_are_raw_log_softmax():
    logits = torch.tensor([[1.0, 2.0, 0.5, -1.0]])
    sampler = Sampler(torch.device("cpu"), 0)
    out = sampler(logits, [SamplingRow(SamplingParams(temperature=0.0, logprobs=2, repetition_penalty=1.5), None, [1], [])])
    expected = logits.log_softmax(-1)[0]
    lp, top = out.logprobs[0]
    assert out.token_ids == [1]  # 2.0 / 1.5 still beats 1.0: penalties move the draw, not the logprobs
    assert lp == pytest.approx(expected[out.token_ids[0]].item())
    assert [t for t, _ in top] == [1, 0]
    assert top[0][1] == pytest.approx(expected[1].item())
    assert math.isclose(sum(math.exp(v) for v in expected.tolist()), 1.0, rel_tol=1e-6)


def test_seeded_requests_reproducible_across_batches(tiny_llama):
    engine = make_engine(tiny_llama[1])
    p = prompts_of([7, 12, 20])
    seeded = SamplingParams(max_tokens=12, temperature=1.0, seed=1234, ignore_eos=True)
    other = SamplingParams(max_tokens=12, temperature=1.0, ignore_eos=True)
    alone = run(engine, {0: [("a", p[0], seeded)]})[("a", 0)]
    crowd = run(engine, {0: [("x", p[1], other), ("b", p[0], seeded)], 2: [("y", p[2], other)]})
    assert crowd[("b", 0)] == alone
    different = run(engine, {0: [("c", p[0], SamplingParams(max_tokens=12, temperature=1.0, seed=99, ignore_eos=True))]})
    assert different[("c", 0)] != alone
    # n > 1: sibling i uses seed + i, so the siblings differ and each is reproducible
    n3 = run(engine, {0: [("n", p[0], SamplingParams(max_tokens=12, temperature=1.0, seed=1234, n=3, ignore_eos=True))]})
    assert n3[("n", 0)] == alone
    assert len({tuple(n3[("n", i)][0]) for i in range(3)}) == 3
