"""CUDA path: greedy equality with transformers on the GPU. Skips cleanly without a GPU."""

from __future__ import annotations

import pytest
import torch

from kairos.engine.sampling_params import SamplingParams

from conftest import hf_greedy
from engine_helpers import GREEDY, make_engine, prompts_of, run

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]


def test_greedy_equals_transformers_on_cuda(tiny_model):
    model, path = tiny_model
    prompts = prompts_of([5, 17, 33, 1])
    refs = [hf_greedy(model, p, 16) for p in prompts]  # reference on the CPU, float32
    engine = make_engine(path, device="cuda", dtype="float32", max_num_batched_tokens=16)
    params = SamplingParams(max_tokens=16, **GREEDY)
    done = run(engine, {0: [(str(i), p, params) for i, p in enumerate(prompts)]})
    assert [done[(str(i), 0)][0] for i in range(len(prompts))] == refs
    assert engine.runner.kv_caches[0][0].is_cuda


def test_cuda_graph_steps_equal_eager_steps(tiny_model):
    model, path = tiny_model
    prompts = prompts_of([5, 17, 33, 1, 9])
    params = SamplingParams(max_tokens=16, **GREEDY)
    outs = []
    for graphs in (True, False):
        engine = make_engine(path, device="cuda", dtype="float32", max_num_seqs=8, cuda_graphs=graphs)
        assert (engine.runner.graphs is not None) == graphs  # the Triton kernel passed its check and sizes were captured
        done = run(engine, {0: [(str(i), p, params) for i, p in enumerate(prompts[:3])],
                            3: [(str(i), p, params) for i, p in enumerate(prompts[3:], 3)]})
        outs.append([done[(str(i), 0)][0] for i in range(len(prompts))])
    assert outs[0] == outs[1] == [hf_greedy(model, p, 16) for p in prompts]
