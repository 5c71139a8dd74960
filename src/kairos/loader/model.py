"""Load a model (HF directory or GGUF), its configuration and tokenizer; pick device and dtype."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from kairos.config import ModelConfig
from kairos.loader.default import resolve_model_path
from kairos.loader.gguf_cache import cached_hf_dir, gguf_blocks
from kairos.loader.gguf_file import GGUFModel
from kairos.loader.hf_dir import iter_hf_weights, read_hf_config
from kairos.loader.tokenizer import load_tokenizer
from kairos.models import ArchConfig, model_class

logger = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(cfg: ModelConfig) -> torch.device:
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but no CUDA device is available")
    return torch.device(cfg.device)


def cpu_has_bf16() -> bool:
    from kairos.kernels.cpu import cpu_flags

    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


def resolve_dtype(cfg: ModelConfig, device: torch.device) -> torch.dtype:
    """``auto``: bfloat16 on GPUs and on CPUs with bfloat16 matmul units, float32 otherwise; and
    float32 for a GGUF on a CPU that runs Kairos' kernels (they read the quantized blocks, a
    quarter of bfloat16's bytes, and need float32 activations; dummy weights have no blocks)."""
    if cfg.dtype != "auto":
        return _DTYPES[cfg.dtype]
    if device.type == "cuda":
        return torch.bfloat16
    if cpu_has_bf16() and not (cfg.cpu_kernels and cfg.load_format == "auto"
                               and resolve_model_path(cfg.model).suffix == ".gguf" and _kernels_available()):
        return torch.bfloat16
    return torch.float32


def _kernels_available() -> bool:
    from kairos.kernels import cpu as cpu_kernels

    return cpu_kernels.load() is not None


def read_arch(path: Path) -> ArchConfig:
    if path.is_dir():
        return ArchConfig.from_hf(read_hf_config(path))
    return ArchConfig.from_hf(GGUFModel(path).hf_config())


def load_model(cfg: ModelConfig) -> tuple[nn.Module, ArchConfig, Path]:
    """Build the model for ``cfg`` with its weights on the resolved device and dtype."""
    path = resolve_model_path(cfg.model)
    device = resolve_device(cfg)
    dtype = resolve_dtype(cfg, device)
    if cfg.load_format == "dummy":
        arch = read_arch(path)
        model = _build(arch, device, dtype, cfg)
        _fill_random(model, device, cfg.seed)
        return _finish(model), arch, path
    source = path if path.is_dir() else cached_hf_dir(path)
    if source is not None:
        arch = ArchConfig.from_hf(read_hf_config(source))
    else:
        gg = GGUFModel(path)
        arch = ArchConfig.from_hf(gg.hf_config())
    model = _build(arch, device, dtype, cfg)
    wanted = model.checkpoint_names()
    if _kernel_layers(cfg, device, dtype) and not path.is_dir():
        _attach_gguf_kernels(model, arch, path)  # before loading: layers that drop their dense copy are not filled
    if cfg.activation_quant == "int8":
        from kairos.models.cpu_layers import use_int8_activations

        if not use_int8_activations(model):
            raise ValueError("activation_quant='int8' needs a GGUF model with Q4_1/Q8_0 weights, on a CPU that "
                             "runs Kairos' kernels in float32")
    served = model.checkpoint_names()  # what the GGUF blocks took over is no longer a parameter

    def keep(name: str) -> bool:  # (unknown names go through: load_weights reports them)
        return name in served or name not in wanted

    weights = iter_hf_weights(source, keep) if source is not None else ((n, t) for n, t in gg.weights() if keep(n))
    loaded = model.load_weights(weights)
    missing = sorted(served - loaded)
    if missing:
        raise ValueError(f"checkpoint is missing weights: {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
    return _finish(model), arch, path


def _kernel_layers(cfg: ModelConfig, device: torch.device, dtype: torch.dtype) -> bool:
    return cfg.cpu_kernels and device.type == "cpu" and dtype == torch.float32


def _build(arch: ArchConfig, device: torch.device, dtype: torch.dtype, cfg: ModelConfig) -> nn.Module:
    """The model with uninitialised weights on ``device``, its layers switched to Kairos' CPU
    kernels where they run."""
    with torch.device("meta"):
        model = model_class(arch)(arch)
    _materialize(model, device, dtype)
    model.tie_weights()
    if _kernel_layers(cfg, device, dtype):
        from kairos.models.cpu_layers import use_cpu_kernels

        use_cpu_kernels(model)
    return model


def _fill_random(model: nn.Module, device: torch.device, seed: int) -> None:
    """Dummy weights (``load_format='dummy'``): the same shapes, so the same work per step,
    without reading a weight file. Uniform in [-1e-3, 1e-3] as vLLM's: small enough that no
    activation overflows in half precision through any depth."""
    gen = torch.Generator(device=device).manual_seed(seed)
    for p in model.parameters():
        if p.is_floating_point():
            p.uniform_(-1e-3, 1e-3, generator=gen)


def _finish(model: nn.Module) -> nn.Module:
    model.reset_buffers()  # RoPE tables: computed in float32 whatever the weights' dtype
    return model.eval().requires_grad_(False)


def _materialize(model: nn.Module, device: torch.device, dtype: torch.dtype) -> None:
    """Give a model built on the meta device uninitialised storage (every weight is loaded next),
    floating-point tensors in ``dtype``. Unlike ``Module.to_empty`` this never runs an operator on
    a meta tensor, whose Python meta kernels take seconds to import."""
    for mod in model.modules():
        for table in (mod._parameters, mod._buffers):
            for name, t in table.items():
                if t is None or not t.is_meta:
                    continue
                new = torch.empty(t.shape, dtype=dtype if t.is_floating_point() else t.dtype, device=device)
                table[name] = nn.Parameter(new, requires_grad=False) if isinstance(t, nn.Parameter) else new


def _attach_gguf_kernels(model: nn.Module, arch: ArchConfig, path: Path) -> None:
    from kairos.kernels import cpu as cpu_kernels
    from kairos.models.gguf_linear import attach_gguf_blocks
    from kairos.models.llama import PACKED_SHARDS

    if cpu_kernels.load() is None:
        return
    n = attach_gguf_blocks(model, gguf_blocks(path), PACKED_SHARDS, arch.tie_word_embeddings)
    logger.info("GGUF CPU kernels on %d linear layers", n)


__all__ = ["load_model", "load_tokenizer", "read_arch", "resolve_device", "resolve_dtype", "resolve_model_path"]
