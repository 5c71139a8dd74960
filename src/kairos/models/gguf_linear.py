"""Linear layers that keep their weight as GGUF blocks, for the CPU kernels.

:class:`GGUFLinear` sends float32 rows through :func:`kairos.kernels.cpu.gguf_gemm`, which reads
the Q4_1/Q8_0 blocks themselves (a quarter to an eighth of the float32 bytes) at every batch
size: a few-row kernel for decode steps, a tiled GEMM that decodes the blocks as it packs them
for prefill chunks and big batches. No float32 copy of the weights is kept.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kairos.kernels.cpu import BLOCK_BYTES, GGUFWeight, dequantize, gguf_gemm


class GGUFLinear(nn.Module):
    """``nn.Linear`` semantics over GGUF blocks (``qweight``); the bias stays a float tensor."""

    int8_activations = False  # see GGUFLinearInt8Act

    def __init__(self, dense: nn.Linear, qweight: GGUFWeight):
        super().__init__()
        self.weight = None  # no dense copy: the blocks are the weight
        self.bias = dense.bias
        self.in_features, self.out_features = dense.in_features, dense.out_features
        self.qweight = qweight

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [M, in] -> [M, out]
        if x.dtype != torch.float32:  # the kernels are float32-only (models with kernels are float32)
            bias = None if self.bias is None else self.bias.to(x.dtype)
            return F.linear(x, dequantize(self.qweight).to(x.dtype), bias)
        y = gguf_gemm(x, self.qweight, int8_activations=self.int8_activations)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, {self.qweight.kind}"


class GGUFLinearInt8Act(GGUFLinear):
    """Few-row inputs (decode steps) quantized to int8 per block of 32 before the matmul, as
    llama.cpp does (``ModelConfig.activation_quant = "int8"``): faster at batch 1, no longer equal
    to a float32 matmul over the dequantized weights."""

    int8_activations = True


class GGUFEmbedding(nn.Module):
    """Token embeddings looked up from GGUF blocks (a tied lm_head's): rows dequantized on demand."""

    def __init__(self, qweight: GGUFWeight):
        super().__init__()
        self.qweight = qweight
        self.num_embeddings, self.embedding_dim = qweight.shape

    def forward(self, ids: torch.Tensor) -> torch.Tensor:  # [T] -> [T, dim] float32
        w = self.qweight
        rows = GGUFWeight(w.kind, w.qs[ids], w.d[ids], None if w.m is None else w.m[ids])  # the T rows' blocks
        return dequantize(rows)


def attach_gguf_blocks(model: nn.Module, blocks: dict[str, tuple[str, torch.Tensor]],
                       packed: dict[str, list[str]], tied_lm_head: bool) -> int:
    """Swap each ``nn.Linear`` whose checkpoint weights are all GGUF blocks of one kind for a
    :class:`GGUFLinear` (its float32 weight is dropped). ``packed`` maps a packed module
    (``qkv_proj``) to the checkpoint projections stacked in it, in row order. A tied embedding is
    then looked up from the lm_head's blocks. Returns how many layers were swapped."""
    swapped = 0
    for name, mod in list(model.named_modules()):
        if not isinstance(mod, nn.Linear) or mod.in_features % 32:
            continue
        prefix, _, leaf = name.rpartition(".")
        sources = [f"{prefix}.{p}.weight" if prefix else f"{p}.weight" for p in packed.get(leaf, [leaf])]
        if name == "lm_head" and tied_lm_head:
            sources = ["model.embed_tokens.weight"]
        parts = [blocks.get(s) for s in sources]
        if any(p is None for p in parts) or len({k for k, _ in parts}) != 1:
            continue
        kind = parts[0][0]
        b = torch.cat([t for _, t in parts]) if len(parts) > 1 else parts[0][1]
        if b.shape != (mod.out_features, mod.in_features // 32 * BLOCK_BYTES[kind]):
            continue  # not the layout the kernel reads: stay dense
        parent = model.get_submodule(prefix) if prefix else model
        setattr(parent, leaf, GGUFLinear(mod, GGUFWeight.from_blocks(kind, b)))
        swapped += 1
        backbone = getattr(model, "model", None)  # Llama-shaped: the tied embedding is model.model.embed_tokens
        if name == "lm_head" and tied_lm_head and hasattr(backbone, "embed_tokens"):
            backbone.embed_tokens = GGUFEmbedding(model.lm_head.qweight)
    return swapped
