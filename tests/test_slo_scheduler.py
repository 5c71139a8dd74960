"""Deadline-aware scheduling, deterministic: an injected clock and a fixed cost model, no model weights."""

from __future__ import annotations

import pytest

from kairos.config import SchedulerConfig
from kairos.engine.core import SLOInfeasible
from kairos.engine.cost_model import CostModel
from kairos.engine.kv_cache import KVCacheManager
from kairos.engine.outputs import EngineRequest
from kairos.engine.sampling_params import SamplingParams
from kairos.engine.scheduler import Scheduler
from kairos.engine.sequence import SeqStatus, Sequence
from kairos.engine.slo import SLO

# 10 ms per step + 1 ms per prefill token + 1 ms per decoding sequence
COST = (0.010, 0.1, 0.01, 0.0)


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


class Sim:
    """Scheduler + KV manager driven step by step; the clock advances by the cost model's step time."""

    def __init__(self, policy="slack", num_blocks=64, block_size=4, max_num_seqs=8, budget=64, starve_steps=64):
        self.clock = Clock()
        self.cost = CostModel(COST, frozen=True)
        cfg = SchedulerConfig(max_num_seqs=max_num_seqs, max_num_batched_tokens=budget,
                              scheduling_policy=policy, starve_steps=starve_steps)
        self.sched = Scheduler(cfg, KVCacheManager(num_blocks, block_size), self.cost, self.clock)
        self.ids = iter(range(10_000))
        self.admitted: list[str] = []  # request ids in order of their first scheduled step
        self.finished: list[str] = []

    def add(self, rid, prompt_len, max_tokens=4, slo=None, priority=0) -> Sequence:
        seq = Sequence(next(self.ids), rid, 0, list(range(1, prompt_len + 1)), SamplingParams(max_tokens=max_tokens),
                       arrival_time=self.clock(), slo=slo, priority=priority)
        self.sched.add(seq)
        return seq

    def step(self):
        out = self.sched.schedule()
        prefill = sum(s.num_new_tokens for s in out.scheduled if s.num_new_tokens > 1)
        decodes = sum(1 for s in out.scheduled if s.num_new_tokens == 1)
        for s in out.scheduled:
            if s.seq.request_id not in self.admitted:
                self.admitted.append(s.seq.request_id)
        samples = [s.samples for s in out.scheduled]
        self.sched.update(out)
        self.clock.t += self.cost.step_time(prefill, decodes, 0)
        for s, sampled in zip(out.scheduled, samples):
            if sampled:
                s.seq.token_ids.append(7)
                s.seq.first_token_time = s.seq.first_token_time or self.clock()
                if s.seq.num_output_tokens >= s.seq.params.max_tokens:
                    self.sched.finish(s.seq)
                    self.finished.append(s.seq.request_id)
        return out

    def run(self, max_steps=500):
        for _ in range(max_steps):
            if not self.sched.has_work():
                return
            self.step()
        raise AssertionError("did not finish")


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
    from kairos.config import EngineConfig
    from kairos.engine.core import EngineCore

    engine = EngineCore(EngineConfig.from_kwargs(model=str(tiny_llama[1]), block_size=4), clock=clock,
                        cost_model=CostModel(COST, frozen=True))
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
    # 60 ms - (10 ms + 1 decode * 1 ms) leaves 49 ms = 49 prefill tokens at 1 ms each
    assert {s.seq.request_id: s.num_new_tokens for s in out.scheduled} == {"chat": 1, "big": 49}
    sim2 = Sim(budget=512, num_blocks=256)  # without a TPOT objective the whole budget is used
    sim2.add("chat", 4, max_tokens=50, slo=SLO(ttft_ms=5000))
    sim2.step()
    sim2.add("big", 400, max_tokens=2)
    assert {s.seq.request_id: s.num_new_tokens for s in sim2.step().scheduled} == {"chat": 1, "big": 400}
