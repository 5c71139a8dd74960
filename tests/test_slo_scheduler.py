"""Deadline-aware scheduling, deterministic: an injected clock and a fixed cost model, no model weights."""

from __future__ import annotations

import pytest

from kairos import SLOInfeasible
from kairos.sched.cost_model import CostModel
from kairos.sched.sequence import SeqStatus, Sequence
from kairos.wire.outputs import EngineRequest
from kairos.wire.sampling_params import SamplingParams
from kairos.wire.slo import SLO
from sched_helpers import Clock, Sim, decoding_batch, hold_grammars, timed_engine


def test_edf_orders_by_deadline_best_effort_last():
    sim = Sim(policy="edf", max_num_seqs=1)
    sim.add("be", 4)
    sim.add("late", 4, slo=SLO(ttft_ms=9000))
    sim.add("soon", 4, slo=SLO(ttft_ms=1000))
    sim.add("mid", 4, slo=SLO(deadline_ms=5000))
    sim.run()
    assert sim.admitted == ["soon", "mid", "late", "be"]


def test_slack_differs_from_edf_when_work_differs():
    # "long" has the later deadline but 400 tokens to prefill (~0.4 s): least slack goes first
    for policy, expected in (("edf", ["short", "long"]), ("slack", ["long", "short"])):
        sim = Sim(policy=policy, max_num_seqs=1, budget=512, num_blocks=256)
        sim.add("long", 400, slo=SLO(ttft_ms=1000))
        sim.add("short", 4, slo=SLO(ttft_ms=800))
        sim.run()
        assert sim.admitted == expected, policy


def test_priority_policy():
    sim = Sim(policy="priority", max_num_seqs=1)
    for rid, prio in (("a", 0), ("b", 5), ("c", 1)):
        sim.add(rid, 4, priority=prio)
    sim.run()
    assert sim.admitted == ["b", "c", "a"]


def test_waiting_request_expires_when_deadline_becomes_impossible():
    sim = Sim(max_num_seqs=1)
    # runs first and holds the only slot; its own deadline leaves it no slack to give away
    sim.add("urgent", 4, max_tokens=30, slo=SLO(deadline_ms=350))
    doomed = sim.add("doomed", 4, slo=SLO(ttft_ms=150))
    expired_at = None
    for _ in range(40):
        out = sim.step()
        if out.expired:
            assert out.expired == [doomed] and expired_at is None
            expired_at = sim.clock()
    assert expired_at is not None and expired_at - doomed.arrival_time > 0.150 - 0.015  # (its own prefill: ~15 ms)
    assert doomed.status is SeqStatus.FINISHED and doomed.seq_id not in sim.sched.kv.block_tables
    assert "doomed" not in sim.admitted


def test_preempts_when_and_only_when_needed():
    # 8 usable blocks of 4 tokens; a best-effort request fills them with a long generation
    for ttft_ms, should_preempt in ((60, True), (5000, False)):
        sim = Sim(num_blocks=9, block_size=4, budget=64)
        hog = sim.add("hog", 20, max_tokens=12)
        for _ in range(3):
            sim.step()
        assert sim.sched.kv.pool.num_free <= 2
        sim.add("tight", 12, max_tokens=2, slo=SLO(ttft_ms=ttft_ms))
        out = sim.step()
        assert (hog in out.preempted) is should_preempt, ttft_ms
        sim.run()
        assert sorted(sim.finished) == ["hog", "tight"]
        if should_preempt:
            assert sim.finished == ["tight", "hog"] and hog.num_preemptions == 1


def test_best_effort_is_not_starved_by_constant_slo_load():
    sim = Sim(max_num_seqs=1, starve_steps=5)
    sim.add("be", 4, max_tokens=2)
    for i in range(60):  # a fresh, tight SLO request every step keeps the single slot busy
        sim.add(f"slo{i}", 4, max_tokens=1, slo=SLO(ttft_ms=10_000))
        sim.step()
        if "be" in sim.finished:
            break
    assert "be" in sim.finished
    assert sim.admitted.index("be") <= 7


