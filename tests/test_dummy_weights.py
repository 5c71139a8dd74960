"""load_format='dummy': a model's shapes with random weights, from its config alone (benchmarks on
machines the weight file cannot reach), and the weightless directory that carries a config."""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import pytest
import torch

from kairos.cli import build_parser, engine_config_from_args
from kairos.config import ModelConfig
from kairos.loader.default import ModelNotFoundError
from kairos.wire.sampling_params import SamplingParams

from conftest import needs_default_model
from engine_helpers import assert_pool_whole, make_engine, prompts_of

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def config_only(tiny_llama, tmp_path):
    """The tiny model's directory without its weights."""
    out = tmp_path / "config-only"
    out.mkdir()
    shutil.copy(tiny_llama[1] / "config.json", out / "config.json")
    return out


def params(engine) -> dict[str, torch.Tensor]:
    return dict(engine.runner.model.named_parameters())


def test_dummy_weights_have_the_models_shapes_and_are_seeded(tiny_llama, config_only):
    real = params(make_engine(tiny_llama[1], num_blocks=32))
    dummy = params(make_engine(config_only, load_format="dummy", num_blocks=32))
    assert {n: p.shape for n, p in dummy.items()} == {n: p.shape for n, p in real.items()}
    for name, p in dummy.items():
        assert p.abs().max() <= 1e-3 and p.abs().max() > 0, name
        assert not torch.equal(p, real[name]), name
    again = params(make_engine(tiny_llama[1], load_format="dummy", num_blocks=32))  # weights there, not read
    assert all(torch.equal(again[n], p) for n, p in dummy.items())
    other = params(make_engine(config_only, load_format="dummy", seed=1, num_blocks=32))
    assert not any(torch.equal(other[n], p) for n, p in dummy.items())


def test_a_dummy_model_runs_with_finite_logits(config_only):
    from kairos import LLM

    llm = LLM(str(config_only), device="cpu", load_format="dummy", num_blocks=32, block_size=4)
    outs = llm.generate(prompts_of([3, 11]), SamplingParams(max_tokens=9, temperature=0, ignore_eos=True, logprobs=2))
    for out in outs:
        assert len(out.outputs[0].token_ids) == 9
        steps = out.outputs[0].logprobs
        assert len(steps) == 9 and all(math.isfinite(x[2]) for step in steps for x in [*step.top, (0, "", step.logprob)])
    assert_pool_whole(llm.engine)


def test_tied_embeddings_stay_tied(tiny_llama, tmp_path):
    out = tmp_path / "tied"
    out.mkdir()
    config = json.loads((tiny_llama[1] / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": True}))
    for dtype in ("float32", "bfloat16"):  # (float32: the CPU kernels' layers)
        model = make_engine(out, load_format="dummy", dtype=dtype, num_blocks=32).runner.model
        assert model.lm_head.weight is model.model.embed_tokens.weight
        assert 0 < model.lm_head.weight.abs().max() <= 1e-3


def test_a_weightless_directory_loads_only_as_dummy(config_only):
    with pytest.raises(ModelNotFoundError, match=r"no \*\.safetensors file in .*config-only"):
        make_engine(config_only, num_blocks=32)


def test_load_format_is_checked_and_reaches_the_cli():
    with pytest.raises(ValueError, match=r"load_format must be one of \('auto', 'dummy'\), got 'random'"):
        ModelConfig(load_format="random")
    with pytest.raises(ValueError, match="activation_quant needs a GGUF's quantized blocks"):
        ModelConfig(load_format="dummy", activation_quant="int8")
    args = build_parser().parse_args(["serve", "--model", "m", "--load-format", "dummy"])
    assert engine_config_from_args(args).model.load_format == "dummy"


@needs_default_model
def test_the_default_gguf_loads_as_dummy_weights_of_its_shapes():
    from kairos import LLM

    llm = LLM("default", load_format="dummy", num_blocks=16)
    model = llm.engine.runner.model
    assert llm.engine.arch.num_layers == 30 and model.lm_head.weight is model.model.embed_tokens.weight
    assert sum(p.numel() for p in model.parameters()) == 134_515_008  # SmolLM2-135M, as transformers counts it
    assert all(p.abs().max() <= 1e-3 for p in model.parameters())  # (in their own float32)
    assert len(llm.generate(["Hi"], SamplingParams(max_tokens=3, ignore_eos=True))[0].outputs[0].token_ids) == 3


@needs_default_model
def test_the_default_models_config_and_tokenizer_travel_without_its_weights(tmp_path):
    from transformers import AutoConfig

    from kairos.loader import load_tokenizer, read_arch, resolve_model_path, save_config_dir

    out = save_config_dir("default", tmp_path / "kit")
    gguf = resolve_model_path("default")
    assert not list(out.glob("*.safetensors")) and (out / "config.json").is_file()
    assert read_arch(out) == read_arch(gguf)
    assert json.loads((out / "config.json").read_text())["model_type"] == "llama"
    assert AutoConfig.from_pretrained(str(out)).num_hidden_layers == 30
    mine, theirs = load_tokenizer(out), load_tokenizer(gguf)
    text = "Déjà vu: 3 × 7 = 21 🙂\n"
    assert mine(text)["input_ids"] == theirs(text)["input_ids"]
    chat = [{"role": "user", "content": "hi"}]
    assert (mine.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
            == theirs.apply_chat_template(chat, tokenize=False, add_generation_prompt=True))


def test_the_gpu_benchmark_runs_on_a_cpu(config_only, tmp_path):
    """benchmarks/gpu.py is run on lent GPU machines only now and then: its CPU mode keeps the
    script working in between (a check that it runs, not a figure)."""
    import os
    import subprocess

    out = tmp_path / "res.json"
    env = {**os.environ, "KAIROS_CACHE_DIR": str(tmp_path / "cache")}  # (start-up empties its graphs folder)
    r = subprocess.run([sys.executable, str(BENCHMARKS / "gpu.py"), "--device", "cpu", "--model", str(config_only),
                        "--load-format", "dummy", "--parts", "startup,decode,offline,hf", "--num-prompts", "3",
                        "--hf-batch", "2", "--hf-prompts", "2", "--lens", "8,16", "--out", str(out)],
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["device"] == "cpu" and res["load_format"] == "dummy" and res["hf_prompts"] == 2
    assert res["graph_sizes"] == [] and res["startup_graphs_on"] is False  # (no CUDA graphs on a CPU)
    for key in ("startup_eager_s", "step_graphs_ms", "step_eager_ms", "roofline_ms", "kairos_tok_s",
                "kairos_sync_tok_s", "hf_tok_s"):
        assert res[key] > 0, key


def test_the_gpu_kit_carries_what_the_image_lacks_and_nothing_it_has():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        from gpu_kit import needed
    finally:
        sys.path.remove(str(BENCHMARKS))
    pins = needed("3.12.3")
    assert {"msgspec", "pyzmq", "fastapi", "pydantic", "pydantic-core", "uvicorn", "httptools", "gguf",
            "openai"} <= set(pins)
    assert not {"torch", "numpy", "transformers", "tokenizers", "triton", "safetensors", "kairos"} & set(pins)
