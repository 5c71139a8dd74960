"""Linear layers that also keep their weight as GGUF blocks, for the CPU kernels.

A decode step multiplies a few rows by every weight, so it is bound by reading the weights:
:class:`GGUFLinear` sends up to ``max_rows`` rows through :func:`kairos.kernels.cpu.gguf_gemm`
over the Q4_1/Q8_0 blocks (a quarter to an eighth of the float32 bytes), and bigger batches
(prefill chunks) through the dense float32 matmul, which is faster once compute dominates.
Both compute in float32 over the same dequantized values; they differ only in rounding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kairos.kernels.cpu import BLOCK_BYTES, GGUFWeight, dequantize, gguf_gemm

# Crossovers measured on a 2-core AVX2 EPYC (benchmarks/cpu_kernels.py): the kernel decodes
# each block once per 4 rows, MKL's float32 GEMM pulls ahead when rows grow.
MAX_ROWS = 32
MAX_ROWS_LM_HEAD = 64


class Scratch:
    """One float32 buffer that the GGUF layers of a model share for their dequantized weights (one
    layer at a time: a forward pass runs them in turn), grown to the largest."""

    def __init__(self):
        self.buf = torch.empty(0)

    def get(self, numel: int) -> torch.Tensor:
        if self.buf.numel() < numel:
            self.buf = torch.empty(numel)
        return self.buf


class GGUFLinear(nn.Module):
    """``nn.Linear`` semantics over GGUF blocks (``qweight``). With a dense copy (``weight``, the same
    values as float32) batches above ``max_rows`` use it; without one (``scratch`` given instead)
    they dequantize the blocks into the shared scratch first: the dense copies of a model are 4-8x
    its blocks in memory."""

    def __init__(self, dense: nn.Linear, qweight: GGUFWeight, max_rows: int, scratch: Scratch | None = None):
        super().__init__()
        self.weight = None if scratch is not None else dense.weight  # shared, not copied (a tied lm_head stays tied)
        self.bias = dense.bias
        self.in_features, self.out_features = dense.in_features, dense.out_features
        self.qweight = qweight
        self.max_rows = max_rows
        self.scratch = scratch

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [M, in] -> [M, out]
        if x.shape[0] <= self.max_rows and x.dtype == torch.float32:
            y = gguf_gemm(x, self.qweight)
            return y if self.bias is None else y + self.bias
        w = self.weight if self.weight is not None else dequantize(
            self.qweight, self.scratch.get(self.out_features * self.in_features))
        return F.linear(x, w.to(x.dtype), self.bias)

    def extra_repr(self) -> str:
        dense = "dense copy" if self.weight is not None else "dequantized per call"
        return f"in={self.in_features}, out={self.out_features}, {self.qweight.kind}, kernel up to {self.max_rows} rows, {dense} above"


class GGUFEmbedding(nn.Module):
    """Token embeddings looked up from GGUF blocks (a tied lm_head's): rows dequantized on demand."""

    def __init__(self, qweight: GGUFWeight):
        super().__init__()
        self.qweight = qweight
        self.num_embeddings, self.embedding_dim = qweight.shape

    def forward(self, ids: torch.Tensor) -> torch.Tensor:  # [T] -> [T, dim] float32
        w = self.qweight
        d = w.d[ids].repeat_interleave(32, dim=1)  # [T, dim]: each block's scale over its 32 weights
        if w.kind == "q8_0":
            return w.qs[ids].float() * d
        q = w.qs[ids].view(len(ids), -1, 16)  # [T, blocks, 16]: byte j = weight j (low nibble) | j + 16 (high)
        q = torch.stack([q & 15, q >> 4], dim=2).view(len(ids), -1)  # [T, dim] in weight order
        return q.float() * d + w.m[ids].repeat_interleave(32, dim=1)


def attach_gguf_blocks(model: nn.Module, blocks: dict[str, tuple[str, torch.Tensor]],
                       packed: dict[str, list[str]], tied_lm_head: bool, keep_dense: bool = True) -> int:
    """Swap each ``nn.Linear`` whose checkpoint weights are all GGUF blocks of one kind for a
    :class:`GGUFLinear`. ``packed`` maps a packed module (``qkv_proj``) to the checkpoint
    projections stacked in it, in row order. Without ``keep_dense`` the swapped layers drop their
    float32 weights (they dequantize for big batches), and a tied embedding is looked up from the
    lm_head's blocks. Returns how many layers were swapped."""
    swapped = 0
    scratch = None if keep_dense else Scratch()
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
        rows = MAX_ROWS_LM_HEAD if name == "lm_head" else MAX_ROWS
        setattr(parent, leaf, GGUFLinear(mod, GGUFWeight.from_blocks(kind, b), rows, scratch))
        swapped += 1
        backbone = getattr(model, "model", None)  # Llama-shaped: the tied embedding is model.model.embed_tokens
        if name == "lm_head" and tied_lm_head and not keep_dense and hasattr(backbone, "embed_tokens"):
            backbone.embed_tokens = GGUFEmbedding(model.lm_head.qweight)
    return swapped