def test_engine_refuses_infeasible_slo_at_arrival(tiny_llama):
    clock = Clock()
    engine = timed_engine(tiny_llama[1], clock)
    prompt = list(range(3, 43))  # 40 tokens: ~10 + 40 ms to the first token
    with pytest.raises(SLOInfeasible, match=r"predicted TTFT 50 ms > ttft_ms 20"):
        engine.add_request(EngineRequest("r1", prompt, SamplingParams(max_tokens=4), slo=SLO(ttft_ms=20)))
    with pytest.raises(SLOInfeasible, match=r"predicted completion 83 ms > deadline_ms 60"):
        engine.add_request(EngineRequest("r2", prompt, SamplingParams(max_tokens=4), slo=SLO(deadline_ms=60)))
    assert not engine.has_unfinished() and engine.kv.pool.num_free == engine.kv.pool.num_usable
    engine.add_request(EngineRequest("ok", prompt, SamplingParams(max_tokens=4), slo=SLO(ttft_ms=60)))
    engine.add_request(EngineRequest("be", prompt, SamplingParams(max_tokens=4), slo=SLO(ttft_ms=20, on_miss="best_effort")))
    assert engine.stats()["requests_slo_refused"] == 2 and engine.stats()["requests_slo_best_effort"] == 1
    assert engine.requests["be"][0].best_effort and not engine.requests["ok"][0].best_effort
    while engine.has_unfinished():
        engine.step()


def test_slo_validation():
    with pytest.raises(ValueError, match="slo.ttft_ms must be a positive"):
        SLO(ttft_ms=0)
    with pytest.raises(ValueError, match="slo.on_miss"):
        SLO(ttft_ms=5, on_miss="maybe")
    with pytest.raises(ValueError, match="at least one"):
        SLO()


def test_offline_llm_accepts_slo(tiny_llama):
    from kairos import LLM

    llm = LLM(str(tiny_llama[1]))
    prompt = list(range(3, 20))
    out = llm.generate([prompt], SamplingParams(max_tokens=3, temperature=0), slo=SLO(ttft_ms=60_000), priority=1)
    assert len(out[0].outputs[0].token_ids) == 3
    with pytest.raises(SLOInfeasible):
        llm.generate([prompt, prompt], SamplingParams(max_tokens=3), slo=SLO(ttft_ms=0.001))
    assert not llm.engine.has_unfinished()


def test_step_budget_shrinks_to_keep_tpot_promises():
    sim = Sim(budget=512, num_blocks=256)
    chat = sim.add("chat", 4, max_tokens=50, slo=SLO(tpot_ms=60))
    sim.step()  # prefill; chat now decodes
    assert chat.first_token_time is not None
    sim.add("big", 400, max_tokens=2)  # best-effort, 400 tokens to prefill
    out = sim.step()
    # chat's next token is due 0.95 * 60 ms after its first (the pace); 90% of that (the step
    # share) is 51.3 ms, minus a decode step (10 + 1 ms) leaves 40 prefill tokens at 1 ms each
    assert {s.seq.request_id: s.num_new_tokens for s in out.scheduled} == {"chat": 1, "big": 40}
    # decode-only steps bank time: after 3 more (11 ms each) chat is 3 * (57 - 11) ms ahead of its pace
    sim3 = Sim(budget=512, num_blocks=256)
    sim3.add("chat", 4, max_tokens=50, slo=SLO(tpot_ms=60))
    for _ in range(4):
        sim3.step()
    sim3.add("big", 400, max_tokens=2)
    # 0.9 * (4 * 57 - 3 * 11 ms) - 11 ms = 164.5 ms
    assert {s.seq.request_id: s.num_new_tokens for s in sim3.step().scheduled} == {"chat": 1, "big": 164}
    sim2 = Sim(budget=512, num_blocks=256)  # without a TPOT objective the whole budget is used
    sim2.add("chat", 4, max_tokens=50, slo=SLO(ttft_ms=5000))
    sim2.step()
    sim2.add("big", 400, max_tokens=2)
    assert {s.seq.request_id: s.num_new_tokens for s in sim2.step().scheduled} == {"chat": 1, "big": 400}


