"""Limits that hold whatever the workload: steps always move, every sequence ends exactly once,
the batch never outgrows ``max_num_seqs``, and the engine's statistics count what happened."""

from __future__ import annotations

import pytest

from kairos.sched.output import SchedulerOutput
from kairos.sched.sequence import SeqStatus
from kairos.wire.checks import check_context_length
from kairos.wire.outputs import EngineRequest
from kairos.wire.sampling_params import SamplingParams
from kairos.wire.slo import SLO
from sched_helpers import Clock, Sim, timed_engine

from engine_helpers import GREEDY, assert_pool_whole, make_engine, prompts_of, run


def test_a_tpot_request_recomputing_after_preemption_does_not_stall_the_steps():
    sim = Sim(budget=16, num_blocks=64)
    chat = sim.add("chat", 40, max_tokens=8, slo=SLO(tpot_ms=20))
    for _ in range(4):  # 40 prompt tokens in chunks of 16, then its first token
        sim.step()
    assert chat.first_token_time is not None and chat.num_output_tokens == 2
    sim.sched._preempt(chat, SchedulerOutput())  # (as memory pressure would)
    sim.clock.t += 1.0  # its per-token schedule runs on while it waits: overdrawn by ~1 s
    out = sim.step()  # readmitted: its first chunk of 42 tokens to recompute
    assert [(s.seq.request_id, s.num_new_tokens) for s in out.scheduled] == [("chat", 16)]
    # mid-prompt again: not paced (it decodes nothing), so the steps go on recomputing it
    assert [(s.seq.request_id, s.num_new_tokens) for s in sim.step().scheduled] == [("chat", 16)]
    sim.run(max_steps=20)
    assert sim.finished == ["chat"]


def test_samples_of_one_request_expiring_in_the_same_round_each_end_once(tiny_llama):
    clock = Clock()
    engine = timed_engine(tiny_llama[1], clock, device="cpu", dtype="float32")
    params = SamplingParams(max_tokens=8, n=2, **GREEDY)
    engine.add_request(EngineRequest("r", prompts_of([6])[0], params, slo=SLO(deadline_ms=1000)))
    outs = engine.step() + engine.step()  # the prompt and first token, the sibling forked; a decode
    seqs = engine.requests["r"]
    assert [s.status for s in seqs] == [SeqStatus.RUNNING] * 2
    for seq in seqs:  # both preempted (as memory pressure would), then the deadline is out of reach
        engine.scheduler._preempt(seq, SchedulerOutput())
    clock.t += 2.0
    outs += engine.step()
    assert sorted((o.index, o.finish_reason) for o in outs if o.finished) == [(0, "expired"), (1, "expired")]
    assert not engine.has_unfinished() and engine.stats()["requests_expired"] == 2
    assert_pool_whole(engine)


def test_forks_count_against_max_num_seqs(tiny_llama):
    model, path = tiny_llama
    engine = make_engine(path, max_num_seqs=2, block_size=4, dtype="float32")
    with pytest.raises(ValueError, match=r"^n=3 is more than the 2 sequences a step holds \(max_num_seqs\)$"):
        engine.add_request(EngineRequest("big", prompts_of([5])[0], SamplingParams(n=3)))
    greedy = SamplingParams(max_tokens=6, **GREEDY)
    pairs = SamplingParams(max_tokens=6, n=2, **GREEDY)
    prompts = prompts_of([5, 9, 7])
    seen = []
    step = engine.step

    def counted():
        outs = step()
        seen.append(len(engine.scheduler.running))
        return outs

    engine.step = counted
    done = run(engine, {0: [("a", prompts[0], pairs), ("b", prompts[1], greedy), ("c", prompts[2], pairs)]})
    assert max(seen) == 2  # (a's sibling forks into the second place: b waits for it)
    assert done[("a", 0)][0] == done[("a", 1)][0] and done[("c", 0)][0] == done[("c", 1)][0]
    assert len(done) == 5
    assert_pool_whole(engine)


