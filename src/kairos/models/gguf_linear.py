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

from kairos.kernels.cpu import BLOCK_BYTES, GGUFWeight, gguf_gemm

# Crossovers measured on a 2-core AVX2 EPYC (benchmarks/cpu_kernels.py): the kernel decodes
# each block once per 4 rows, MKL's float32 GEMM pulls ahead when rows grow.
MAX_ROWS = 32
MAX_ROWS_LM_HEAD = 64


class GGUFLinear(nn.Module):
    """``nn.Linear`` semantics; ``weight`` (dense) and ``qweight`` hold the same values."""

    def __init__(self, dense: nn.Linear, qweight: GGUFWeight, max_rows: int):
        super().__init__()
        self.weight = dense.weight  # shared, not copied (a tied lm_head stays tied)
        self.bias = dense.bias
        self.in_features, self.out_features = dense.in_features, dense.out_features
        self.qweight = qweight
        self.max_rows = max_rows

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [M, in] -> [M, out]
        if x.shape[0] > self.max_rows or x.dtype != torch.float32:
            return F.linear(x, self.weight, self.bias)
        y = gguf_gemm(x, self.qweight)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, {self.qweight.kind}, kernel up to {self.max_rows} rows"


def attach_gguf_blocks(model: nn.Module, blocks: dict[str, tuple[str, torch.Tensor]],
                       packed: dict[str, list[str]], tied_lm_head: bool) -> int:
    """Swap each ``nn.Linear`` whose checkpoint weights are all GGUF blocks of one kind for a
    :class:`GGUFLinear`. ``packed`` maps a packed module (``qkv_proj``) to the checkpoint
    projections stacked in it, in row order. Returns how many layers were swapped."""
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
        rows = MAX_ROWS_LM_HEAD if name == "lm_head" else MAX_ROWS
        setattr(parent, leaf, GGUFLinear(mod, GGUFWeight.from_blocks(kind, b), rows))
        swapped += 1
    return swapped