def test_paced_steps_bank_time_for_prompt_chunks_worth_carrying():
    """A step with any prefill costs 20 ms more here (on a CPU: layer by layer, not one C call).
    A TPOT promise's bank of 20 prefill tokens would buy a chunk that pays as much to be carried
    as it does work: the step decodes alone and banks, and the next carries a chunk of 61."""
    sim = Sim(budget=512, num_blocks=256)
    sim.cost = sim.sched.cost = CostModel((0.010, 0.1, 0.01, 0.0, 0.020), frozen=True)
    assert sim.cost.worthwhile_chunk() == 40  # (40 ms of tokens, twice the 20 ms)
    chat = sim.add("chat", 4, max_tokens=50, slo=SLO(tpot_ms=60))
    sim.step()
    assert chat.first_token_time is not None
    sim.add("big", 400, max_tokens=2)
    # 0.9 * 57 ms - 11 ms (a decode step) - 20 ms (to carry prefill) = 20 tokens: not worth it
    assert {s.seq.request_id: s.num_new_tokens for s in sim.step().scheduled} == {"chat": 1}
    # 0.9 * (2 * 57 - 11 ms) - 11 - 20 ms = 61 tokens
    assert {s.seq.request_id: s.num_new_tokens for s in sim.step().scheduled} == {"chat": 1, "big": 61}
    assert CostModel((0.010, 0.1, 0.01, 0.0, 0.0)).worthwhile_chunk() == 0  # (nothing to pay: any chunk)
    small = Sim(budget=16, num_blocks=256)  # a step holds 15 prompt tokens at most, never 40: a
    small.cost = small.sched.cost = sim.cost  # full one is worth it (no bank makes it any bigger)
    small.add("chat", 4, max_tokens=50, slo=SLO(tpot_ms=60))
    small.step()
    small.add("big", 400, max_tokens=2)
    assert {s.seq.request_id: s.num_new_tokens for s in small.step().scheduled} == {"chat": 1, "big": 15}


def test_tpot_promise_caps_the_batch():
    # 20 best-effort generations fill the batch; a chat request with a 30 ms TPOT promise joins.
    # A decode step costs 10 ms + 1 ms per sequence, so 0.85 * 30 ms holds at most 15 sequences.
    sim = Sim(max_num_seqs=32, num_blocks=512, budget=512)
    hogs = [sim.add(f"be{i}", 4, max_tokens=40) for i in range(20)]
    sim.step()
    assert len(sim.sched.running) == 20
    chat = sim.add("chat", 4, max_tokens=20, slo=SLO(ttft_ms=1000, tpot_ms=30))
    out = sim.step()
    assert sim.sched.seq_cap(sim.sched.context()) == 15
    assert chat in sim.sched.running and len(sim.sched.running) == 15
    assert sorted(s.request_id for s in out.preempted) == sorted(h.request_id for h in hogs[-6:])  # least urgent: newest
    worst = 0.0
    while chat.status is not SeqStatus.FINISHED:
        t = sim.clock()
        sim.step()
        worst = max(worst, sim.clock() - t)
        assert len(sim.sched.running) <= 15  # the preempted ones do not come back while chat decodes
    assert worst <= 0.030 and (sim.clock() - chat.first_token_time) / 19 <= 0.030
    sim.run()
    assert sorted(sim.finished) == sorted([h.request_id for h in hogs] + ["chat"])


def test_running_tpot_request_outranks_looser_work_when_preempting():
    # Mid-answer, a TPOT promise is a deadline for the last token: the request with the far
    # deadline is the one to preempt, not the chat (whose slack used to read as infinite).
    sim = Sim(max_num_seqs=2, num_blocks=128, budget=64)
    chat = sim.add("chat", 4, max_tokens=30, slo=SLO(tpot_ms=20))
    batch = sim.add("batch", 4, max_tokens=30, slo=SLO(deadline_ms=10_000))
    sim.step()
    sim.step()
    assert chat.first_token_time is not None and chat.tpot_deadline is not None
    sim.add("tight", 4, max_tokens=2, slo=SLO(ttft_ms=40))
    out = sim.step()
    assert out.preempted == [batch] and chat in sim.sched.running
    sim.run()
    assert sim.finished.index("tight") < sim.finished.index("batch")


def test_arrival_prediction_waits_for_a_place(tiny_llama):
    prompt = list(range(3, 43))
    for max_num_seqs, refused in ((1, True), (2, False)):
        engine = timed_engine(tiny_llama[1], Clock(), max_num_seqs=max_num_seqs, scheduling_policy="fcfs")
        engine.add_request(EngineRequest("first", prompt, SamplingParams(max_tokens=20)))
        engine.step()  # "first" holds a place for 19 more tokens of 11 ms each
        # a prefill step of 40 tokens next to one decode: 10 + 40 + 1 ms; behind "first": + 19 * 11 ms
        other = list(range(50, 90))  # (not the same prompt: its prefix would be cached)
        req = EngineRequest("second", other, SamplingParams(max_tokens=4), slo=SLO(ttft_ms=200))
        if refused:
            with pytest.raises(SLOInfeasible, match=r"predicted TTFT 260 ms > ttft_ms 200"):
                engine.add_request(req)
        else:
            engine.add_request(req)
        while engine.has_unfinished():
            engine.step()


