"""prompt_logprobs (vLLM's): each prompt token's logprob, rank and top-N given the tokens before it
equal the reference model's, whether the prompt runs in one step or in chunks, beside a cached
copy of itself, after a preemption, with siblings, with steps launched ahead."""

from __future__ import annotations

import pytest
import torch

from kairos import LLM, SamplingParams

from engine_helpers import GREEDY, assert_pool_whole, prompts_of


def reference(model, prompt: list[int], k: int) -> list[tuple[int, float, int, list[int]]]:
    """Per prompt token after the first: (token id, its logprob, its rank, the top-k ids), by HF."""
    with torch.no_grad():
        lp = model(torch.tensor([prompt])).logits[0].float().log_softmax(-1)  # [P, V]
    out = []
    for p in range(len(prompt) - 1):
        t = prompt[p + 1]
        out.append((t, lp[p, t].item(), int((lp[p] >= lp[p, t]).sum()), lp[p].topk(k).indices.tolist() if k else []))
    return out


def check(model, prompt: list[int], got, k: int) -> None:
    assert (got[0].token_id, got[0].logprob, got[0].top, len(got)) == (prompt[0], None, [], len(prompt))
    ref = reference(model, prompt, k)
    assert [g.token_id for g in got[1:]] == [t for t, *_ in ref]
    assert [g.logprob for g in got[1:]] == pytest.approx([lp for _, lp, *_ in ref], abs=1e-4)
    # (ranks and top ids from float noise apart only where two logprobs tie to 1e-4: a random model has none)
    assert [g.rank for g in got[1:]] == [r for *_, r, _ in ref]
    assert [[t for t, *_ in g.top] for g in got[1:]] == [top for *_, top in ref]
    for g in got[1:]:
        assert [v for _, _, v, _ in g.top] == sorted((v for _, _, v, _ in g.top), reverse=True)


@pytest.mark.parametrize("async_scheduling", [False, True])
@pytest.mark.parametrize("budget", [512, 8])  # the prompts in one step, or in chunks of up to 8 tokens
def test_prompt_logprobs_equal_the_reference(tiny_llama, async_scheduling, budget):
    model, path = tiny_llama
    llm = LLM(str(path), device="cpu", async_scheduling=async_scheduling, max_num_batched_tokens=budget,
              block_size=4, max_model_len=128)
    prompts = prompts_of([23, 1, 9, 17])
    params = [SamplingParams(max_tokens=4, prompt_logprobs=3, **GREEDY), SamplingParams(max_tokens=3, prompt_logprobs=0, **GREEDY),
              SamplingParams(max_tokens=5, **GREEDY), SamplingParams(max_tokens=2, n=2, prompt_logprobs=5, **GREEDY)]
    outs = llm.generate(prompts, params)
    check(model, prompts[0], outs[0].prompt_logprobs, 3)
    assert [p.logprob for p in outs[1].prompt_logprobs] == [None]  # (one token: nothing predicts it)
    assert outs[2].prompt_logprobs is None
    check(model, prompts[3], outs[3].prompt_logprobs, 5)
    plain = llm.generate(prompts, [SamplingParams(max_tokens=p.max_tokens, n=p.n, **GREEDY) for p in params])
    assert [[o.token_ids for o in r.outputs] for r in outs] == [[o.token_ids for o in r.outputs] for r in plain]
    assert_pool_whole(llm.engine)


def test_a_cached_prompt_is_computed_again_for_its_logprobs(tiny_llama):
    model, path = tiny_llama
    llm = LLM(str(path), device="cpu", block_size=4, max_model_len=128)
    prompt = prompts_of([21])[0]
    llm.generate([prompt], SamplingParams(max_tokens=2, **GREEDY))  # its blocks go into the prefix cache
    hits = llm.engine.kv.hit_tokens
    out = llm.generate([prompt], SamplingParams(max_tokens=2, prompt_logprobs=2, **GREEDY))[0]
    assert llm.engine.kv.hit_tokens == hits  # not read from the cache: the cache keeps no logits
    check(model, prompt, out.prompt_logprobs, 2)
    again = llm.generate([prompt], SamplingParams(max_tokens=2, **GREEDY))[0]
    assert llm.engine.kv.hit_tokens == hits + 20 and again.outputs[0].token_ids == out.outputs[0].token_ids
    assert_pool_whole(llm.engine)