def test_one_context_rule_for_the_api_and_the_engine():
    check_context_length(24, 1, 24)  # a full context, scored by one token past it
    check_context_length(20, 4, 24)
    check_context_length(24, 0, 24)  # (echo of a prompt alone: the API's max_tokens 0)
    with pytest.raises(ValueError, match=r"^This model's maximum context length is 24 tokens\. However, you "
                                         r"requested 26 tokens \(24 in the prompt, 2 in the completion\)\. "
                                         r"Please reduce the length\.$"):
        check_context_length(24, 2, 24)
    with pytest.raises(ValueError, match="you requested 25 tokens"):
        check_context_length(21, 4, 24)


def test_prefix_hits_count_requests_that_started_not_admissions_undone(tiny_llama):
    _, path = tiny_llama
    engine = make_engine(path, block_size=4, max_num_seqs=1, scheduling_policy="fcfs", dtype="float32")
    shared = prompts_of([16])[0]
    run(engine, {0: [("warm", shared, SamplingParams(max_tokens=1, **GREEDY))]})
    # "hit" waits behind "long" (one place in the batch): each step tries it and undoes its match
    long, hit = prompts_of([1, 6, 3])[1:]
    done = run(engine, {0: [("long", long, SamplingParams(max_tokens=12, **GREEDY)),
                            ("hit", shared + hit, SamplingParams(max_tokens=2, **GREEDY))]})
    assert len(done) == 2
    stats = engine.stats()
    assert stats["prefix_cache_queried_tokens"] == 16 + 6 + 19
    assert stats["prefix_cache_hit_tokens"] == 16  # hit's first 16 tokens (4 blocks), counted once


def test_calibration_learns_from_requests_that_end_by_a_stop_string_or_an_abort(tiny_llama):
    clock = Clock()
    engine = timed_engine(tiny_llama[1], clock, device="cpu", dtype="float32")
    e2e, ttft = engine.slo_admission.calibration["e2e"], engine.slo_admission.calibration["ttft"]
    slo = SLO(ttft_ms=5000, deadline_ms=5000)
    engine.add_request(EngineRequest("stop", prompts_of([6])[0], SamplingParams(max_tokens=20, **GREEDY), slo=slo))
    engine.step()
    engine.finish_sequence("stop", 0)  # (the detokenizer found a stop string in its first token)
    assert len(e2e.ratios) == 1 and not engine.has_unfinished()
    # an abort past the deadline is a miss; an abort in time says nothing of the predictions
    predicted = {}
    for rid, wait in (("late", 6.0), ("early", 0.5)):
        engine.add_request(EngineRequest(rid, prompts_of([6])[0], SamplingParams(max_tokens=20, **GREEDY), slo=slo))
        predicted[rid] = engine.requests[rid][0].predicted
        clock.t += wait
        engine.abort(rid)
    # ttft: "stop"'s first token, then "late" (6 s against its prediction); e2e: "stop", "late"
    assert [r for _, r in ttft.ratios][1:] == [pytest.approx(6.0 / predicted["late"][0])]
    assert [r for _, r in e2e.ratios][1:] == [pytest.approx(6.0 / predicted["late"][1])]
    assert_pool_whole(engine)


def test_an_abort_ends_only_the_samples_still_running(tiny_llama):
    engine = make_engine(tiny_llama[1], block_size=4, dtype="float32")
    engine.add_request(EngineRequest("r", prompts_of([6])[0], SamplingParams(max_tokens=8, n=2, **GREEDY)))
    engine.step()
    engine.finish_sequence("r", 0)  # sample 0 ends (a stop string); sample 1 runs on
    assert [(o.index, o.finish_reason) for o in engine.abort("r")] == [(1, "abort")]
    assert not engine.has_unfinished()
    assert_pool_whole(engine)