def test_cost_model_learns_what_a_prefill_step_costs_on_top():
    # decode-only steps are cheap (one fused call); any prefill adds a fixed 50 ms on top
    truth = CostModel((0.010, 0.1, 0.02, 0.0, 0.050), frozen=True)
    cm = CostModel(refit_every=1_000_000)
    for i in range(200):
        p, d = (0 if i % 3 else 16 * (i % 7 + 1)), i % 9 + 1
        cm.observe(p, d, 100 * d, truth.step_time(p, d, 100 * d))
    cm.fit()
    for p, d in ((0, 4), (0, 12), (16, 4), (200, 2)):
        assert cm.step_time(p, d, 100 * d) == pytest.approx(truth.step_time(p, d, 100 * d), rel=0.02, abs=1e-3)
    assert cm.describe()["cost_prefill_step_s"] == pytest.approx(0.05, rel=0.05)
    # a prefill chunk must first pay the 50 ms: 100 ms next to 2 decodes leaves (100 - 14 - 50) ms = 36 tokens
    assert truth.max_prefill_tokens(0.100, 2, 0) == 36 and truth.max_prefill_tokens(0.060, 2, 0) == 0


def test_calibration_quantile_and_ageing():
    from kairos.sched.cost_model import Calibration

    # at the 90th percentile the model's word weighs as 9 fresh answers on time (0.9 / 0.1)
    cal = Calibration(0.9, half_life=10.0, horizon=60.0)
    assert cal.prior == pytest.approx(9.0) and cal.factor(100.0) == 1.0  # nothing learned: the raw prediction
    cal.observe(100.0, 1.0, 3.0)
    assert cal.factor(100.0) == 1.0  # one answer 3x late is 10% of the weight: not past the 90th percentile
    cal.observe(100.0, 1.0, 2.0)
    assert cal.factor(100.0) == 2.0  # two are 2/11: the 90th percentile is the lesser of them
    for i in range(8):
        cal.observe(100.0, 2.0, 2.0 * (1.1 + i / 10))  # ratios 1.1 .. 1.8
    # 10 answers and 9 of the prior (19): the top 10% (1.9) is the 3x one and most of the 2x one
    assert cal.factor(100.0) == 2.0
    # each answer weighs half every 10 s: 5 against 9 (their top 1.4 reaches 1.8), 2.5 against 9
    # (1.15: 1.6), 1.25 against 9 (1.025: 1.2)
    assert [cal.factor(t) for t in (110.0, 120.0, 130.0)] == pytest.approx([1.8, 1.6, 1.2])
    for _ in range(10):  # 10 fresh answers on time: 19 of 20.25 at 1.0
        cal.observe(130.0, 1.0, 1.0)
    assert cal.factor(130.0) == 1.0
    assert cal.factor(200.0) == 1.0  # past the horizon: all forgotten
    cal = Calibration(0.9)
    for i in range(12):  # a steady 2x error, one answer every 5 s: learned in full, however slow
        cal.observe(100.0 + 5 * i, 1.0, 2.0)
    assert cal.factor(155.0) == 2.0


def test_admission_scales_predictions_by_the_engines_own_errors(tiny_llama):
    clock = Clock()
    engine = timed_engine(tiny_llama[1], clock)
    prompt = list(range(3, 43))  # 50 ms to the first token on an idle engine
    for _ in range(10):  # first tokens came 1.5x later than predicted
        engine.slo_admission.calibration["ttft"].observe(clock(), 2.0, 3.0)
    with pytest.raises(SLOInfeasible, match=r"predicted TTFT 75 ms > ttft_ms 60"):
        engine.add_request(EngineRequest("r", prompt, SamplingParams(max_tokens=4), slo=SLO(ttft_ms=60)))
    engine.add_request(EngineRequest("ok", prompt, SamplingParams(max_tokens=4), slo=SLO(ttft_ms=80)))
    assert engine.stats()["slo_ttft_calibration"] == 1.5
    while engine.has_unfinished():
        engine.step()


