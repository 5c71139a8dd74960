"""Llama layers whose small float32 operations run as fused C kernels (``kairos.kernels.cpu``).

Separate implementations of the same modules: :func:`use_cpu_kernels` switches a loaded model's
RMSNorm, attention and MLP modules to these subclasses (same parameters, no copies). In a
decode step each operation touches a few rows, and torch's per-operator cost (five operators
for an RMSNorm, ten for RoPE, two scatters for the cache write) outweighs the arithmetic.
"""

from __future__ import annotations

import torch
from torch import nn

from kairos.engine.attention import paged_attention
from kairos.kernels import cpu
from kairos.models.llama import MLP, Attention, RMSNorm


def _plain(t: torch.Tensor) -> bool:
    """A float32 [rows, features] tensor the C kernels can read in place."""
    return t.dtype == torch.float32 and t.dim() == 2 and t.is_contiguous()


class KernelRMSNorm(RMSNorm):
    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        if not _plain(x) or (residual is not None and (not _plain(residual) or residual.shape != x.shape)):
            return super().forward(x, residual)  # what the C kernel cannot read in place
        if residual is None:
            return cpu.add_rms_norm(None, x, self.weight, self.eps)  # x is only read
        residual = residual.clone() if residual._base is not None else residual  # never write into a view
        return cpu.add_rms_norm(x, residual, self.weight, self.eps), residual


class KernelAttention(Attention):
    """RoPE and the cache write in one pass over the fused qkv rows (no q/k norm: Qwen3 stays on torch)."""

    def forward(self, x, rope, kv_cache, meta):
        t = x.shape[0]
        qkv = self.qkv_proj(x)  # [T, (Hq + 2 Hkv) * D], a fresh tensor: rotated in place
        cpu.rope_store_kv(qkv, self.num_heads, self.num_kv_heads, self.head_dim, rope[0], rope[1],
                          kv_cache[0], kv_cache[1], meta.slot_mapping)
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        o = paged_attention(q.view(t, self.num_heads, self.head_dim), k.view(t, self.num_kv_heads, self.head_dim),
                            v.view(t, self.num_kv_heads, self.head_dim), kv_cache[0], kv_cache[1], meta, self.scale,
                            store=False)
        return self.o_proj(o.reshape(t, self.num_heads * self.head_dim))


class KernelMLP(MLP):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(cpu.silu_mul(self.gate_up_proj(x)))


def use_cpu_kernels(model: nn.Module) -> int:
    """Switch eligible modules of a float32 CPU model to the kernel subclasses; returns how many."""
    if cpu.load() is None:
        return 0
    n = 0
    for mod in model.modules():
        new = {RMSNorm: KernelRMSNorm, MLP: KernelMLP}.get(type(mod))
        if type(mod) is Attention and not mod.qk_norm and mod.head_dim % 2 == 0:
            new = KernelAttention
        if new is not None:
            mod.__class__ = new  # same state, other forward
            n += 1
    return n
