"""Async scheduling: step N+1 launched while step N is in flight, its inputs read on the device.

On a CPU the forward runs inside ``launch``, so these tests check what async scheduling does to
the results (nothing) and to the bookkeeping (placeholders, the prefix cache, preemption), not
its speed; the order of calls is the one a GPU runs it in.
"""

from __future__ import annotations

import pytest

from kairos import LLM, SamplingParams
from kairos.sched.sequence import PLACEHOLDER
from kairos.wire.outputs import EngineRequest

from conftest import hf_greedy, needs_default_model
from engine_helpers import GREEDY, assert_pool_whole, make_engine, prompts_of


def launches_ahead(llm: LLM) -> list[int]:
    """Record, per launch, how many steps were in flight when it was called."""
    seen: list[int] = []
    launch = llm.engine.launch

    def wrapper():
        seen.append(len(llm.engine._in_flight))
        return launch()

    llm.engine.launch = wrapper
    return seen


def tree_blocks(kv) -> list[tuple[tuple[int, ...], int]]:
    """The prefix tree as (every token from the root through the node, its block), sorted."""
    out = []
    for node in kv.tree.nodes():
        path, n = [], node
        while n.parent is not None:
            path[:0] = n.key
            n = n.parent
        out.append((tuple(path), node.block))
        assert PLACEHOLDER not in path
    return sorted(out)


def test_async_greedy_equals_transformers_with_staggered_ends(tiny_llama):
    model, path = tiny_llama
    llm = LLM(str(path), async_scheduling=True, max_num_batched_tokens=64, block_size=4)
    seen = launches_ahead(llm)
    prompts = prompts_of([3, 17, 9, 30, 1, 12])
    lengths = [1, 9, 4, 13, 2, 7]
    outs = llm.generate(prompts, [SamplingParams(max_tokens=m, **GREEDY) for m in lengths])
    for prompt, m, out in zip(prompts, lengths, outs):
        assert out.outputs[0].token_ids == hf_greedy(model, prompt, m)
        assert out.outputs[0].finish_reason == "length"
    assert seen.count(1) > len(seen) // 2  # most steps were launched with the previous one in flight
    assert max(seen) == 1
    assert not llm.engine._in_flight
    assert_pool_whole(llm.engine)


def test_no_step_runs_past_max_tokens(tiny_llama):
    """A sequence whose last token is still on the device is not scheduled again."""
    llm = LLM(str(tiny_llama[1]), async_scheduling=True)
    rows: dict[int, int] = {}
    execute = llm.engine.runner.execute

    def counting(batch, *args):
        for s in batch:
            rows[s.seq.seq_id] = rows.get(s.seq.seq_id, 0) + 1
        return execute(batch, *args)

    llm.engine.runner.execute = counting
    llm.generate(prompts_of([5, 8, 2]), [SamplingParams(max_tokens=m, **GREEDY) for m in (1, 6, 3)])
    assert sorted(rows.values()) == [1, 3, 6]  # one prefill row, then one row per further token


def test_async_preemption_and_recompute_equal_transformers(tiny_llama):
    """A pool too small for every sequence: preempted ones re-prefill (their last token perhaps
    still on the device when they are picked) and still match the reference token for token."""
    model, path = tiny_llama
    llm = LLM(str(path), async_scheduling=True, num_blocks=16, block_size=4, max_num_batched_tokens=32)
    preempted = []
    preempt = llm.engine.scheduler._preempt

    def spy(seq, out):
        preempted.append((seq.seq_id, seq.num_pending))
        preempt(seq, out)

    llm.engine.scheduler._preempt = spy
    prompts = prompts_of([6, 10, 5, 9])
    outs = llm.generate(prompts, SamplingParams(max_tokens=14, **GREEDY))
    for prompt, out in zip(prompts, outs):
        assert out.outputs[0].token_ids == hf_greedy(model, prompt, 14)
    assert any(pending for _, pending in preempted)  # preempted with a token in flight
    assert_pool_whole(llm.engine)


def test_blocks_with_a_token_in_flight_are_cached_when_it_is_known(tiny_llama):
    """Block size 4, prompt 7: the step that computes position 7 (the first output) is launched
    before that token is known (as is every decode step's input), so its block is cached when the
    token is; the tree ends up the same, block for block, as with synchronous steps."""
    path = tiny_llama[1]
    trees, outs = [], []
    for on in (False, True):
        llm = LLM(str(path), async_scheduling=on, num_blocks=40, block_size=4)
        out = llm.generate(prompts_of([7, 12]), SamplingParams(max_tokens=9, **GREEDY))
        outs.append([o.outputs[0].token_ids for o in out])
        trees.append(tree_blocks(llm.engine.kv))
        full = out[0].prompt_token_ids + out[0].outputs[0].token_ids  # 16 tokens, KV computed for 15
        assert llm.engine.kv.peek(full) == 12
    assert outs[0] == outs[1]
    assert trees[0] == trees[1] and len(trees[0]) == 3 + 5  # KV of 15 and 20 tokens, in whole blocks