def test_admission_predicts_tokens_at_the_pace_decode_steps_have_been_taking(tiny_llama):
    clock = Clock()
    engine = timed_engine(tiny_llama[1], clock)
    engine.add_request(EngineRequest("long", list(range(3, 43)), SamplingParams(max_tokens=40)))
    for _ in range(5):  # steps 30 ms apart, where the cost model says 11 ms for a decode-only step
        engine.step()
        clock.t += 0.030
    assert engine.stats()["step_interval_s"] == pytest.approx(0.030)  # 4 intervals (the first step had none before it)
    # a deadline-only request: tokens every 31 ms, the 12 ms of a decode step of 2 and the 19 ms
    # that decode steps of 1 took past the model's 11 (not the 12 ms alone)
    engine.add_request(EngineRequest("batch", list(range(50, 60)), SamplingParams(max_tokens=10),
                                     slo=SLO(deadline_ms=10_000)))
    first, per_token, last = engine.admission("batch")
    assert per_token == pytest.approx(0.031) and last - first == pytest.approx(9 * 0.031)
    # pacing holds back prompt chunks, not decode steps: a 20 ms TPOT cannot be kept
    with pytest.raises(SLOInfeasible, match=r"predicted TPOT 32 ms > tpot_ms 20"):
        engine.add_request(EngineRequest("chat", list(range(60, 70)), SamplingParams(max_tokens=4),
                                         slo=SLO(ttft_ms=1000, tpot_ms=20)))
    assert engine.admission("long") is None  # no SLO: nothing was predicted
    while engine.has_unfinished():
        engine.step()
        clock.t += 0.030
    clock.t += 100.0  # idle for 100 s: that gap is not a step interval
    engine.add_request(EngineRequest("again", list(range(3, 13)), SamplingParams(max_tokens=3)))
    engine.step()
    clock.t += 0.025
    engine.step()
    assert engine.stats()["step_interval_s"] == pytest.approx(0.025)


def test_an_idle_gap_after_an_abort_is_not_a_step_interval(tiny_llama):
    clock = Clock()
    engine = timed_engine(tiny_llama[1], clock)
    engine.add_request(EngineRequest("a", list(range(3, 13)), SamplingParams(max_tokens=20)))
    for _ in range(3):
        engine.step()
        clock.t += 0.030
    engine.abort("a")  # ended outside a step: the engine idles with no step to notice it
    clock.t += 60.0
    engine.add_request(EngineRequest("b", list(range(3, 13)), SamplingParams(max_tokens=3)))
    engine.step()
    clock.t += 0.020
    engine.step()
    assert engine.stats()["step_interval_s"] == pytest.approx(0.020)


def test_step_intervals_forget_old_steps_as_they_go():
    from kairos.sched.cost_model import StepIntervals

    si = StepIntervals(horizon=10.0)
    for i in range(1000):  # a step every 0.1 s for 100 s, no one asking for the mean
        si.observe(100.0 + i * 0.1, 0.1 if i < 900 else 0.3, 0.05, prefill=i % 2 == 0)
    assert len(si.intervals) <= 102 and si.mean(200.05) == pytest.approx(0.3)  # the last 10 s: all 0.3
    assert si.overhead(200.05) == pytest.approx(0.25)  # decode-only ones: 0.3 where the model says 0.05


def test_running_prompts_go_on_behind_a_request_that_cannot_start():
    """A waiting request ahead in the order (priority 5) that cannot start (2 blocks free, its
    first chunk needs 3) keeps later waiting requests out, but not a running prompt: that one
    holds the blocks, and only its progress (to its end) frees them. Stopping it too was a
    deadlock: neither ever ran again."""
    sim = Sim(policy="priority", num_blocks=9, block_size=4, budget=12)
    sim.add("a", 28, max_tokens=4)  # 7 blocks of prompt, 8 with its answer: all there is
    sim.step()
    sim.step()
    assert sim.sched.kv.pool.num_free == 2
    sim.add("b", 12, priority=5)
    sim.run(max_steps=50)
    assert sim.finished == ["a", "b"]


def test_an_expired_request_misses_its_slo_however_early_it_ended():
    from kairos.wire.slo import report

    slo = SLO(deadline_ms=1500)
    kept = report(slo, arrival=0.0, first=0.2, end=1.0, n_tokens=5)
    gone = report(slo, arrival=0.0, first=None, end=1.0, n_tokens=0, predicted=(100.0, 10.0, 400.0), expired=True)
    assert (kept.deadline_met, kept.slo_met) == (True, True)
    assert (gone.deadline_met, gone.slo_met, gone.e2e_ms, gone.predicted_e2e_ms) == (False, False, 1000.0, 400.0)


