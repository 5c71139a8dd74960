"""Speculative decoding by n-gram lookup: drafts come from the sequence's own history; verified
greedy outputs equal the reference token for token, with the draft cut by every limit (max_tokens,
the context, stop tokens, stop strings), beside rows that never draft (penalties), through
preemption and the prefix cache."""

from __future__ import annotations

import random

import pytest

from kairos import LLM, SamplingParams
from kairos.config import EngineConfig
from kairos.sched.speculative import NgramIndex

from conftest import hf_greedy
from engine_helpers import GREEDY, assert_pool_whole, prompts_of


@pytest.mark.parametrize("tokens,n_min,n_max,k,draft", [
    ([1, 2, 3, 9, 1, 2, 3], 2, 4, 3, [9, 1, 2]),  # "1 2 3" came before: what followed it
    ([1, 2, 3, 9, 1, 2, 3], 2, 4, 1, [9]),
    ([5, 1, 2, 7, 1, 2, 8, 1, 2], 2, 2, 2, [8, 1]),  # the latest earlier "1 2" (not the suffix itself)
    ([4, 2, 3, 6, 1, 2, 3, 7, 2, 3], 2, 3, 2, [7, 2]),  # no earlier "7 2 3": the latest "2 3"
    ([1, 2, 3, 4], 2, 4, 3, []),  # no repeat
    ([7, 7, 7], 2, 4, 4, [7]),  # overlapping: "7 7" at 0, then the 7 at 2
    ([3, 1, 2, 1, 2], 1, 4, 2, [1, 2]),  # "1 2" at 1: "1 2" follows
])
def test_find_draft(tokens, n_min, n_max, k, draft):
    assert NgramIndex(n_min, n_max).draft(tokens, k) == draft
    assert scan(tokens, n_min, n_max, k) == draft


def scan(tokens: list[int], n_min: int, n_max: int, k: int) -> list[int]:
    """The rule by brute force: the longest suffix first, its latest earlier start."""
    for n in range(min(n_max, len(tokens) - 1), n_min - 1, -1):
        starts = [s for s in range(len(tokens) - n) if tokens[s : s + n] == tokens[len(tokens) - n :]]
        if starts:
            return tokens[starts[-1] + n : starts[-1] + n + k]
    return []


@pytest.mark.parametrize("n_min,n_max", [(1, 1), (2, 4), (1, 5), (3, 3)])
def test_an_index_kept_up_to_date_drafts_as_a_scan_of_the_whole_history(n_min, n_max):
    rng = random.Random(n_min * 10 + n_max)
    for _ in range(20):
        vocab = rng.choice([2, 3, 5, 20])  # (small vocabularies repeat often)
        tokens = [rng.randrange(vocab) for _ in range(rng.randrange(1, 8))]
        index = NgramIndex(n_min, n_max)
        while len(tokens) < 120:  # grown by 1 to 5 tokens between lookups, as kept drafts grow it
            k = rng.randrange(1, 6)
            assert index.draft(tokens, k) == scan(tokens, n_min, n_max, k), tokens
            tokens += [rng.randrange(vocab) for _ in range(rng.randrange(1, 6))]



def test_a_long_history_is_indexed_a_bounded_share_a_lookup_drafting_nothing_meanwhile():
    tokens = [1, 2, 3, 9] + list(range(10, 30)) + [1, 2, 3]  # (27 tokens: "1 2 3" came before)
    index = NgramIndex(2, 4, catch_up=10)
    assert [index.draft(tokens, 2) for _ in range(3)] == [[], [], [9, 10]]  # 10, 20, then all 26 positions
    tokens += [9]
    assert index.draft(tokens, 2) == [10, 11] and index.indexed == 27  # (then a token a lookup: caught up)


def loop_prompts() -> list[list[int]]:
    # repeats in the prompt give drafts at once; the tiny model's greedy loops give more later
    return [[5, 6, 7, 8, 9] * 3, [11, 12, 13] * 3, list(range(20, 40)), prompts_of([9])[0]]


def test_greedy_outputs_with_drafts_equal_the_reference(tiny_llama):
    model, path = tiny_llama
    llm = LLM(str(path), device="cpu", speculative_tokens=4, block_size=4, max_model_len=160)
    prompts = loop_prompts()
    refs = [hf_greedy(model, p, 120) for p in prompts]
    stop = refs[1][40]
    params = [SamplingParams(max_tokens=120, **GREEDY),
              SamplingParams(max_tokens=120, stop_token_ids=(stop,), **GREEDY),  # cut inside a draft, perhaps
              SamplingParams(max_tokens=120, repetition_penalty=1.3, **GREEDY),  # never drafts
              SamplingParams(max_tokens=37, logprobs=2, **GREEDY)]  # a draft capped by max_tokens
    outs = [r.outputs[0] for r in llm.generate(prompts, params)]
    stats = llm.engine.stats()
    assert stats["spec_draft_tokens"] > stats["spec_accepted_tokens"] > 50  # kept and refused drafts
    assert outs[0].token_ids == refs[0]
    assert outs[1].token_ids == refs[1][: refs[1].index(stop) + 1] and outs[1].finish_reason == "stop"
    plain = LLM(str(path), device="cpu", block_size=4, max_model_len=160)
    same = [r.outputs[0] for r in plain.generate(prompts, params)]
    assert outs[2].token_ids == same[2].token_ids
    assert outs[3].token_ids == refs[3][:37] and [lp.token_id for lp in outs[3].logprobs] == refs[3][:37]
    assert [lp.logprob for lp in outs[3].logprobs] == pytest.approx([lp.logprob for lp in same[3].logprobs], abs=1e-4)
    assert_pool_whole(llm.engine)
    # a prompt near the context's end: the drafts shrink to fit (the last token may sample at max_model_len)
    near = loop_prompts()[0] * 9  # 135 tokens of 160
    out = llm.generate([near], SamplingParams(max_tokens=25, **GREEDY))[0].outputs[0]
    assert out.token_ids == hf_greedy(model, near, 25) and out.finish_reason == "length"
    assert_pool_whole(llm.engine)


