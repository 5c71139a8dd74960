"""Decode graphs: the static buffers, padding and dispatch of engine.decode_graphs, on CPU.

``eager_capture`` stands in for a CUDA graph (it re-runs the captured callable over the same
static buffers), so everything but the capture itself is checked here; the CPU decode kernel
reads the same block tables the Triton one does on a GPU.
"""

from __future__ import annotations

import pytest

from kairos.kernels import cpu
from kairos.wire.sampling_params import SamplingParams
from kairos.worker.decode_graphs import capture_sizes, eager_capture

from conftest import hf_greedy
from engine_helpers import GREEDY, make_engine, prompts_of, run

pytestmark = pytest.mark.skipif(cpu.load() is None, reason="the CPU decode kernel is needed for static block tables")


def test_capture_sizes():
    assert capture_sizes(64) == [1, 2, 4, *range(8, 65, 8)]
    assert capture_sizes(6) == [1, 2, 4, 6]
    assert capture_sizes(1) == [1]


def test_graph_steps_equal_transformers_and_pad_to_the_next_size(tiny_llama, monkeypatch):
    model, path = tiny_llama
    engine = make_engine(path, block_size=4, max_num_seqs=8, num_blocks=64)
    runner = engine.runner
    runner.enable_decode_graphs(capture_sizes(8), engine.max_model_len, eager_capture, budget_s=60)
    assert sorted(runner.graphs.graphs) == [1, 2, 4, 8]
    # every size's output is a view of one [8, vocab] buffer (not a pool allocation per size)
    outs = [out for _, out in runner.graphs.graphs.values()]
    assert {o.data_ptr() for o in outs} == {runner.graphs.out.data_ptr()} and runner.graphs.out.shape == (8, 320)
    used = []
    real = runner.graphs.run
    monkeypatch.setattr(runner.graphs, "run", lambda *a: used.append(len(a[0])) or real(*a))
    prompts = prompts_of([5, 17, 33, 1, 9])
    params = SamplingParams(max_tokens=12, **GREEDY)
    # three at once, two more later: decode steps of 3 (padded to 4) and 5 (padded to 8)
    done = run(engine, {0: [(str(i), p, params) for i, p in enumerate(prompts[:3])],
                        4: [(str(i), p, params) for i, p in enumerate(prompts[3:], 3)]})
    assert [done[(str(i), 0)][0] for i in range(5)] == [hf_greedy(model, p, 12) for p in prompts]
    assert {3, 5} <= set(used)
    assert runner.graphs.size_for(3) == 4 and runner.graphs.size_for(5) == 8 and runner.graphs.size_for(9) is None


def test_a_graph_that_disagrees_with_the_eager_step_is_not_used(tiny_llama):
    engine = make_engine(tiny_llama[1], block_size=4, max_num_seqs=4, num_blocks=32)

    def drifting(fn):  # a "graph" whose replays come out different from the eager forward
        out = fn()
        return (lambda: out.copy_(fn() + 1.0)), out

    engine.runner.enable_decode_graphs(capture_sizes(4), engine.max_model_len, drifting, budget_s=60)
    assert engine.runner.graphs is None  # every step runs eagerly
    done = run(engine, {0: [("a", [5, 6, 7], SamplingParams(max_tokens=3, **GREEDY))]})
    assert len(done[("a", 0)][0]) == 3


def test_checks_need_free_blocks_and_graphs_need_the_decode_kernel(tiny_llama):
    engine = make_engine(tiny_llama[1], block_size=4, max_num_seqs=8, num_blocks=6)
    engine.runner.enable_decode_graphs(capture_sizes(8), engine.max_model_len, eager_capture, budget_s=60)
    assert sorted(engine.runner.graphs.graphs) == [1, 2, 4]  # 8 rows would need blocks 1..8 to check
    engine = make_engine(tiny_llama[1], block_size=4, cpu_kernels=False)
    with pytest.raises(ValueError, match="decode graphs need a decode-attention kernel"):
        engine.runner.enable_decode_graphs([1, 2], engine.max_model_len, eager_capture, budget_s=60)
