"""CUDA path: greedy equality with transformers on the GPU. Skips cleanly without a GPU."""

from __future__ import annotations

import pytest
import torch

from kairos.wire.sampling_params import SamplingParams

from conftest import hf_greedy
from engine_helpers import GREEDY, make_engine, prompts_of, run

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]


@pytest.fixture(autouse=True)
def _graph_records_in_tmp(tmp_path, monkeypatch):
    """Capture records go to a test folder, not the user's ~/.cache/kairos/graphs."""
    monkeypatch.setattr("kairos.loader.tokenizer.cache_dir", lambda: tmp_path)  # (read at each use)


def test_greedy_equals_transformers_on_cuda(tiny_model):
    model, path = tiny_model
    prompts = prompts_of([5, 17, 33, 1])
    refs = [hf_greedy(model, p, 16) for p in prompts]  # reference on the CPU, float32
    engine = make_engine(path, device="cuda", dtype="float32", max_num_batched_tokens=16,
                         kv_cache_memory="256MiB")  # (not 90% of the GPU: engines of other tests share it)
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
        engine = make_engine(path, device="cuda", dtype="float32", max_num_seqs=8, cuda_graphs=graphs,
                             kv_cache_memory="256MiB")
        assert (engine.runner.graphs is not None) == graphs  # the Triton kernel passed its check and sizes were captured
        done = run(engine, {0: [(str(i), p, params) for i, p in enumerate(prompts[:3])],
                            3: [(str(i), p, params) for i, p in enumerate(prompts[3:], 3)]})
        outs.append([done[(str(i), 0)][0] for i in range(len(prompts))])
    assert outs[0] == outs[1] == [hf_greedy(model, p, 16) for p in prompts]


def test_sampling_queues_on_the_gpu_without_waiting_for_it():
    from kairos.worker.sampler import Sampler, SamplingRow

    dev = torch.device("cuda")
    logits = torch.randn(5, 1000, generator=torch.Generator().manual_seed(0)).to(dev)
    sampler = Sampler(dev, 0)
    rows = [SamplingRow(SamplingParams(**GREEDY, logprobs=3), None, [], []),
            SamplingRow(SamplingParams(temperature=0.8, top_k=20, top_p=0.9), None, [], []),
            SamplingRow(SamplingParams(temperature=1.0, min_p=0.1, seed=7), sampler.new_generator(7), [], []),
            SamplingRow(SamplingParams(temperature=1.0, repetition_penalty=1.3, frequency_penalty=0.5, logprobs=0),
                        None, [1, 2, 3], [4, 4]),
            SamplingRow(SamplingParams(**GREEDY), None, [], [])]
    sampler(logits, rows)  # warm-up: lazy CUDA inits and the first pinned buffers may synchronise
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any implicit host sync raises
    try:
        out = sampler.sample(logits, rows)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    host = sampler.to_host(out, rows)
    expected = logits.cpu().log_softmax(-1)
    assert [host.token_ids[0], host.token_ids[4]] == [int(expected[0].argmax()), int(expected[4].argmax())]
    lp, top = host.logprobs[0]
    assert lp == pytest.approx(expected[0].max().item(), abs=1e-5)
    assert [t for t, _ in top] == expected[0].topk(3).indices.tolist()
    assert host.logprobs[3][1] == [] and host.logprobs[1] is None
    # a seeded row draws from its own generator on the device: the same seed, the same tokens
    # whatever the sampler's own seed
    draws = []
    for own_seed in (1, 2):
        s = Sampler(dev, own_seed)
        row = SamplingRow(rows[2].params, s.new_generator(7), [], [])
        draws.append([s(logits[2:3], [row]).token_ids[0] for _ in range(8)])
    assert draws[0] == draws[1]