def test_stop_strings_and_the_prefix_cache_after_drafts(tiny_tok):
    """A stop string inside a kept draft ends the text there; blocks cached from drafted steps
    hold what their tokens say."""
    _, path, tok = tiny_tok
    prompts = [tok("yes no yes no yes no yes").input_ids, tok("n=12 n=12 n=1").input_ids]
    results = []
    for k in (0, 4):
        llm = LLM(str(path), device="cpu", speculative_tokens=k, block_size=4)
        free = llm.generate(prompts, SamplingParams(max_tokens=60, **GREEDY))
        stop = free[0].outputs[0].text[20:23]
        cut = llm.generate(prompts, SamplingParams(max_tokens=60, stop=[stop], **GREEDY))
        results.append([(o.outputs[0].token_ids, o.outputs[0].text, o.outputs[0].finish_reason) for o in free + cut])
        # a prompt through the drafted output reads the blocks the drafted steps cached
        q = prompts[0] + free[0].outputs[0].token_ids
        again = llm.generate([q], SamplingParams(max_tokens=8, **GREEDY))[0].outputs[0].token_ids
        fresh = LLM(str(path), device="cpu", prefix_cache=False).generate([q], SamplingParams(max_tokens=8, **GREEDY))
        assert again == fresh[0].outputs[0].token_ids
        assert_pool_whole(llm.engine)
        if k:
            assert llm.engine.stats()["spec_accepted_tokens"] > 0
    assert results[0] == results[1]
    assert results[1][2][2] == "stop"


def test_drafts_survive_preemption_and_sampling_is_reproducible(tiny_llama):
    model, path = tiny_llama
    prompts = loop_prompts()[:3]
    llm = LLM(str(path), device="cpu", speculative_tokens=3, block_size=4, num_blocks=40, prefix_cache=False)
    preempted = []
    preempt = llm.engine.scheduler._preempt
    llm.engine.scheduler._preempt = lambda seq, out: preempted.append(seq) or preempt(seq, out)
    outs = llm.generate(prompts, SamplingParams(max_tokens=60, **GREEDY))
    assert preempted and llm.engine.stats()["spec_accepted_tokens"] > 0
    assert [o.outputs[0].token_ids for o in outs] == [hf_greedy(model, p, 60) for p in prompts]
    assert_pool_whole(llm.engine)
    sampled = SamplingParams(max_tokens=40, temperature=0.8, seed=5, n=2)
    a, b = (llm.generate(prompts[:2], sampled) for _ in range(2))
    assert [[o.token_ids for o in r.outputs] for r in a] == [[o.token_ids for o in r.outputs] for r in b]
    assert_pool_whole(llm.engine)


def test_drafts_need_synchronous_steps():
    with pytest.raises(ValueError, match="^speculative_tokens needs synchronous steps: drop async_scheduling$"):
        EngineConfig.from_kwargs(speculative_tokens=2, async_scheduling=True)
    with pytest.raises(ValueError, match=r"^speculative_tokens must be in \[0, 16\], got 17$"):
        EngineConfig.from_kwargs(speculative_tokens=17)


def test_siblings_fork_from_a_plain_step_and_drafts_leave_room_for_every_decode(tiny_llama):
    """n = 2 with a prompt whose last chunk is one token: no draft before the fork (the siblings
    would copy a drafted parent); a step's drafts never push another sequence's token out."""
    _, path = tiny_llama
    prompt = loop_prompts()[0] + [3, 4]  # 17 tokens: chunks of 16 and 1
    params = SamplingParams(n=2, max_tokens=30, **GREEDY)
    outs = []
    for k in (0, 4):
        llm = LLM(str(path), device="cpu", speculative_tokens=k, block_size=4, max_num_batched_tokens=16)
        outs.append([o.token_ids for o in llm.generate([prompt], params)[0].outputs])
        assert_pool_whole(llm.engine)
    assert outs[0] == outs[1] and outs[1][0] == outs[1][1] and len(outs[1][0]) == 30
    llm = LLM(str(path), device="cpu", speculative_tokens=4, block_size=4, max_num_batched_tokens=6)
    left_out = []
    schedule = llm.engine.scheduler.schedule

    def checked():
        ready = [s for s in llm.engine.scheduler.running if s.num_tokens - s.num_computed == 1 and not s.all_sampled]
        out = schedule()
        left_out.append(len({s.seq_id for s in ready} - {s.seq.seq_id for s in out.scheduled}))
        return out

    llm.engine.scheduler.schedule = checked
    llm.generate(loop_prompts(), SamplingParams(max_tokens=40, **GREEDY))
    assert llm.engine.stats()["spec_accepted_tokens"] > 0 and sum(left_out) == 0
