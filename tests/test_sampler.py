"""Sampler: seeded reproducibility, masks that never let an excluded token through, penalties, logprobs."""

from __future__ import annotations

import math
import random

import pytest
import torch

from kairos import LLM
from kairos.wire.sampling_params import SamplingParams
from kairos.worker.sampler import Sampler, SamplingRow, apply_bias, apply_penalties

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


def test_penalties_of_many_rows_at_once_equal_each_row_alone():
    """Rows with and without penalties, empty outputs, repeated ids: the batched kernels give each
    row what the rule gives it alone (the plain loop below), bit for bit."""
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(7, 50, generator=gen) * 3
    rnd = random.Random(1)

    def ids(n: int) -> list[int]:
        return [rnd.randrange(50) for _ in range(n)]

    rows = [SamplingRow(SamplingParams(repetition_penalty=1.7), None, ids(9), ids(4)),
            SamplingRow(SamplingParams(), None, ids(5), ids(5)),  # no penalties: untouched
            SamplingRow(SamplingParams(presence_penalty=0.7, frequency_penalty=-0.4), None, ids(6), ids(12)),
            SamplingRow(SamplingParams(repetition_penalty=0.6, frequency_penalty=1.1), None, ids(3), []),
            SamplingRow(SamplingParams(repetition_penalty=1.2, presence_penalty=-1.5, frequency_penalty=0.3),
                        None, [], [4, 4, 4, 9]),
            SamplingRow(SamplingParams(frequency_penalty=2.0), None, [], []),
            SamplingRow(SamplingParams(repetition_penalty=1.3), None, ids(20), ids(20))]
    expected = logits.clone()
    for i, r in enumerate(rows):
        p, row = r.params, expected[i]
        if p.repetition_penalty != 1.0:
            for t in set(r.prompt_token_ids) | set(r.output_token_ids):
                row[t] = row[t] / p.repetition_penalty if row[t] > 0 else row[t] * p.repetition_penalty
        counts = torch.zeros(50)
        for t in r.output_token_ids:
            counts[t] += 1
        row -= p.frequency_penalty * counts + p.presence_penalty * (counts > 0)
    assert torch.equal(apply_penalties(logits.clone(), rows), expected)


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


def test_bias_adds_and_suppress_bans_exact_values():
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    rows = [SamplingRow(SamplingParams(logit_bias={3: -4.0, 1: 100.0}), None, [], []),
            SamplingRow(SamplingParams(), None, [], []),  # untouched in a batch with biased rows
            SamplingRow(SamplingParams(logit_bias={0: 7.5}), None, [], [], suppress=(0, 2))]
    out = apply_bias(logits.clone(), rows).tolist()
    inf = float("inf")
    assert out == [[2.0, 99.0, 0.5, -1.0], [1.0, 1.0, 1.0, 1.0], [-inf, 0.0, -inf, 0.0]]


def test_biased_logprobs_stay_raw_and_the_draw_moves():
    logits = torch.tensor([[1.0, 2.0, 0.5, -1.0]])
    out = Sampler(torch.device("cpu"), 0)(
        logits, [SamplingRow(SamplingParams(temperature=0.0, logprobs=1, logit_bias={2: 3.0}), None, [], [])])
    assert out.token_ids == [2]  # 0.5 + 3 beats 2.0
    assert out.logprobs[0][0] == pytest.approx(logits.log_softmax(-1)[0, 2].item())
    assert draw(SamplingParams(logit_bias={3: -100.0, 0: -100.0}), PROBS.log()) == {1, 2}


def hf_biased(model, prompt: list[int], bias: dict[int, float], max_new_tokens: int, **kw) -> list[int]:
    """Reference: HF greedy generate with ``sequence_bias`` (single tokens: OpenAI's logit_bias)."""
    ids = torch.tensor([prompt])
    kw.setdefault("eos_token_id", None)
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False,
                         pad_token_id=0, sequence_bias={(t,): b for t, b in bias.items()} or None, **kw)
    return out[0, len(prompt):].tolist()


def tiny_llm(path, async_scheduling: bool) -> tuple[LLM, list[int]]:
    """An LLM on the tiny model, and per launch how many steps were already in flight."""
    llm = LLM(str(path), device="cpu", async_scheduling=async_scheduling)
    seen: list[int] = []
    launch = llm.engine.launch
    llm.engine.launch = lambda: seen.append(len(llm.engine._in_flight)) or launch()
    return llm, seen


