"""SLO admission's predictions: time per token from decode steps and prefill load, and what the
calibration learns from. Deterministic: an injected clock and a fixed cost model."""

from __future__ import annotations

import pytest

from kairos.sched.admission import SLOAdmission, predict
from kairos.sched.cost_model import CostModel, StepIntervals
from kairos.sched.sequence import Sequence
from kairos.wire.outputs import EngineRequest
from kairos.wire.sampling_params import SamplingParams
from kairos.wire.slo import SLO
from sched_helpers import Clock, Sim, decoding_batch, hold_grammars, timed_engine

# COST: a decode-only step of one sequence takes 11 ms, of two 12 ms


def request(sim: Sim, slo: SLO, max_tokens: int = 11, priority: int = 0) -> Sequence:
    return Sequence(9_000, "r", 0, list(range(1, 9)), SamplingParams(max_tokens=max_tokens),
                    arrival_time=sim.clock(), slo=slo, priority=priority)


def test_a_burst_after_idling_is_not_the_time_per_token():
    # the engine idled, then spent 0.5 s on the prompts of a burst's first arrivals: two steps of
    # 250 ms, 240 ms of each past the 10 ms of a decode step of no sequence. Tokens come a decode
    # step apart, stretched by that share of the last 10 s (4.8%), not 250 ms apart.
    sim = Sim()
    si = StepIntervals(horizon=10.0)
    si.observe(99.75, 0.25, 0.010, prefill=True)
    si.observe(100.0, 0.25, 0.010, prefill=True)
    assert si.mean(100.0) == pytest.approx(0.25) and si.overhead(100.0) == 0.0
    assert si.prefill_load(100.0) == pytest.approx(0.048)
    first, tpot, last = predict(sim.sched, sim.cost, si, request(sim, SLO(deadline_ms=5000)))
    assert tpot == pytest.approx(0.011 / (1 - 0.048))
    assert last - first == pytest.approx(10 * tpot)


def test_tokens_come_a_decode_step_apart_stretched_by_the_prefill_load():
    sim = Sim(budget=256)
    si = StepIntervals(horizon=10.0)
    t = 90.0
    for i in range(90):  # 50 decode-only steps of 40 ms, 40 steps of 200 ms: 10 s in all
        t += 0.04 if i % 9 < 5 else 0.2
        si.observe(t, 0.04 if i % 9 < 5 else 0.2, 0.011, prefill=i % 9 >= 5)
    # a decode-only step overran the model's 11 ms by 29 ms (the loop around it): of a mixed
    # step's 200 ms, 200 - 11 - 29 = 160 went to prompt chunks, 6.4 s in all
    assert t == pytest.approx(100.0) and si.overhead(t) == pytest.approx(0.029)
    assert si.prefill_load(t) == pytest.approx(0.64)
    _, tpot, _ = predict(sim.sched, sim.cost, si, request(sim, SLO(deadline_ms=5000)))
    # a busy window: the decode step over the share left to it is the mean interval
    assert tpot == pytest.approx(0.04 / 0.36) and tpot == pytest.approx(si.mean(t))
    # a TPOT promise paces the steps: prompt chunks wait, tokens come 0.95 x 100 ms apart
    assert predict(sim.sched, sim.cost, si, request(sim, SLO(tpot_ms=100)))[1] == pytest.approx(0.095)
    # ... but no faster than a decode step
    assert predict(sim.sched, sim.cost, si, request(sim, SLO(tpot_ms=30)))[1] == pytest.approx(0.04)
    # with a step budget of 64 a step carries at most 63 prompt tokens: 40 + 63 ms
    assert predict(Sim(budget=64).sched, sim.cost, si, request(sim, SLO(deadline_ms=5000)))[1] == pytest.approx(0.103)
    # the prompt chunks age out as the window moves on: 4.5 s later, 23 of the 40 mixed steps
    # remain (those that ended after 94.5 s: 3 of the fifth second's, all of the last five)
    t += 4.5
    si.observe(t, 0.04, 0.011, prefill=False)
    assert si.prefill_load(t) == pytest.approx(23 * 0.016)
    # at saturation a token waits at most one step that carries a full chunk: 10 + 255 + 1 ms
    for _ in range(11):
        t += 1.0
        si.observe(t, 1.0, 0.011, prefill=True)
    assert si.prefill_load(t) == pytest.approx(1.0) and si.overhead(t) == 0.0
    assert predict(sim.sched, sim.cost, si, request(sim, SLO(deadline_ms=5000)))[1] == pytest.approx(0.266)


