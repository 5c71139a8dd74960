"""benchmarks/slo_sim.py: the engine in virtual time. What the comparisons of builds rest on."""

from __future__ import annotations

import importlib.util
import io
import json
from pathlib import Path

from kairos.bench.workloads import SLO, RequestSpec
from kairos.wire.outputs import EngineRequest
from kairos.wire.sampling_params import SamplingParams
from sched_helpers import Clock

SIM = Path(__file__).resolve().parents[1] / "benchmarks" / "slo_sim.py"


def load_sim():
    spec = importlib.util.spec_from_file_location("slo_sim", SIM)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_simulation_is_the_same_every_run_and_each_request_ends_once(tiny_llama):
    sim = load_sim()
    fast, tight = SLO("interactive", ttft_ms=800, tpot_ms=120), SLO("tight", ttft_ms=1)
    batch = SLO("batch", deadline_ms=20_000)
    specs = [RequestSpec(i, 0.25 * i, "", 20 + 7 * i, 8 + i, [fast, batch][i % 2]) for i in range(12)]
    specs.append(RequestSpec(12, 1.0, "", 40, 4, tight))  # (no first token comes in 1 ms)
    plan = {"mix": [specs[:6], specs[6:]]}  # (the second round after 12 s idle)
    logs = [io.StringIO(), io.StringIO()]
    results = [sim.simulate(str(tiny_llama[1]), plan, 21, 0.1, 0.01, {}, log, drift=0.0) for log in logs]
    assert results[0] == results[1] and logs[0].getvalue() == logs[1].getvalue()
    rows = [json.loads(line) for line in logs[0].getvalue().splitlines()]
    assert [r["id"] for r in rows] == [f"mix-{k}-{j}" for k in (0, 1) for j in range(len(plan["mix"][k]))]
    assert [r["outcome"] for r in rows] == ["ok"] * 12 + ["refused"]
    assert "predicted TTFT" in rows[-1]["why"] and [r[:2] for r in results[0]["mix"]][-1] == ["tight", "refused"]
    # light load: every admitted request met its SLO, with all its tokens, after its arrival
    assert all(r["met"] and r["n"] == s.max_tokens for r, s in zip(rows[:12], specs))
    assert all(0 < r["ttft"] <= r["e2e"] for r in rows[:12])
    assert [r["ends"] for r in rows] == [1] * 12 + [0]  # (one outcome each: a last output, or the 429)
    assert rows[6]["arrival"] == 1.5  # (its send time, from its round's start)


def test_the_cost_model_times_steps_with_the_engines_timer(tiny_llama):
    """The simulation charges each step virtual seconds: the cost model learns those, not the
    host's time (a launched step runs until ``finish`` reads the timer)."""
    from kairos.config import EngineConfig
    from kairos.engine.core import EngineCore

    clock = Clock()
    engine = EngineCore(EngineConfig.from_kwargs(model=str(tiny_llama[1]), block_size=4, device="cpu"), clock=clock,
                        timer=clock)
    engine.add_request(EngineRequest("a", list(range(3, 13)), SamplingParams(max_tokens=3)))
    for seconds in (0.25, 0.125):
        flight = engine.launch()
        clock.t += seconds
        engine.finish(flight)
    assert [s[1] for s in engine.cost.samples] == [0.25, 0.125]
    assert [s[0][1] for s in engine.cost.samples] == [0.1, 0.0]  # (10 prompt tokens, then a decode)