def outs(llm: LLM, prompts, params) -> list[tuple[list[int], str]]:
    return [(o.token_ids, o.finish_reason) for r in llm.generate(prompts, params) for o in r.outputs]


@pytest.mark.parametrize("async_scheduling", [False, True])
def test_logit_bias_greedy_equals_hf_per_row(tiny_llama, async_scheduling):
    model, path = tiny_llama
    llm, seen = tiny_llm(path, async_scheduling)
    p = prompts_of([9, 14, 5])
    free = [t for t, _ in outs(llm, p, SamplingParams(max_tokens=10, temperature=0.0, ignore_eos=True))]
    biases = [{free[0][0]: -100.0, free[0][1]: -100.0}, {}, {7: 4.0, 11: 6.0, free[2][3]: -2.5}]
    refs = [hf_biased(model, q, b, 10) for q, b in zip(p, biases)]
    assert refs[0] != free[0] and refs[2] != free[2] and refs[1] == free[1]  # the biases move the output
    got = outs(llm, p, [SamplingParams(max_tokens=10, temperature=0.0, ignore_eos=True, logit_bias=b) for b in biases])
    assert [t for t, _ in got] == refs
    assert (max(seen) == 1) is async_scheduling


@pytest.mark.parametrize("async_scheduling", [False, True])
def test_min_tokens_holds_back_eos_and_stop_token_ids(tiny_llama, async_scheduling):
    model, path = tiny_llama
    llm, seen = tiny_llm(path, async_scheduling)
    eos = 2  # the tiny Llama's EOS; a +100 bias makes it the greedy choice whenever it is allowed
    q = prompts_of([8])[0]
    params = dict(max_tokens=10, temperature=0.0, logit_bias={eos: 100.0})
    assert outs(llm, [q], SamplingParams(**params)) == [([eos], "stop")]
    held = outs(llm, [q, q], [SamplingParams(min_tokens=4, **params),
                              SamplingParams(min_tokens=4, n=2, seed=3, **params | {"temperature": 1.0})])
    ref = hf_biased(model, q, {eos: 100.0}, 10, min_new_tokens=4, eos_token_id=eos)
    assert len(ref) == 5 and ref[-1] == eos and eos not in ref[:4]
    assert held[0] == (ref, "stop")
    for toks, why in held[1:]:  # sampled siblings too: EOS exactly at token 5
        assert (len(toks), toks[-1], eos in toks[:4], why) == (5, eos, False, "stop")
    # a stop token id, and min_tokens == max_tokens: the length limit ends it
    stop = ref[0]
    d, e = outs(llm, [q, q], [SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True, min_tokens=2,
                                             stop_token_ids=(stop,), logit_bias={stop: 100.0}),
                              SamplingParams(min_tokens=10, **params)])
    assert d[0][2] == stop and stop not in d[0][:2] and len(d[0]) == 3
    assert (len(e[0]), eos in e[0], e[1]) == (10, False, "length")
    assert (max(seen) == 1) is async_scheduling


@pytest.mark.parametrize("async_scheduling", [False, True])
def test_repetition_penalty_greedy_equals_hf_in_a_batch(tiny_llama, async_scheduling):
    """HF's repetition penalty (prompt and output tokens), rows with and without it in one batch,
    n > 1 siblings sharing the parent's prompt ids."""
    model, path = tiny_llama
    llm, seen = tiny_llm(path, async_scheduling)
    p = prompts_of([9, 14, 5]) + [[7, 7, 7, 9, 9]]
    penalties = [1.8, 1.0, 0.5, 2.5]

    def hf(prompt, penalty):
        ids = torch.tensor([prompt])
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False,
                             pad_token_id=0, eos_token_id=None, repetition_penalty=penalty)
        return out[0, len(prompt):].tolist()

    refs = [hf(q, r) for q, r in zip(p, penalties)]
    assert refs[0] != hf(p[0], 1.0) and refs[2] != hf(p[2], 1.0)  # the penalties move the output
    got = outs(llm, p, [SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True, repetition_penalty=r, n=n)
                        for r, n in zip(penalties, (1, 1, 2, 1))])
    assert [t for t, _ in got] == [refs[0], refs[1], refs[2], refs[2], refs[3]]
    assert (max(seen) == 1) is async_scheduling