def test_prompts_queued_now_stretch_the_tokens_of_a_new_request():
    sim = Sim()
    sim.add("queued", 100)  # 100 ms of prompt chunks to run, 1 ms a token
    si = StepIntervals(horizon=10.0)  # (no steps lately: no load)
    # 11 tokens of a decode step of 2 (12 ms), the 100 ms of chunks spread over them
    assert predict(sim.sched, sim.cost, si, request(sim, SLO(deadline_ms=5000)))[1] == pytest.approx(0.012 + 0.1 / 11)
    # spread over 101 tokens, less than the 10% of the last 10 s that went to prompts lately
    si.observe(99.0, 1.0, 0.0, prefill=True)
    assert predict(sim.sched, sim.cost, si, request(sim, SLO(deadline_ms=50_000), max_tokens=101))[1] == (
        pytest.approx(0.012 / 0.9))
    # a TPOT promise paces them: 19 ms
    assert predict(sim.sched, sim.cost, si, request(sim, SLO(tpot_ms=20)))[1] == pytest.approx(0.019)
    sim.run()  # once the prompt has run, no chunk is queued
    assert predict(sim.sched, sim.cost, StepIntervals(), request(sim, SLO(deadline_ms=5000)))[1] == pytest.approx(0.011)
    # a prompt queued ahead of it (first come, first served) runs before its first token: not again
    fcfs = Sim(policy="fcfs")
    fcfs.add("queued", 100)
    assert predict(fcfs.sched, fcfs.cost, StepIntervals(), request(fcfs, SLO(deadline_ms=5000)))[1] == (
        pytest.approx(0.012))


def test_the_wait_for_a_place_goes_at_any_request_s_pace():
    # one place, held by "run" for 3 more tokens; a prompt queued behind the new request stretches
    # the new request's own token (max_tokens=1: all 100 ms of it), not the tokens of "run"
    sim = Sim(policy="priority", max_num_seqs=1)
    sim.add("run", 4, max_tokens=4, priority=5)
    sim.step()
    sim.add("queued", 100)
    first, tpot, _ = predict(sim.sched, sim.cost, StepIntervals(), request(sim, SLO(ttft_ms=1000), 1, priority=1))
    # 3 decode steps of 11 ms, then its 8-token prompt in a step of 19 ms; its token: at most a
    # step with a full chunk (63 tokens next to 1 decode: 74 ms), not 11 + 100 ms
    assert first == pytest.approx(3 * 0.011 + 0.019) and tpot == pytest.approx(0.074)


def test_steps_faster_than_the_model_book_no_negative_time():
    si = StepIntervals(horizon=10.0)
    si.observe(100.0, 0.008, 0.011, prefill=False)  # 3 ms under the model's decode step
    assert si.overhead(100.0) == 0.0
    si.observe(100.1, 0.009, 0.011, prefill=True)  # a small chunk under it too
    assert si.prefill_load(100.1) == 0.0
    si.observe(100.2, 0.021, 0.011, prefill=False)  # 10 ms over: the mean of -3 and +10 ms
    assert si.overhead(100.2) == pytest.approx(0.0035)