def test_a_request_waiting_for_its_grammar_expires_at_its_deadline(tiny_tok):
    from kairos.wire.sampling_params import StructuredOutput

    clock = Clock()
    engine = timed_engine(tiny_tok[1], clock, device="cpu")
    gate = hold_grammars(engine)
    params = SamplingParams(max_tokens=4, structured=StructuredOutput(regex="[a-z]{4}"), n=2)
    engine.add_request(EngineRequest("late", [5, 6, 7, 8], params, slo=SLO(deadline_ms=500)))
    assert engine.admission("late") is not None and engine.only_compiling()  # (admitted, its promise made)
    assert engine.step() == [] and engine.take_verdicts() == []
    clock.t += 0.6  # past its deadline, its grammar still compiling
    out = engine.step()
    assert [(o.request_id, o.index, o.finish_reason) for o in out] == [("late", 0, "expired"), ("late", 1, "expired")]
    assert engine.take_verdicts() == [("late", None)]  # (admitted first: the API then gets the expiry)
    assert not engine.has_unfinished() and engine.stats()["requests_expired"] == 1
    # (its grammar's compile made it late, which no prediction counts: admission learns nothing)
    assert not engine.slo_admission.calibration["e2e"].ratios
    gate.set()


def chunks(out) -> list[tuple[str, int]]:
    """(request id, tokens) of each sequence a step scheduled, in order."""
    return [(s.seq.request_id, s.num_new_tokens) for s in out.scheduled]


def test_chunks_behind_a_request_fill_its_step_only_as_far_as_its_first_token_keeps_its_deadline():
    # COST: 10 ms a step + 1 ms a prompt token. "urgent" goes first (least slack); "bulk", best
    # effort, would fill the rest of the 64-token step and push urgent's first token to 74 ms
    for ttft_ms, bulk_tokens in ((40, 18), (1000, 56)):
        sim = Sim(budget=64)
        sim.add("bulk", 100)
        urgent = sim.add("urgent", 8, slo=SLO(ttft_ms=ttft_ms))
        out = sim.step()
        # 0.9 x 40 ms leaves room for 26 prompt tokens next to the step's 10 ms: its 8 and 18 of
        # bulk's; with a second to spare the step is filled
        assert chunks(out) == [("urgent", 8), ("bulk", bulk_tokens)]
        assert urgent.first_token_time - urgent.arrival_time == pytest.approx(0.010 + (8 + bulk_tokens) * 0.001)
    # a prompt of several steps: its first takes the whole budget; the step of its last 36 tokens
    # (74 ms in) may take 0.9 x (150 - 74) ms: 58 tokens, 22 of bulk's
    sim = Sim(budget=64)
    sim.add("bulk", 100)
    long = sim.add("long", 100, slo=SLO(ttft_ms=150))
    assert chunks(sim.step()) == [("long", 64)]
    out = sim.step()
    assert chunks(out) == [("long", 36), ("bulk", 22)]
    assert long.first_token_time - long.arrival_time == pytest.approx(0.074 + 0.068)


def test_a_first_token_out_of_reach_or_best_effort_holds_no_step_back():
    # "ahead" (least slack) takes 16 tokens of the step; "b" cannot have its first token in 25 ms
    # after them (10 + 24 ms), whatever the step carries: holding the step back would not save it
    sim = Sim(budget=64)
    sim.add("bulk", 100)
    sim.add("ahead", 16, max_tokens=1, slo=SLO(deadline_ms=40))
    sim.add("b", 8, slo=SLO(ttft_ms=25))
    assert chunks(sim.step()) == [("ahead", 16), ("b", 8), ("bulk", 40)]
    # a one-token last chunk is a row of the step, as a decode is (the cost model counts it so):
    # next to 4 decodes it takes 10 + 5 ms, past its 14.5 ms; bulk fills the step
    sim = Sim(budget=64)
    for i in range(4):
        sim.add(f"d{i}", 4, max_tokens=50)
    sim.step()
    sim.add("bulk", 100)
    sim.add("one", 1, slo=SLO(ttft_ms=14.5))
    assert chunks(sim.step())[4:] == [("one", 1), ("bulk", 59)]
    # within reach, but not with the 0.9 margin: still held back (10 + 8 ms of 19)
    sim = Sim(budget=64)
    sim.add("bulk", 100)
    sim.add("tight", 8, slo=SLO(ttft_ms=19))
    assert chunks(sim.step()) == [("tight", 8)]
    # a request served best effort (its objective judged infeasible at arrival) holds nothing back
    sim = Sim(budget=64)
    sim.add("bulk", 100)
    spare = sim.add("spare", 8, slo=SLO(ttft_ms=40, on_miss="best_effort"), priority=1)
    spare.best_effort = True
    assert chunks(sim.step()) == [("spare", 8), ("bulk", 56)]


