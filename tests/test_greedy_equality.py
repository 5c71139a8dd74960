"""Greedy output equals Hugging Face transformers token for token, however the engine batches."""

from __future__ import annotations

import pytest

from kairos.kernels import cpu as cpu_kernels
from kairos.wire.sampling_params import SamplingParams

from conftest import hf_greedy
from engine_helpers import GREEDY, assert_pool_whole, make_engine, prompts_of, run

LENGTHS = [5, 17, 33, 1, 64, 40]
MAX_NEW = 24


@pytest.fixture(scope="module")
def references(tiny_model):
    model, path = tiny_model
    prompts = prompts_of(LENGTHS)
    return path, prompts, [hf_greedy(model, p, MAX_NEW) for p in prompts]


def _check(engine, prompts, refs, arrivals=None):
    params = SamplingParams(max_tokens=MAX_NEW, **GREEDY)
    if arrivals is None:
        arrivals = {0: [(str(i), p, params) for i, p in enumerate(prompts)]}
    done = run(engine, arrivals)
    for i, ref in enumerate(refs):
        assert done[(str(i), 0)] == (ref, "length"), f"prompt {i} (len {len(prompts[i])})"
    assert_pool_whole(engine)


def test_batched(references):
    path, prompts, refs = references
    engine = make_engine(path)
    assert engine.runner.decode_kernel == (cpu_kernels.load() is not None)  # the C decode attention, where it runs
    _check(engine, prompts, refs)


def test_batched_torch_attention(references):
    path, prompts, refs = references
    engine = make_engine(path, cpu_kernels=False)
    assert not engine.runner.decode_kernel
    _check(engine, prompts, refs)


def test_chunked_prefill(references):
    path, prompts, refs = references
    engine = make_engine(path, max_num_batched_tokens=7)  # every prompt > 7 tokens is split
    _check(engine, prompts, refs)


def test_chunked_prefill_with_kv_expanded_for_masked_gqa(references, monkeypatch):
    # the CUDA path of masked grouped-query prefill (K/V repeated to the query heads), run here
    from kairos.layers import attention

    path, prompts, refs = references
    monkeypatch.setattr(attention, "expand_masked_gqa", lambda device: True)
    engine = make_engine(path, max_num_batched_tokens=7)
    _check(engine, prompts, refs)


def test_preemption(references):
    path, prompts, refs = references
    # 12 usable blocks of 8 tokens: the six sequences (up to 88 tokens each) cannot all fit
    engine = make_engine(path, block_size=8, num_blocks=13)
    params = SamplingParams(max_tokens=MAX_NEW, **GREEDY)
    preempted = []
    orig = engine.scheduler._preempt

    def spy(seq, out):
        preempted.append(seq.request_id)
        orig(seq, out)

    engine.scheduler._preempt = spy
    done = run(engine, {0: [(str(i), p, params) for i, p in enumerate(prompts)]})
    assert preempted, "the pool was sized to force preemption"
    assert engine.stats()["num_preemptions"] == len(preempted)  # (in /stats and /metrics)
    for i, ref in enumerate(refs):
        assert done[(str(i), 0)] == (ref, "length")
    assert_pool_whole(engine)


def test_arrivals_mid_run(references):
    path, prompts, refs = references
    params = SamplingParams(max_tokens=MAX_NEW, **GREEDY)
    arrivals = {3 * i: [(str(i), p, params)] for i, p in enumerate(prompts)}
    _check(make_engine(path, max_num_batched_tokens=16), prompts, refs, arrivals)


@pytest.mark.parametrize("cpu_kernels", [True, False])
def test_unwritten_kv_memory_is_never_read(references, cpu_kernels):
    # The cache is torch.empty (pages are touched only when used), so unused slots hold anything:
    # fill them with NaN and serve prompts twice (the second time from the prefix cache, as a
    # chunk that attends to cached blocks with masked slots past its end).
    path, prompts, refs = references
    engine = make_engine(path, block_size=4, num_blocks=256, cpu_kernels=cpu_kernels)
    for k, v in engine.runner.kv_caches:
        k.fill_(float("nan"))
        v.fill_(float("nan"))
        k[0].zero_()  # the null block is zeroed by the runner
        v[0].zero_()
    _check(engine, prompts, refs)
    params = SamplingParams(max_tokens=MAX_NEW, **GREEDY)
    again = run(engine, {0: [(f"again-{i}", p, params) for i, p in enumerate(prompts)]})
    for i, ref in enumerate(refs):
        assert again[(f"again-{i}", 0)] == (ref, "length"), f"prompt {i} from the prefix cache"