def test_calibration_learns_only_from_predictions_of_a_fitted_cost_model():
    sim = Sim()
    sim.cost = CostModel(refit_every=16)  # the defaults, not this engine's
    adm = SLOAdmission(sim.sched, sim.cost, StepIntervals(), sim.clock, 0.9)
    early = request(sim, SLO(ttft_ms=10_000))
    adm.admit(early)
    assert early.promised is not None and early.predicted is None
    for i in range(16):  # a prompt's step, then decode steps: fitted, but not yet of prefill
        sim.cost.observe(64 if i == 0 else 0, 1, 100 + i, 0.3 if i == 0 else 0.02)
    assert sim.cost.fits == 2 and not sim.cost.fitted  # (fits at 8 and 16 steps)
    adm.admit(still := request(sim, SLO(ttft_ms=10_000)))
    assert still.predicted is None
    for i in range(16):  # 3 more with prompt chunks: 4 of each kind in the window
        sim.cost.observe(16 if i < 3 else 0, 1 + i % 3, 100, 0.02 + 0.001 * i)
    assert sim.cost.fits == 3 and sim.cost.fitted and sim.cost.describe()["cost_fitted"] == 1.0  # (32)
    late = request(sim, SLO(ttft_ms=10_000))
    adm.admit(late)
    assert late.predicted is not None
    for seq in (early, late):
        adm.first_token(seq, sim.clock() + 0.5)
    assert len(adm.calibration["ttft"].ratios) == 1
    assert CostModel(frozen=True).fitted and not CostModel().fitted


def test_the_engine_measures_what_steps_spent_on_prompts(tiny_llama):
    clock = Clock()
    engine = timed_engine(tiny_llama[1], clock, max_num_batched_tokens=16)
    engine.add_request(EngineRequest("long", list(range(3, 35)), SamplingParams(max_tokens=20)))
    # (a step's interval is the time since the step before it ended: the clock moves between steps)
    engine.step()  # the first 16 of its 32 prompt tokens, after idling: no interval
    clock.t += 0.05
    engine.step()  # the other 16, 50 ms: 40 ms past the 10 ms of a decode step of no sequence
    for _ in range(2):  # two decode-only steps of 30 ms
        clock.t += 0.03
        engine.step()
    engine.add_request(EngineRequest("other", list(range(40, 70)), SamplingParams(max_tokens=20)))
    for _ in range(2):  # chunks of 15 of its 30 prompt tokens next to a decode of "long": 100 ms
        clock.t += 0.1
        engine.step()
    # decode-only steps took 30 ms where the model says 11 ms (a sequence): 19 ms of overhead;
    # each mixed step 100 ms, of it 100 - 11 - 19 = 70 ms past a decode step and its overhead
    assert engine.intervals.overhead(clock()) == pytest.approx(0.019)
    assert engine.intervals.prefill_load(clock()) == pytest.approx(0.018)
    assert engine.stats()["step_prefill_load"] == pytest.approx(0.018)
    assert engine.scheduler.context().prefill_load == pytest.approx(0.018)  # (the slack policy's too)
    engine.add_request(EngineRequest("batch", list(range(60, 70)), SamplingParams(max_tokens=10),
                                     slo=SLO(deadline_ms=10_000)))
    # a batch of 3: 13 ms and the 19 ms around it, stretched by the 1.8% that went to prompts
    assert engine.admission("batch")[1] == pytest.approx(0.032 / (1 - 0.018))
    while engine.has_unfinished():
        engine.step()


def test_a_wait_for_a_grammar_is_not_a_step_interval(tiny_tok):
    import time

    from kairos.wire.sampling_params import StructuredOutput

    clock = Clock()
    engine = timed_engine(tiny_tok[1], clock, device="cpu")
    gate = hold_grammars(engine)
    engine.add_request(EngineRequest("a", [5, 6, 7, 8], SamplingParams(max_tokens=2, ignore_eos=True)))
    engine.add_request(EngineRequest("g", [5, 6, 7, 9], SamplingParams(
        max_tokens=2, structured=StructuredOutput(regex="[a-z]{4}"))))
    engine.step()  # the prompt of "a"
    clock.t += 0.03
    engine.step()  # its last token, 30 ms later: only "g" is left, its grammar compiling
    assert engine.only_compiling() and engine.step() == []  # nothing to run: the engine idles
    clock.t += 2.0
    gate.set()
    for _ in range(500):  # until "g" runs its prompt: a step of no time on this clock, not of 2 s
        engine.step()
        if engine.stats()["num_compiling"] == 0 and engine.scheduler.running:
            break
        time.sleep(0.01)
    assert engine.intervals.prefill_load(clock()) == 0.0 and engine.intervals.mean(clock()) == pytest.approx(0.03)
    while engine.has_unfinished():
        engine.step()