@pytest.mark.parametrize("async_scheduling", [False, True])
def test_a_preempted_request_reports_its_prompt_logprobs_once(tiny_llama, async_scheduling):
    """A pool too small for both: one is preempted and computes its prompt again."""
    model, path = tiny_llama
    llm = LLM(str(path), device="cpu", async_scheduling=async_scheduling, block_size=4, num_blocks=14,
              max_model_len=64, prefix_cache=False)
    preempted = []
    preempt = llm.engine.scheduler._preempt
    llm.engine.scheduler._preempt = lambda seq, out: preempted.append(seq.num_computed) or preempt(seq, out)
    prompts = prompts_of([13, 15])
    outs = llm.generate(prompts, [SamplingParams(max_tokens=24, prompt_logprobs=1, **GREEDY)] * 2)
    assert preempted and min(preempted) > 15  # (past its prompt: its first token, and the logprobs, were out)
    for prompt, out in zip(prompts, outs):
        check(model, prompt, out.prompt_logprobs, 1)
    assert_pool_whole(llm.engine)


def test_a_prompt_preempted_between_its_chunks_finds_each_logprob_once(tiny_llama):
    from kairos.sched.scheduler import SchedulerOutput
    from kairos.wire.outputs import EngineRequest

    from engine_helpers import make_engine

    model, path = tiny_llama
    engine = make_engine(path, max_num_batched_tokens=8, block_size=4, max_model_len=128)
    prompt = prompts_of([27])[0]
    engine.add_request(EngineRequest("a", prompt, SamplingParams(max_tokens=2, prompt_logprobs=2, **GREEDY)))
    seq = engine.requests["a"][0]
    assert engine.step() == [] and engine.step() == []  # two chunks of 8: positions 0..15 found
    assert (seq.num_computed, seq.num_prompt_logprobs, len(seq.prompt_logprobs)) == (16, 16, 16)
    engine.scheduler._preempt(seq, SchedulerOutput())  # its 16 tokens' blocks stay in the prefix cache
    outs = []
    while engine.has_unfinished():
        outs += engine.step()
    assert engine.kv.hit_tokens == 0  # (computed again from its start, not read from the cache)
    first = next(o for o in outs if o.new_token_ids)
    assert [o.prompt_logprobs is not None for o in outs if o.new_token_ids] == [True, False]
    check(model, prompt, [_as_logprob(prompt[0], None)] + [_as_logprob(p.token_id, p) for p in first.prompt_logprobs], 2)


def _as_logprob(token_id: int, p):
    from kairos.detok.output_processor import Logprob

    if p is None:
        return Logprob(token_id, "", None, [], [])
    return Logprob(token_id, "", p.logprob, [(t, "", v, []) for t, v in p.top], [], p.rank)


@pytest.mark.parametrize("async_scheduling", [False, True])
def test_a_prompt_of_the_whole_context_is_scored_by_one_token_past_it(tiny_llama, async_scheduling):
    """The last token sampled is never fed: a prompt of max_model_len may sample one (to score it),
    not two."""
    model, path = tiny_llama
    llm = LLM(str(path), device="cpu", async_scheduling=async_scheduling, block_size=4, max_model_len=24)
    prompt = prompts_of([24])[0]
    out = llm.generate([prompt], SamplingParams(max_tokens=1, prompt_logprobs=1, **GREEDY))[0]
    check(model, prompt, out.prompt_logprobs, 1)
    assert (len(out.outputs[0].token_ids), out.outputs[0].finish_reason) == (1, "length")
    with pytest.raises(ValueError, match="maximum context length is 24 tokens. However, you requested 26 tokens"):
        llm.generate([prompt], SamplingParams(max_tokens=2, **GREEDY))
    assert_pool_whole(llm.engine)
