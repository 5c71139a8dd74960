"""load_format='dummy': a model's shapes with random weights, from its config alone (benchmarks on
machines the weight file cannot reach), and the weightless directory that carries a config."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from kairos.cli import build_parser, engine_config_from_args
from kairos.config import ModelConfig
from kairos.engine.sampling_params import SamplingParams
from kairos.loader.default import ModelNotFoundError

from conftest import needs_default_model
from engine_helpers import assert_pool_whole, make_engine, prompts_of, run


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


def test_a_dummy_model_runs_the_requested_tokens(config_only):
    engine = make_engine(config_only, load_format="dummy", num_blocks=32, block_size=4)
    sp = SamplingParams(max_tokens=9, temperature=0, ignore_eos=True)
    done = run(engine, {0: [(str(i), p, sp) for i, p in enumerate(prompts_of([3, 11]))]})
    assert [len(done[(str(i), 0)][0]) for i in range(2)] == [9, 9]
    assert_pool_whole(engine)


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
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu.py"
    out = tmp_path / "res.json"
    subprocess.run([sys.executable, str(script), "--device", "cpu", "--model", str(config_only), "--load-format",
                    "dummy", "--parts", "decode,offline", "--num-prompts", "3", "--hf-batch", "2", "--lens", "8,16",
                    "--out", str(out)], check=True, capture_output=True, timeout=300)
    res = json.loads(out.read_text())
    assert res["device"] == "cpu" and res["load_format"] == "dummy"
    for key in ("step_graphs_ms", "step_eager_ms", "roofline_ms", "kairos_tok_s", "kairos_sync_tok_s", "hf_tok_s"):
        assert res[key] > 0, key