def admitted(sim: Sim, slo: SLO, predicted: tuple[float, float]) -> Sequence:
    seq = request(sim, slo)
    seq.predicted = predicted  # (raw first and last token, s after arrival)
    return seq


def test_an_admitted_request_that_expires_is_a_miss_of_the_objectives_it_could_no_longer_meet():
    sim = Sim()
    adm = SLOAdmission(sim.sched, sim.cost, StepIntervals(), sim.clock, confidence=0.9)
    # ended 3 s after arrival, its first token out of reach of its 1 s: a miss by at least 3 s;
    # its 20 s deadline was not what ended it, so nothing is learned of it
    late = admitted(sim, SLO(ttft_ms=1000, deadline_ms=20_000), (0.5, 2.0))
    late.missed = ("ttft",)
    adm.expired(late, sim.clock() + 3.0)
    assert [r for _, r in adm.calibration["ttft"].ratios] == [6.0] and not adm.calibration["e2e"].ratios
    # ended 5 s in, its 20 s deadline out of reach: a miss by at least 20 s
    slow = admitted(sim, SLO(ttft_ms=1000, deadline_ms=20_000), (0.5, 2.0))
    slow.missed = ("deadline",)
    adm.expired(slow, sim.clock() + 5.0)
    assert len(adm.calibration["ttft"].ratios) == 1 and [r for _, r in adm.calibration["e2e"].ratios] == [10.0]
    unpredicted = request(sim, SLO(deadline_ms=20_000))
    unpredicted.missed = ("deadline",)
    adm.expired(unpredicted, sim.clock() + 30.0)  # (nothing predicted: nothing learned)
    assert len(adm.calibration["e2e"].ratios) == 1


def test_the_engine_learns_from_admitted_requests_that_expire(tiny_llama):
    clock = Clock()
    engine = timed_engine(tiny_llama[1], clock)
    engine.add_request(EngineRequest("late", list(range(3, 43)), SamplingParams(max_tokens=4), slo=SLO(ttft_ms=100)))
    first = engine.requests["late"][0].predicted[0]
    clock.t += 1.0  # (the engine stalled: it can no longer make its first token in 100 ms)
    assert [o.finish_reason for o in engine.step()] == ["expired"]
    assert [r for _, r in engine.slo_admission.calibration["ttft"].ratios] == [pytest.approx(1.0 / first)]


def test_a_deadline_met_late_against_its_prediction_counts_as_on_time():
    """The slack policy holds a batch request back while it has time to spare: finishing at 15 s
    where 2 s was predicted, inside its 20 s, is no error of the prediction. A miss still counts
    by how far it ran."""
    sim = Sim()
    adm = SLOAdmission(sim.sched, sim.cost, StepIntervals(), sim.clock, confidence=0.9)
    adm.finished(admitted(sim, SLO(deadline_ms=20_000), (0.5, 2.0)), sim.clock() + 15.0)
    adm.finished(admitted(sim, SLO(deadline_ms=20_000), (0.5, 2.0)), sim.clock() + 1.0)  # (early: as it ran)
    adm.finished(admitted(sim, SLO(deadline_ms=20_000), (0.5, 2.0)), sim.clock() + 25.0)
    assert [r for _, r in adm.calibration["e2e"].ratios] == [1.0, 0.5, 12.5]