def test_async_steps_equal_transformers_and_read_their_tokens_without_waiting_for_the_next(tiny_llama):
    from kairos.wire.outputs import EngineRequest

    model, path = tiny_llama
    prompts = prompts_of([5, 17, 33])
    engine = make_engine(path, device="cuda", dtype="float32", kv_cache_memory="256MiB")
    assert engine.config.scheduler.async_scheduling  # the default on GPUs
    for i, p in enumerate(prompts):
        engine.add_request(EngineRequest(str(i), p, SamplingParams(max_tokens=12, **GREEDY)))
    tokens: dict[str, list[int]] = {str(i): [] for i in range(len(prompts))}
    flight, checked = engine.launch(), False
    while flight is not None:
        if not checked:
            torch.cuda._sleep(1_000_000_000)  # ~0.5 s of device work between this step and the next
        ahead = engine.launch() if engine.can_launch_ahead() else None
        outs = engine.finish(flight)
        if not checked and ahead is not None and ahead.sample is not None:
            # step N's tokens came back while step N+1 (behind the sleep) is still queued
            assert not ahead.sample.host.event.query()
            checked = True
        for o in outs:
            tokens[o.request_id] += o.new_token_ids
        flight = ahead if ahead is not None else (engine.launch() if engine.has_unfinished() else None)
    assert checked
    assert [tokens[str(i)] for i in range(len(prompts))] == [hf_greedy(model, p, 12) for p in prompts]


def test_constrained_biased_sampling_on_cuda_equals_the_cpu(tiny_tok):
    import json

    from kairos import LLM, StructuredOutput

    _, path, _ = tiny_tok
    schema = {"type": "object", "properties": {"a": {"enum": ["yes", "no"]}, "b": {"type": "integer", "maximum": 99}},
              "required": ["a", "b"], "additionalProperties": False, "x-guidance": {"whitespace_flexible": False}}
    specs = [StructuredOutput(json=json.dumps(schema)), StructuredOutput(regex=r"[0-9]{2}-[a-z]{1,3}"), None,
             StructuredOutput(choice=("yes", "no", "maybe"))]
    params = [SamplingParams(max_tokens=16, temperature=0.0, structured=s, min_tokens=2, logit_bias={7: 3.0, 2: 1.0})
              for s in specs]
    prompts = prompts_of([5, 11, 8, 3], vocab=280)
    outs = {}
    for device in ("cpu", "cuda"):  # (the GPU unpacks the grammar's bitmask on the device)
        llm = LLM(str(path), device=device, dtype="float32", kv_cache_memory="256MiB", max_model_len=128)
        outs[device] = [(r.outputs[0].token_ids, r.outputs[0].finish_reason) for r in llm.generate(prompts, params)]
    assert outs["cuda"] == outs["cpu"]
    assert [why for _, why in outs["cpu"]] == ["stop", "stop", "length", "stop"]


def test_drafted_steps_and_prompt_logprobs_on_cuda(tiny_llama):
    """Speculative rows run as decode rows (CUDA graphs where the rows fit a captured size, eager
    beyond): greedy outputs equal HF's; prompt logprobs on the device equal the CPU's."""
    from kairos import LLM

    model, path = tiny_llama
    prompts = [[5, 6, 7, 8, 9] * 3, [11, 12, 13] * 3, prompts_of([9])[0]]
    llm = LLM(str(path), device="cuda", dtype="float32", kv_cache_memory="256MiB", speculative_tokens=4,
              max_num_seqs=4)
    outs = llm.generate(prompts, SamplingParams(max_tokens=60, **GREEDY))
    assert llm.engine.runner.graphs is not None and llm.engine.stats()["spec_accepted_tokens"] > 0
    assert [o.outputs[0].token_ids for o in outs] == [hf_greedy(model, p, 60) for p in prompts]
    found = {}
    for device in ("cpu", "cuda"):
        lm = LLM(str(path), device=device, dtype="float32", kv_cache_memory="256MiB", max_num_batched_tokens=8)
        r = lm.generate(prompts[:1], SamplingParams(max_tokens=2, prompt_logprobs=3, **GREEDY))[0]
        found[device] = [(p.token_id, [t for t, *_ in p.top]) for p in r.prompt_logprobs[1:]]
        found[device + " values"] = [p.logprob for p in r.prompt_logprobs[1:]]
        found[device + " ranks"] = [p.rank for p in r.prompt_logprobs[1:]]
    assert found["cuda"] == found["cpu"]
    assert found["cuda values"] == pytest.approx(found["cpu values"], abs=1e-4)
    # (a rank may move by one where two logprobs tie to float noise)
    assert all(abs(a - b) <= 1 for a, b in zip(found["cuda ranks"], found["cpu ranks"]))
