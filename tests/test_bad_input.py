"""Bad input raises a clear ValueError naming the problem, and leaves nothing allocated."""

from __future__ import annotations

import gguf
import pytest

from kairos import LLM, SamplingParams
from kairos.config import CacheConfig, ModelConfig, SchedulerConfig

from engine_helpers import assert_pool_whole, prompts_of


@pytest.fixture(scope="module")
def llm(tiny_llama):
    return LLM(str(tiny_llama[1]), max_model_len=64)


@pytest.mark.parametrize("kwargs,field", [
    ({"max_tokens": 0}, "max_tokens"),
    ({"temperature": -0.1}, "temperature"),
    ({"top_p": 0.0}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
    ({"top_k": -2}, "top_k"),
    ({"min_p": 1.5}, "min_p"),
    ({"n": 0}, "n"),
    ({"repetition_penalty": 0.0}, "repetition_penalty"),
    ({"repetition_penalty": 1e-320}, "repetition_penalty"),  # (0 in float32: logits / 0)
    ({"repetition_penalty": float("inf")}, "repetition_penalty"),
    ({"prompt_logprobs": 21}, "prompt_logprobs"),
    ({"presence_penalty": 3.0}, "presence_penalty"),
    ({"logprobs": 21}, "logprobs"),
    ({"stop": ("",)}, "stop"),
    ({"logit_bias": {3: 100.5}}, "logit_bias"),
    ({"logit_bias": {-3: 1.0}}, "logit_bias"),
    ({"logit_bias": {"5": 1.0}}, "logit_bias"),
    ({"logit_bias": {True: 1.0}}, "logit_bias"),
    ({"logit_bias": ((5, 60.0), (5, 60.0))}, "logit_bias"),
    ({"min_tokens": 17}, "min_tokens"),
    ({"min_tokens": -1}, "min_tokens"),
])
def test_sampling_params_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=rf"^{field} "):
        SamplingParams(**kwargs)


@pytest.mark.parametrize("make,field", [
    (lambda: ModelConfig(dtype="float8"), "dtype"),
    (lambda: ModelConfig(device="tpu"), "device"),
    (lambda: CacheConfig(block_size=12), "block_size"),
    (lambda: CacheConfig(kv_cache_memory="lots"), "size"),
    (lambda: CacheConfig(gpu_memory_utilization=0.0), "gpu_memory_utilization"),
    (lambda: SchedulerConfig(max_num_batched_tokens=0), "max_num_batched_tokens"),
])
def test_configs_validate(make, field):
    with pytest.raises(ValueError, match=field):
        make()


def test_empty_prompt(llm):
    with pytest.raises(ValueError, match="prompt must not be empty"):
        llm.generate([[]])
    assert_pool_whole(llm.engine)


def test_prompt_too_long_leaves_nothing_behind(llm):
    good, long = prompts_of([10])[0], prompts_of([70])[0]
    with pytest.raises(ValueError, match="maximum context length is 64 tokens. However, you requested 86 tokens"):
        llm.generate([good, long], SamplingParams(max_tokens=16))
    assert not llm.engine.has_unfinished()
    assert not llm.processor.states
    assert_pool_whole(llm.engine)
    with pytest.raises(ValueError, match="prompt token ids must be in"):
        llm.generate([[1, 2, 10_000]])


def test_logit_bias_past_the_vocabulary(llm):
    with pytest.raises(ValueError, match=r"^logit_bias keys must be token ids in \[0, 320\)$"):
        llm.generate([prompts_of([5])[0]], SamplingParams(logit_bias={319: 1.0, 320: 1.0}))
    with pytest.raises(ValueError, match=r"^logit_bias keys must be token ids in \[0, 320\)$"):  # (in any order)
        llm.generate([prompts_of([5])[0]], SamplingParams(logit_bias=((400, 1.0), (1, 1.0))))
    assert_pool_whole(llm.engine)


def test_text_prompt_without_tokenizer(llm):
    with pytest.raises(ValueError, match="has no tokenizer"):
        llm.generate("hello")


def test_unknown_model_path(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        LLM(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="config.json"):
        LLM(str(tmp_path))


def test_unsupported_gguf_architecture(tmp_path):
    path = tmp_path / "gpt2.gguf"
    w = gguf.GGUFWriter(str(path), "gpt2")
    w.add_block_count(1)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ValueError, match="GGUF architecture 'gpt2' is not supported"):
        LLM(str(path))


def test_unknown_engine_option():
    with pytest.raises(TypeError, match="unknown engine option"):
        LLM("default", max_num_seq=3)


def test_a_temperature_too_small_to_divide_by_samples_greedily(llm):
    """As vLLM: under 1e-5 greedy (logits over 1e-38 overflow float32, and argmax of inf/NaN is token 0)."""
    assert SamplingParams(temperature=1e-38).greedy and not SamplingParams(temperature=1e-4).greedy
    prompts = prompts_of([7, 12])
    tiny = llm.generate(prompts, SamplingParams(temperature=1e-38, max_tokens=8, ignore_eos=True))
    greedy = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=8, ignore_eos=True))
    assert [o.outputs[0].token_ids for o in tiny] == [o.outputs[0].token_ids for o in greedy]