def test_a_prompt_held_back_behind_first_tokens_goes_first_once_it_starves():
    # a running best-effort prompt gets no chunk while each step carries a first token due in
    # 19 ms (10 + 8 ms of it, the rest held back); after starve_steps such steps it goes first
    sim = Sim(budget=64, starve_steps=3)
    bulk = sim.add("bulk", 200)
    sim.step()  # its first 64 tokens
    steps = []
    for i in range(5):
        sim.add(f"u{i}", 8, max_tokens=1, slo=SLO(ttft_ms=19))
        steps.append(chunks(sim.step()))
    assert steps[:3] == [[("u0", 8)], [("u1", 8)], [("u2", 8)]]
    assert steps[3] == [("bulk", 64)]  # (u3 waits, and expires: 10 + 64 ms is past its 19)
    assert steps[4] == [("bulk", 64)] and bulk.num_computed == 192


@pytest.mark.parametrize("yield_slack_s", [1.0, 0.0])
def test_decodes_with_slack_yield_their_turn_to_a_prompt_with_a_first_token_deadline(yield_slack_s):
    """Four batch requests decode with 20 s to spare when an interactive prompt of 60 tokens
    arrives (and a batch prompt of 8, which goes after it). The TPOT request's banked time allows
    a step of 66 ms; a decode row costs 2 ms and a prompt token 1 ms, so the four rows that sit
    out make room for 8 more prompt tokens, and the first token comes 15 ms sooner. Once it is
    out they decode again. With ``yield_slack_s=0`` they never yield."""
    sim = decoding_batch(yield_slack_s)
    assert sim.clock() == pytest.approx(100.090)
    sim.add("later", 8, max_tokens=4, slo=SLO(deadline_ms=60_000))
    ask = sim.add("ask", 60, max_tokens=4, slo=SLO(ttft_ms=2000))
    steps = [[(s.seq.request_id, s.num_new_tokens) for s in sim.step().scheduled] for _ in range(3)]
    batch = [(f"b{i}", 1) for i in range(4)]
    if yield_slack_s:
        assert steps == [[("chat", 1), ("ask", 54)], [("chat", 1), ("ask", 6), ("later", 8)],
                         [("chat", 1), *batch, ("later", 1), ("ask", 1)]]
        assert ask.first_token_time == pytest.approx(100.090 + 0.066 + 0.026)
    else:
        assert steps == [[("chat", 1), *batch, ("ask", 46)], [("chat", 1), *batch, ("ask", 14), ("later", 7)],
                         [("chat", 1), *batch, ("later", 1), ("ask", 1)]]
        assert ask.first_token_time == pytest.approx(100.090 + 0.066 + 0.041)


def test_only_deadline_bound_decodes_with_slack_yield_and_only_to_a_first_token_deadline():
    """Not a request with a TPOT promise, one served best effort (with or without an SLO), one
    whose only objective was its first token (its slack never runs out: it would yield for ever),
    nor one short of slack (1 s and a fifth of its tokens' predicted time); and only to a prompt
    whose first token is promised and still within reach."""
    from kairos.sched.pacing import yielding_decodes

    sim = Sim(budget=64, max_num_seqs=16)
    # (the TPOT promise paces every decode at 0.475 s: 38 tokens left take 18 s)
    spare = sim.add("spare", 8, max_tokens=40, slo=SLO(deadline_ms=60_000))
    sim.add("short", 8, max_tokens=40, slo=SLO(deadline_ms=18_500))  # (0.4 s of slack)
    sim.add("margin", 8, max_tokens=40, slo=SLO(deadline_ms=21_000))  # (2.9 s: under 1 s + a fifth of 18 s)
    tpot = sim.add("tpot", 8, max_tokens=40, slo=SLO(tpot_ms=500, deadline_ms=60_000))
    sim.add("plain", 8, max_tokens=40)
    sim.add("answered", 8, max_tokens=40, slo=SLO(ttft_ms=5000))  # (no objective left once it has its first token)
    served_anyway = sim.add("best", 8, max_tokens=40, slo=SLO(deadline_ms=60_000, on_miss="best_effort"))
    served_anyway.best_effort = True  # (as admission marks one it could not promise)
    sim.step()
    sim.step()
    sched, ctx = sim.sched, sim.sched.context()
    assert ctx.slack(tpot) > 1.0  # (it has the slack, but a TPOT promise to keep)

    def yielding(head, slack_s=1.0) -> list[str]:
        return [s.request_id for s in yielding_decodes(sched.running, head, ctx, slack_s).values()]

    late = sim.add("late", 20, slo=SLO(ttft_ms=2000, on_miss="best_effort"))
    late.best_effort = True
    ask = sim.add("ask", 20, slo=SLO(ttft_ms=2000))
    assert yielding(None) == [] and yielding(late) == [] and yielding(sim.add("batch", 20, slo=SLO(deadline_ms=9000))) == []
    assert yielding(ask) == ["spare"]
    lost = sim.add("lost", 200, slo=SLO(ttft_ms=100))  # (200 prompt tokens take 0.21 s even alone)
    assert yielding(lost) == []
    assert yielding(ask, 0.0) == [] and yielding(ask, 50.0) == []  # (it has 42 s)
    assert spare.status is SeqStatus.RUNNING


