"""SLO admission's predictions: time per token from decode steps and prefill load, and what the
calibration learns from. Deterministic: an injected clock and a fixed cost model."""

from __future__ import annotations

import pytest

from kairos.engine.admission import SLOAdmission, predict
from kairos.engine.cost_model import CostModel, StepIntervals
from kairos.engine.outputs import EngineRequest
from kairos.engine.sampling_params import SamplingParams
from kairos.engine.sequence import Sequence
from kairos.engine.slo import SLO
from sched_helpers import COST, Clock, Sim

# COST: a decode-only step of one sequence takes 11 ms, of two 12 ms


def request(sim: Sim, slo: SLO, max_tokens: int = 11) -> Sequence:
    return Sequence(9_000, "r", 0, list(range(1, 9)), SamplingParams(max_tokens=max_tokens),
                    arrival_time=sim.clock(), slo=slo)


def test_a_burst_after_idling_is_not_the_time_per_token():
    # the engine idled, then spent 0.5 s on the prompts of a burst's first arrivals: two steps of
    # 250 ms, 240 ms of each past a decode step. Tokens come a decode step apart, stretched by
    # that share of the last 10 s (4.8%), not 250 ms apart.
    sim = Sim()
    si = StepIntervals(horizon=10.0)
    si.observe(99.75, 0.25, 0.24)
    si.observe(100.0, 0.25, 0.24)
    assert si.mean(100.0) == pytest.approx(0.25) and si.decode_mean(100.0) == 0.0
    assert si.prefill_load(100.0) == pytest.approx(0.048)
    first, tpot, last = predict(sim.sched, sim.cost, si, request(sim, SLO(deadline_ms=5000)))
    assert tpot == pytest.approx(0.011 / (1 - 0.048))
    assert last - first == pytest.approx(10 * tpot)


def test_tokens_come_a_decode_step_apart_stretched_by_the_prefill_load():
    sim = Sim(budget=256)
    si = StepIntervals(horizon=10.0)
    t = 90.0
    for i in range(90):  # 50 decode-only steps of 40 ms, 40 steps of 200 ms (160 ms prefill): 10 s
        t += 0.04 if i % 9 < 5 else 0.2
        si.observe(t, 0.04, None) if i % 9 < 5 else si.observe(t, 0.2, 0.16)
    assert t == pytest.approx(100.0) and si.decode_mean(t) == pytest.approx(0.04)
    assert si.prefill_load(t) == pytest.approx(0.64)
    _, tpot, _ = predict(sim.sched, sim.cost, si, request(sim, SLO(deadline_ms=5000)))
    # a busy window: the decode step over the share left to it is the mean interval
    assert tpot == pytest.approx(0.04 / 0.36) and tpot == pytest.approx(si.mean(t))
    # a TPOT promise paces the steps: prompt chunks wait, tokens come 0.95 x 100 ms apart
    assert predict(sim.sched, sim.cost, si, request(sim, SLO(tpot_ms=100)))[1] == pytest.approx(0.095)
    # ... but no faster than a decode step
    assert predict(sim.sched, sim.cost, si, request(sim, SLO(tpot_ms=30)))[1] == pytest.approx(0.04)
    # at saturation a token waits at most one step that carries a full chunk: 10 + 255 + 1 ms
    for _ in range(10):
        t += 1.0
        si.observe(t, 1.0, 1.0)
    assert si.prefill_load(t) == pytest.approx(1.0) and si.decode_mean(t) == 0.0
    assert predict(sim.sched, sim.cost, si, request(sim, SLO(deadline_ms=5000)))[1] == pytest.approx(0.266)


def test_calibration_learns_only_from_predictions_of_a_fitted_cost_model():
    sim = Sim()
    sim.cost = CostModel(refit_every=16)  # the defaults, not this engine's
    adm = SLOAdmission(sim.sched, sim.cost, StepIntervals(), sim.clock, 0.9)
    early = request(sim, SLO(ttft_ms=10_000))
    adm.admit(early)
    assert early.promised is not None and early.predicted is None
    for i in range(16):
        sim.cost.observe(16 * (i % 4), 1 + i % 3, 100, 0.02 + 0.001 * i)
    assert sim.cost.fitted
    late = request(sim, SLO(ttft_ms=10_000))
    adm.admit(late)
    assert late.predicted is not None
    for seq in (early, late):
        adm.first_token(seq, sim.clock() + 0.5)
    assert len(adm.calibration["ttft"].ratios) == 1
    assert CostModel(frozen=True).fitted and not CostModel().fitted


def test_the_engine_measures_what_steps_spent_on_prompts(tiny_llama):
    from kairos.config import EngineConfig
    from kairos.engine.core import EngineCore

    clock = Clock()
    engine = EngineCore(EngineConfig.from_kwargs(model=str(tiny_llama[1]), block_size=4, max_num_batched_tokens=16),
                        clock=clock, cost_model=CostModel(COST, frozen=True))
    engine.add_request(EngineRequest("long", list(range(3, 43)), SamplingParams(max_tokens=20)))
    for advance in (0.1, 0.1, 0.03, 0.03):  # chunks of 16, 16 and 8 prompt tokens, then decodes
        engine.step()
        clock.t += advance
    engine.step()
    # the first step came after idling (no interval); the next two: 100 ms, of it 90 ms past the
    # 10 ms of a decode-only step of no sequence; then two decode-only steps of 30 ms
    assert engine.intervals.prefill_load(clock()) == pytest.approx(0.018)
    assert engine.intervals.decode_mean(clock()) == pytest.approx(0.03)
    engine.add_request(EngineRequest("batch", list(range(50, 60)), SamplingParams(max_tokens=10),
                                     slo=SLO(deadline_ms=10_000)))
    assert engine.admission("batch")[1] == pytest.approx(0.03 / (1 - 0.018))
    while engine.has_unfinished():
        engine.step()
