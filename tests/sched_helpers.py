"""A scheduler driven step by step on an injected clock and a fixed cost model, no model weights."""

from __future__ import annotations

import threading

from kairos.config import SchedulerConfig
from kairos.kv.manager import KVCacheManager
from kairos.sched.cost_model import CostModel
from kairos.sched.scheduler import Scheduler
from kairos.sched.sequence import Sequence
from kairos.wire.sampling_params import SamplingParams

# 10 ms per step + 1 ms per prefill token + 1 ms per decoding sequence
COST = (0.010, 0.1, 0.01, 0.0)


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


class Sim:
    """Scheduler + KV manager driven step by step; the clock advances by the cost model's step time."""

    def __init__(self, policy="slack", num_blocks=64, block_size=4, max_num_seqs=8, budget=64, starve_steps=64,
                 **config):
        self.clock = Clock()
        self.cost = CostModel(COST, frozen=True)
        cfg = SchedulerConfig(max_num_seqs=max_num_seqs, max_num_batched_tokens=budget,
                              scheduling_policy=policy, starve_steps=starve_steps, **config)
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


def timed_engine(model_dir, clock, **kwargs):
    """An EngineCore of the model in ``model_dir`` (block size 4) on ``clock``, with the fixed
    cost model ``COST``."""
    from kairos.config import EngineConfig
    from kairos.engine.core import EngineCore

    return EngineCore(EngineConfig.from_kwargs(model=str(model_dir), block_size=4, **kwargs), clock=clock,
                      cost_model=CostModel(COST, frozen=True))


def hold_grammars(engine) -> threading.Event:
    """Every grammar compile of ``engine`` waits (at most 30 s) until the returned event is set."""
    gate = threading.Event()
    compile_ = engine.structured._compile
    engine.structured._compile = lambda spec: (gate.wait(30), compile_(spec))[1]
    return gate


def decoding_batch(yield_slack_s: float) -> Sim:
    """A TPOT request (40 ms) and four batch requests (deadline 20 s) decoding, 90 ms in, on a
    cost model where a decode row costs 2 ms and a prompt token 1 ms (the yield tests' scene)."""
    from kairos.wire.slo import SLO

    sim = Sim(budget=64, max_num_seqs=16, yield_slack_s=yield_slack_s)
    sim.cost = sim.sched.cost = CostModel((0.010, 0.1, 0.02, 0.0), frozen=True)
    sim.add("chat", 8, max_tokens=40, slo=SLO(tpot_ms=40))
    for i in range(4):
        sim.add(f"b{i}", 8, max_tokens=40, slo=SLO(deadline_ms=20_000))
    for _ in range(3):  # (the prompts' step: 10 + 40 ms; two of 5 decodes: 20 ms each)
        sim.step()
    return sim
