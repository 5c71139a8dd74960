"""Model registry: ``architectures[0]`` of config.json -> implementation."""

from __future__ import annotations

from torch import nn

from kairos.models.arch import ArchConfig
from kairos.models.llama import LlamaForCausalLM

MODEL_REGISTRY: dict[str, type[nn.Module]] = {
    "LlamaForCausalLM": LlamaForCausalLM,
    "MistralForCausalLM": LlamaForCausalLM,
    "Qwen2ForCausalLM": LlamaForCausalLM,
    "Qwen3ForCausalLM": LlamaForCausalLM,
}


def model_class(cfg: ArchConfig) -> type[nn.Module]:
    """The implementation for ``cfg.architecture``; a clear error for anything else."""
    try:
        return MODEL_REGISTRY[cfg.architecture]
    except KeyError:
        raise ValueError(
            f"architecture {cfg.architecture!r} is not supported; supported: {', '.join(sorted(MODEL_REGISTRY))}"
        ) from None


__all__ = ["ArchConfig", "MODEL_REGISTRY", "model_class"]