def test_decodes_do_not_yield_to_a_prompt_that_cannot_start():
    """The batch is full (``max_num_seqs``): the interactive prompt waits whatever the decodes
    do, so they go on (yielding would only idle the engine)."""
    sim = Sim(budget=64, max_num_seqs=4)
    for i in range(4):
        sim.add(f"b{i}", 8, max_tokens=40, slo=SLO(deadline_ms=20_000))
    sim.step()
    sim.add("ask", 20, slo=SLO(ttft_ms=9000))
    assert [(s.seq.request_id, s.num_new_tokens) for s in sim.step().scheduled] == [(f"b{i}", 1) for i in range(4)]


def test_decodes_that_yielded_to_a_prompt_that_could_not_start_after_all_still_run():
    """The prompt had blocks for its chunk but not for its sibling's (``n=2``), and is not urgent
    enough to preempt: the step would have been empty (and the next, and the next: the engine
    spinning); the decodes that yielded to it run after all."""
    sim = Sim(budget=64, max_num_seqs=16, num_blocks=9, block_size=4)
    for i in range(2):
        sim.add(f"b{i}", 8, max_tokens=40, slo=SLO(deadline_ms=20_000))
    sim.step()
    sim.step()
    assert sim.sched.kv.pool.num_free == 2
    ask = Sequence(99, "ask", 0, list(range(1, 9)), SamplingParams(max_tokens=4, n=2), pending_forks=1,
                   arrival_time=sim.clock(), slo=SLO(ttft_ms=60_000))
    sim.sched.add(ask)
    for _ in range(2):
        assert [(s.seq.request_id, s.num_new_tokens) for s in sim.step().scheduled] == [("b0", 1), ("b1", 1)]
    assert ask.status is SeqStatus.WAITING


@pytest.mark.parametrize("async_scheduling", [False, True])
def test_yields_change_when_tokens_come_not_which(tiny_llama, async_scheduling):
    """Through the engine (a tiny model; ``n=2`` forks; async scheduling or not): batch requests
    that yield to an interactive prompt produce the very tokens they produce without yields, each
    request ends once with all its tokens, and the yields did happen (a step without the batch
    decodes while the prompt ran)."""
    def run(yield_slack_s: float) -> tuple[dict, int]:
        clock = Clock()
        engine = timed_engine(tiny_llama[1], clock, yield_slack_s=yield_slack_s, async_scheduling=async_scheduling,
                              max_num_batched_tokens=16)
        batch = SLO(deadline_ms=20_000)
        for i in range(3):
            engine.add_request(EngineRequest(f"b{i}", list(range(3 + i, 13 + i)),
                                             SamplingParams(max_tokens=12, n=2 if i == 0 else 1, ignore_eos=True,
                                                            temperature=0.0), slo=batch))
        got: dict[tuple[str, int], list[int]] = {}
        ends: dict[tuple[str, int], int] = {}
        skipped, flight = 0, None
        for step in range(200):
            if step == 4:
                engine.add_request(EngineRequest("ask", list(range(20, 60)), SamplingParams(max_tokens=4, ignore_eos=True),
                                                 slo=SLO(ttft_ms=5000)))
            if not engine.has_unfinished() and flight is None:
                break
            if flight is None:
                flight = engine.launch()
            rows = {s.seq.request_id for s in flight.sched.scheduled}
            skipped += "ask" in rows and not rows & {"b0", "b1", "b2"}
            outs, flight = engine.advance(flight)
            clock.t += 0.01
            for o in outs:
                got.setdefault((o.request_id, o.index), []).extend(o.new_token_ids)
                ends[(o.request_id, o.index)] = ends.get((o.request_id, o.index), 0) + (o.finish_reason is not None)
        assert set(ends.values()) == {1} and len(ends) == 5
        return got, skipped

    yielded, skipped = run(1.0)
    plain, never = run(0.0)
    assert skipped > 0 and never == 0
    assert {k: v for k, v in yielded.items() if k[0] != "ask"} == {k: v for k, v in plain.items() if k[0] != "ask"}
    assert all(len(v) == (4 if k[0] == "ask" else 12) for k, v in yielded.items())
