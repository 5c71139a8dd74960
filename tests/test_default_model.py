"""The default model (SmolLM2-135M-Instruct GGUF) end to end through the offline API."""

from __future__ import annotations

import pytest
import torch

from kairos import SamplingParams
from kairos.loader.default import DEFAULT_FILE, default_model_path

from conftest import hf_greedy, needs_default_model
from engine_helpers import assert_pool_whole

pytestmark = needs_default_model

CHATS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You answer in one sentence."}, {"role": "user", "content": "Why is the sky blue?"}],
    [{"role": "user", "content": "Write a haiku about the sea."}],
]


@pytest.fixture(scope="module")
def hf_reference():
    from transformers import AutoModelForCausalLM

    path = default_model_path()
    return AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=DEFAULT_FILE, dtype=torch.float32).eval()


def test_greedy_chat_equals_transformers(default_llm, hf_reference):
    params = SamplingParams(temperature=0.0, max_tokens=32, ignore_eos=True)
    outs = default_llm.chat(CHATS, params)
    for out in outs:
        ref = hf_greedy(hf_reference, out.prompt_token_ids, 32)
        assert out.outputs[0].token_ids == ref
    assert "Paris" in outs[0].outputs[0].text


def test_eos_stop_string_and_pool(default_llm):
    eos = default_llm.chat(CHATS[0], SamplingParams(temperature=0.0, max_tokens=64))[0].outputs[0]
    assert eos.finish_reason == "stop" and eos.stop_reason is None
    assert eos.text == "The capital of France is Paris."
    cut = default_llm.chat(CHATS[0], SamplingParams(temperature=0.0, max_tokens=64, stop=["Paris", "zzz"]))[0].outputs[0]
    assert (cut.text, cut.finish_reason, cut.stop_reason) == ("The capital of France is ", "stop", "Paris")
    assert_pool_whole(default_llm.engine)


def test_n_logprobs_and_seed(default_llm):
    params = SamplingParams(n=3, temperature=0.8, seed=5, max_tokens=12, logprobs=3)
    a = default_llm.generate("Once upon a time", params)[0]
    b = default_llm.generate("Once upon a time", params)[0]
    assert [o.text for o in a.outputs] == [o.text for o in b.outputs]
    assert len(a.outputs) == 3 and len({o.text for o in a.outputs}) > 1
    for o in a.outputs:
        assert len(o.logprobs) == len(o.token_ids)
        for tok, lp in zip(o.token_ids, o.logprobs):
            assert lp.token_id == tok and lp.logprob <= 0.0 and len(lp.top) == 3
            assert lp.top[0][2] >= lp.logprob  # the best token is at least as likely as the drawn one


def test_text_prompt_adds_no_bos_duplication(default_llm):
    out = default_llm.generate(["The quick brown fox"], SamplingParams(temperature=0.0, max_tokens=5))[0]
    assert out.prompt_token_ids == default_llm.tokenizer("The quick brown fox").input_ids
    assert len(out.outputs[0].token_ids) == 5


def test_gguf_conversion_cache_is_exact(tmp_path, monkeypatch):
    from safetensors import safe_open

    from kairos.loader.gguf_cache import cached_hf_dir
    from kairos.loader.gguf_file import GGUFModel

    monkeypatch.setenv("KAIROS_CACHE_DIR", str(tmp_path))
    path = default_model_path()
    out = cached_hf_dir(path)
    assert out is not None and out.parent.parent == tmp_path
    assert cached_hf_dir(path) == out  # made once, then found
    direct = dict(GGUFModel(path).weights())
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert set(f.keys()) == set(direct)
        for name in ("model.layers.0.self_attn.q_proj.weight", "model.layers.29.self_attn.k_proj.weight",
                     "model.embed_tokens.weight"):
            assert torch.equal(f.get_tensor(name), direct[name])


def test_gguf_blocks_cache_is_exact(tmp_path, monkeypatch):
    from kairos.loader.gguf_cache import gguf_blocks
    from kairos.loader.gguf_file import GGUFModel

    monkeypatch.setenv("KAIROS_CACHE_DIR", str(tmp_path))
    path = default_model_path()
    made = gguf_blocks(path)  # parses the GGUF and writes the cache file
    files = [p.name for p in (tmp_path / "models").iterdir()]
    assert len(files) == 1 and files[0].endswith("-gguf_blocks.safetensors")  # no temp file left
    cached = gguf_blocks(path)  # read back from it
    direct = {name: (kind, b) for name, kind, b in GGUFModel(path).blocks()}
    assert set(cached) == set(direct) == set(made)
    assert {k for k, _ in cached.values()} == {"q4_1", "q8_0"}
    for name in ("model.layers.0.self_attn.q_proj.weight", "model.embed_tokens.weight"):
        assert cached[name][0] == direct[name][0] and torch.equal(cached[name][1], direct[name][1])


def test_long_prompt_through_tiled_gguf_kernel_equals_transformers(default_llm, hf_reference):
    """Prefill chunks go through the tiled GGUF GEMM, which decodes the blocks as it packs them
    (no dense copy is kept): still HF's tokens."""
    from kairos.models.gguf_linear import GGUFEmbedding, GGUFLinear

    model = default_llm.engine.runner.model
    linears = [m for m in model.modules() if isinstance(m, GGUFLinear)]
    assert len(linears) == 4 * 30 + 1 and all(m.weight is None for m in linears)
    assert isinstance(model.model.embed_tokens, GGUFEmbedding)  # looked up from the tied lm_head's blocks
    text = " ".join(f"Item {i}: the {w} fox jumps over the lazy dog." for i, w in enumerate(["quick", "slow", "red"] * 5))
    prompt = default_llm.tokenizer(text).input_ids
    assert len(prompt) > 100
    out = default_llm.generate([prompt], SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True))[0]
    assert out.outputs[0].token_ids == hf_greedy(hf_reference, prompt, 16)
