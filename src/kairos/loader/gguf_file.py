"""Weights, configuration and tokenizer metadata from a GGUF file (dequantized at load)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

# GGUF general.architecture -> HF architecture, and whether llama.cpp's converter
# permuted q/k for its interleaved RoPE (which we undo to get the HF rotate-half layout).
_ARCHS = {
    "llama": ("LlamaForCausalLM", True),
    "mistral": ("MistralForCausalLM", True),
    "qwen2": ("Qwen2ForCausalLM", False),
    "qwen3": ("Qwen3ForCausalLM", False),
}
_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_GLOBAL_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}


class GGUFModel:
    """A parsed GGUF file: ``hf_config()`` in config.json form and ``weights()`` with HF names."""

    def __init__(self, path: Path):
        from gguf import GGUFReader

        self.path = path
        try:
            self.reader = GGUFReader(str(path))
        except Exception as e:  # the gguf package raises bare ValueErrors/asserts on bad magic
            raise ValueError(f"{path} is not a readable GGUF file: {e}") from e
        self.arch_name = self.field("general.architecture")
        if self.arch_name not in _ARCHS:
            raise ValueError(
                f"GGUF architecture {self.arch_name!r} is not supported; supported: {', '.join(sorted(_ARCHS))}"
            )
        self.tensor_names = {t.name for t in self.reader.tensors}
        if "rope_freqs.weight" in self.tensor_names:
            raise ValueError("GGUF files with per-frequency RoPE factors (rope_freqs) are not supported yet")

    def field(self, key: str, default: Any = None) -> Any:
        f = self.reader.fields.get(key)
        return default if f is None else f.contents()

    def hf_config(self) -> dict[str, Any]:
        a = self.arch_name
        n_heads = self.field(f"{a}.attention.head_count")
        hidden = self.field(f"{a}.embedding_length")
        vocab = self.field(f"{a}.vocab_size") or len(self.field("tokenizer.ggml.tokens", []))
        cfg: dict[str, Any] = {
            "architectures": [_ARCHS[a][0]],
            "model_type": a,  # GGUF's architecture names are transformers' model types
            "vocab_size": vocab,
            "hidden_size": hidden,
            "intermediate_size": self.field(f"{a}.feed_forward_length"),
            "num_hidden_layers": self.field(f"{a}.block_count"),
            "num_attention_heads": n_heads,
            "num_key_value_heads": self.field(f"{a}.attention.head_count_kv", n_heads),
            "head_dim": self.field(f"{a}.attention.key_length", hidden // n_heads),
            "rms_norm_eps": self.field(f"{a}.attention.layer_norm_rms_epsilon", 1e-6),
            "rope_theta": self.field(f"{a}.rope.freq_base", 10000.0),
            "max_position_embeddings": self.field(f"{a}.context_length", 2048),
            "tie_word_embeddings": "output.weight" not in self.tensor_names,
            "bos_token_id": self.field("tokenizer.ggml.bos_token_id"),
            "eos_token_id": self.field("tokenizer.ggml.eos_token_id"),
        }
        if self.field(f"{a}.rope.scaling.type") == "linear":
            cfg["rope_scaling"] = {"rope_type": "linear", "factor": self.field(f"{a}.rope.scaling.factor")}
        return cfg

    def weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        from gguf.quants import dequantize

        cfg = self.hf_config()
        permuted = _ARCHS[self.arch_name][1]
        for t in self.reader.tensors:
            name = _hf_name(t.name)
            if name is None:
                continue
            w = torch.from_numpy(np.array(dequantize(t.data, t.tensor_type), dtype=np.float32))  # own, writable copy
            if permuted and name.endswith("q_proj.weight"):
                w = _unpermute(w, cfg["num_attention_heads"])
            elif permuted and name.endswith("k_proj.weight"):
                w = _unpermute(w, cfg["num_key_value_heads"])
            yield name, w

    def blocks(self) -> Iterator[tuple[str, str, torch.Tensor]]:
        """The Q4_1 / Q8_0 weights as they are stored: ``(hf name, kind, uint8 [rows, row bytes])``,
        rows in the Hugging Face order (what :func:`kairos.kernels.cpu.gguf_gemm` multiplies with)."""
        from gguf import GGMLQuantizationType as Q

        kinds = {Q.Q4_1: "q4_1", Q.Q8_0: "q8_0"}
        cfg = self.hf_config()
        permuted = _ARCHS[self.arch_name][1]
        for t in self.reader.tensors:
            name, kind = _hf_name(t.name), kinds.get(t.tensor_type)
            if name is None or kind is None:
                continue
            b = torch.from_numpy(np.array(t.data, dtype=np.uint8))  # [rows, row bytes], own copy
            # whole rows move, so llama.cpp's q/k row permutation is undone the same way
            if permuted and name.endswith("q_proj.weight"):
                b = _unpermute(b, cfg["num_attention_heads"])
            elif permuted and name.endswith("k_proj.weight"):
                b = _unpermute(b, cfg["num_key_value_heads"])
            yield name, kind, b.contiguous()


def _hf_name(gguf_name: str) -> str | None:
    base, _, kind = gguf_name.rpartition(".")  # kind: weight | bias
    if base.startswith("blk."):
        _, idx, part = base.split(".", 2)
        mapped = _LAYER_NAMES.get(part)
        return None if mapped is None else f"model.layers.{idx}.{mapped}.{kind}"
    mapped = _GLOBAL_NAMES.get(base)
    return None if mapped is None else f"{mapped}.{kind}"


def _unpermute(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    # llama.cpp stores q/k rows as (head, half, pair) for interleaved RoPE; HF wants (head, pair, half).
    rows = w.shape[0]
    return w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)