def test_slack_counts_tokens_at_the_pace_prompt_chunks_leave_them():
    """Half the recent time went to prompt chunks: a deadline request's tokens come about twice
    a decode step apart (as admission predicts them), so it has that much less slack, and the
    policy starts it that much sooner."""
    sim = Sim()
    sim.sched.intervals = si = StepIntervals(horizon=10.0)
    for i in range(10):  # a decode-only step of 15 ms (4 ms past the model's 11 ms), then a
        # step of 515 ms with prompt chunks (515 - 11 - 4 = 500 ms of them): 10 times in the last 10 s
        si.observe(90.0 + i, 0.015, 0.011, prefill=False)
        si.observe(90.0 + i + 0.5, 0.515, 0.011, prefill=True)
    seq = request(sim, SLO(deadline_ms=5000), max_tokens=11)
    ctx = sim.sched.context()
    assert ctx.overhead == pytest.approx(0.004) and ctx.prefill_load == pytest.approx(0.5)
    per_token = (0.011 + 0.004) / (1 - 0.5)  # (under a step with a full chunk of 63 tokens: 78 ms)
    assert ctx.token_time(1, seq.num_tokens) == pytest.approx(per_token)
    assert ctx.decode_eta(seq) == pytest.approx(11 * per_token)
    assert ctx.slack(seq) == pytest.approx(5.0 - ctx.prefill_eta(seq) - 11 * per_token)
    calm = sim.sched.context()
    calm.overhead = calm.prefill_load = 0.0  # (as the policy counted before: a decode step a token)
    assert ctx.slack(seq) == pytest.approx(calm.slack(seq) - 11 * (per_token - 0.011))
    # a running request ends by itself (frees its place) at that pace too: the urgency test
    # compares a waiting request's slack with it
    sim.sched.running.append(run := request(sim, SLO(deadline_ms=5000), max_tokens=11))
    run.token_ids.append(7)
    run.num_computed = run.num_tokens - 1  # (decoding: a batch of 1, as ``per_token`` counts)
    assert sim.sched._natural_wait(sim.sched.context()) == pytest.approx(10 * per_token)


def test_decode_eta_follows_the_context_and_the_cost_model():
    """``decode_eta`` keeps its per-token line for a round: it must still be ``token_time`` of
    the batch with the request after the context's load is set, after the cost model is refit,
    and with prompt chunks filling every step (load 1: full steps)."""
    sim = Sim()
    seq = request(sim, SLO(deadline_ms=5000), max_tokens=11)
    ctx = sim.sched.context()
    ctx.decode_seqs, ctx.decode_ctx = 3, 900

    def want() -> float:
        return 11 * max(ctx.token_time(4, 900 + seq.num_tokens), ctx.decode_pace)

    assert ctx.decode_eta(seq) == pytest.approx(want())
    ctx.overhead, ctx.prefill_load = 0.004, 0.5
    assert ctx.decode_eta(seq) == pytest.approx(want()) and want() > 11 * 0.015
    sim.cost.weights = sim.cost.weights * 3
    assert ctx.decode_eta(seq) == pytest.approx(want())
    ctx.prefill_load = 1.0
    assert ctx.decode_eta(seq) == pytest.approx(want())
    ctx.decode_pace = 10.0
    assert ctx.decode_eta(seq) == pytest.approx(110.0)


@pytest.mark.parametrize("yield_slack_s", [1.0, 0.0])
def test_a_first_token_predicted_counts_the_decodes_that_yield_to_it(yield_slack_s):
    """Four batch decodes with 20 s to spare yield their turn to an interactive prompt of 60
    tokens (``yielding_decodes``): admission predicts its prefill next to the one decode left
    (a 72 ms step, at the share of the TPOT request's 38 ms pace that a 12 ms decode step leaves),
    not next to five (59 + 1 tokens in steps of 79 and 21 ms, at the share a 20 ms step leaves).
    Either way the prediction is not below what the scheduler then delivers."""
    sim = decoding_batch(yield_slack_s)
    ask = Sequence(99, "ask", 0, list(range(1, 61)), SamplingParams(max_tokens=4), arrival_time=sim.clock(),
                   slo=SLO(ttft_ms=2000))
    first = predict(sim.sched, sim.cost, StepIntervals(), ask)[0]
    expected = 0.072 / (1 - 0.012 / 0.038) if yield_slack_s else 0.100 / (1 - 0.020 / 0.038)
    assert first == pytest.approx(expected)
    sim.sched.add(ask)
    for _ in range(3):
        sim.step()
    assert ask.first_token_time - ask.arrival_time <= first
