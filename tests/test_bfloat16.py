"""bfloat16 on the CPU (``auto`` on CPUs with AVX512-BF16 or AMX; elsewhere torch emulates it):
the engine equals transformers in bfloat16 token for token, with chunked prefill, preemption and
the prefix cache on and off."""

from __future__ import annotations

import copy

import pytest
import torch

from kairos.wire.sampling_params import SamplingParams

from conftest import hf_greedy
from engine_helpers import GREEDY, assert_pool_whole, make_engine, prompts_of, run


@pytest.fixture(scope="module")
def bf16_llama(tiny_llama):
    model, path = tiny_llama
    return copy.deepcopy(model).to(torch.bfloat16), path


@pytest.mark.parametrize("prefix_cache", [True, False])
def test_bf16_greedy_equals_transformers_bf16_chunked_and_cached(bf16_llama, prefix_cache):
    model, path = bf16_llama
    system = prompts_of([24])[0]
    prompts = [system + p for p in prompts_of([3, 11, 17, 1])] + prompts_of([29])
    refs = [hf_greedy(model, p, 10) for p in prompts]
    # a 16-token budget: every prompt runs in chunks; the later ones find the shared prefix cached
    engine = make_engine(path, dtype="bfloat16", block_size=4, max_num_batched_tokens=16, prefix_cache=prefix_cache)
    assert engine.dtype == torch.bfloat16
    params = SamplingParams(max_tokens=10, **GREEDY)
    arrivals = {0: [("0", prompts[0], params)], 5: [(str(i), p, params) for i, p in enumerate(prompts[1:], 1)]}
    done = run(engine, arrivals)
    assert [done[(str(i), 0)][0] for i in range(len(prompts))] == refs
    if prefix_cache:
        assert engine.stats()["prefix_cache_hit_tokens"] >= 3 * 24
    assert_pool_whole(engine)


def test_bf16_preemption_and_recompute_equal_transformers_bf16(bf16_llama):
    model, path = bf16_llama
    prompts = prompts_of([14, 9, 18, 6])
    refs = [hf_greedy(model, p, 12) for p in prompts]
    # 12 blocks of 4 tokens hold two of these at a time: the others are preempted and recomputed
    engine = make_engine(path, dtype="bfloat16", block_size=4, num_blocks=13, max_num_batched_tokens=32)
    params = SamplingParams(max_tokens=12, **GREEDY)
    done = run(engine, {0: [(str(i), p, params) for i, p in enumerate(prompts)]})
    assert [done[(str(i), 0)][0] for i in range(len(prompts))] == refs
    assert engine.scheduler.num_preemptions > 0
    assert_pool_whole(engine)