def test_async_sampling_logprobs_siblings_and_stop_tokens_equal_sync(tiny_llama):
    model, path = tiny_llama
    prompts = prompts_of([4, 11, 6, 20])
    ref = hf_greedy(model, prompts[2], 12)
    cut = next(i for i in range(3, 12) if ref[i] not in ref[:i])  # a stop token it reaches mid-way
    params = [SamplingParams(temperature=0.9, seed=3, max_tokens=10, logprobs=2),
              SamplingParams(n=3, temperature=1.0, top_p=0.9, seed=7, max_tokens=8),
              SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True, stop_token_ids=(ref[cut],)),
              SamplingParams(n=2, temperature=0.7, top_k=20, max_tokens=7, seed=11, logprobs=0)]
    results = []
    for on in (False, True):
        llm = LLM(str(path), async_scheduling=on, block_size=4)
        seen = launches_ahead(llm)
        results.append(llm.generate(prompts, params))
        assert (max(seen) == 1) == on
        assert_pool_whole(llm.engine)
    for a, b in zip(*results):
        for x, y in zip(a.outputs, b.outputs):
            assert (x.token_ids, x.finish_reason, x.stop_reason) == (y.token_ids, y.finish_reason, y.stop_reason)
            if x.logprobs is not None:
                assert [lp.token_id for lp in x.logprobs] == [lp.token_id for lp in y.logprobs]
                assert [lp.logprob for lp in x.logprobs] == pytest.approx([lp.logprob for lp in y.logprobs], abs=1e-5)
    stopped = results[1][2].outputs[0]
    assert (stopped.token_ids, stopped.finish_reason, stopped.stop_reason) == (ref[: cut + 1], "stop", ref[cut])


def test_rows_needing_their_last_token_launch_ahead_and_sample_once_it_is_known(tiny_llama):
    """Penalties count the last token on the host: a step with such a row is launched ahead all the
    same, and samples once the step before is applied. The outputs equal synchronous steps'."""
    path = tiny_llama[1]
    params = [SamplingParams(max_tokens=9, **GREEDY),
              SamplingParams(max_tokens=8, repetition_penalty=1.5, **GREEDY),
              SamplingParams(max_tokens=10, presence_penalty=1.2, frequency_penalty=0.8, min_tokens=6, seed=4,
                             temperature=0.8, logprobs=1),
              SamplingParams(n=2, max_tokens=7, frequency_penalty=2.0, logit_bias={7: 5.0}, seed=9, temperature=1.1)]
    results = []
    for on in (False, True):
        llm = LLM(str(path), async_scheduling=on, block_size=4)
        seen = launches_ahead(llm)
        deferred = []
        sample = llm.engine._sample

        def spy(flight, logits, sample=sample, deferred=deferred):
            deferred.append(flight.logits is not None)  # (put off by launch, sampled by finish)
            return sample(flight, logits)

        llm.engine._sample = spy
        outs = llm.generate(prompts_of([5, 5, 9, 3]), params)
        results.append([(o.token_ids, o.finish_reason, [lp.token_id for lp in o.logprobs or []])
                        for r in outs for o in r.outputs])
        assert (max(seen) == 1) == on and any(deferred) == on
        assert_pool_whole(llm.engine)
    assert results[0] == results[1]


def test_launch_ahead_needs_async_scheduling_and_steps_finish_in_order(tiny_llama):
    for on in (False, True):
        engine = make_engine(tiny_llama[1], async_scheduling=on)
        engine.add_request(EngineRequest("a", prompts_of([5])[0], SamplingParams(max_tokens=4, **GREEDY)))
        first = engine.launch()
        seq = engine.requests["a"][0]
        assert (seq.token_ids[-1], seq.num_pending) == (PLACEHOLDER, 1)
        if not on:
            with pytest.raises(RuntimeError, match="a step is in flight"):
                engine.launch()
            engine.finish(first)
            continue
        second = engine.launch()
        assert seq.token_ids[-2:] == [PLACEHOLDER, PLACEHOLDER] and seq.num_pending == 2
        with pytest.raises(RuntimeError, match="in the order they were launched"):
            engine.finish(second)
        (out,) = engine.finish(first)
        assert seq.token_ids[-2] == out.new_token_ids[0] and seq.num_pending == 1
        engine.abort("a")  # with the second step in flight: its token is dropped with the placeholder
        assert PLACEHOLDER not in seq.token_ids and engine.finish(second) == []
        assert_pool_whole(engine)


@needs_default_model
def test_default_model_async_equals_sync_with_stop_strings_and_eos(default_llm):
    llm = LLM("default", dtype="float32", async_scheduling=True)
    seen = launches_ahead(llm)
    chats = [[{"role": "user", "content": "What is the capital of France?"}],
             [{"role": "user", "content": "Write a haiku about the sea."}]]
    for params in (SamplingParams(temperature=0.0, max_tokens=48),  # the first ends on EOS
                   SamplingParams(temperature=0.0, max_tokens=48, stop=["Paris", "waves"]),
                   SamplingParams(n=2, temperature=0.8, seed=1, max_tokens=16, logprobs=1)):
        a, b = default_llm.chat(chats, params), llm.chat(chats, params)
        for x, y in zip(a, b):
            assert [(o.text, o.token_ids, o.finish_reason, o.stop_reason) for o in x.outputs] == \
                   [(o.text, o.token_ids, o.finish_reason, o.stop_reason) for o in y.outputs]
    assert max(seen) == 1
    assert_pool_whole(llm.engine)


def test_discarding_steps_in_flight_aborts_their_requests(tiny_llama):
    engine = make_engine(tiny_llama[1], async_scheduling=True)
    engine.add_request(EngineRequest("a", prompts_of([5])[0], SamplingParams(max_tokens=4, **GREEDY)))
    engine.launch()
    engine.launch()
    assert [(o.request_id, o.finish_reason) for o in engine.discard_in_flight()] == [("a", "abort")]
    assert not engine.has_unfinished()
    assert_pool_whole(engine)
    engine.add_request(EngineRequest("b", prompts_of([5])[0], SamplingParams(max_tokens=4, **GREEDY)))
    while engine.has_unfinished():  # the engine runs on as new
        engine.step()
