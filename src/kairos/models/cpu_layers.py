"""Llama layers whose small float32 operations run as fused C kernels (``kairos.kernels.cpu``).

Separate implementations of the same modules: :func:`use_cpu_kernels` switches a loaded model's
RMSNorm, attention and MLP modules to these subclasses (same parameters, no copies). In a
decode step each operation touches a few rows, and torch's per-operator cost (five operators
for an RMSNorm, ten for RoPE, two scatters for the cache write) outweighs the arithmetic.
"""

from __future__ import annotations

import torch
from torch import nn

from kairos.kernels import cpu
from kairos.layers.attention import paged_attention
from kairos.models.gguf_linear import GGUFLinear, GGUFLinearInt8Act
from kairos.models.llama import MLP, Attention, LlamaForCausalLM, RMSNorm


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


class KernelLlamaForCausalLM(LlamaForCausalLM):
    """A decode-only step runs the whole stack in one C call
    (``cpu.decode_stack``: the same kernels as the modules above, without Python between them);
    other steps, or layers the call cannot take, go through the modules."""

    int8_activations = False  # see KernelLlamaInt8Act

    def forward(self, input_ids, positions, kv_caches, meta):
        if meta.decode_tables is None or meta.prefills:
            return super().forward(input_ids, positions, kv_caches, meta)
        table = self._stack_table(kv_caches)
        if table is None:
            return super().forward(input_ids, positions, kv_caches, meta)
        c = self.config
        x = self.model.embed_tokens(input_ids)
        cos, sin = self.model.rotary_emb.lookup(positions, x.dtype)  # [T, 1, D] each, contiguous
        attn = self.model.layers[0].self_attn
        return cpu.decode_stack(table, x, c.num_heads, c.num_kv_heads, c.head_dim, c.intermediate_size, cos, sin,
                                meta.slot_mapping, meta.decode_tables, meta.decode_lens, kv_caches[0][0].shape[1],
                                self.model.norm.eps, attn.scale, self.model.norm.weight, self.int8_activations)

    def _stack_table(self, kv_caches):
        """The C layer table for these caches (built once; None: some layer is not eligible)."""
        key = tuple(k.data_ptr() for k, _ in kv_caches)
        cached = self.__dict__.get("_stack")
        if cached is None or cached[0] != key:
            layers = [_stack_layer(ly, kv, self.model.norm.eps, self.int8_activations)
                      for ly, kv in zip(self.model.layers, kv_caches)]
            ok = all(ly is not None for ly in layers) and type(self.model.norm) is KernelRMSNorm
            ok = ok and len({ly.self_attn.scale for ly in self.model.layers}) == 1
            # the tensors stay referenced next to the raw pointers that the table holds
            cached = self.__dict__["_stack"] = (key, cpu.stack_table(layers) if ok else None, layers)
        return cached[1]


class KernelLlamaInt8Act(KernelLlamaForCausalLM):
    """The one-call decode stack with int8 activations in its few-row matmuls (as GGUFLinearInt8Act)."""

    int8_activations = True


def _stack_layer(layer, kv, eps: float, int8_activations: bool) -> cpu.StackLayer | None:
    attn, mlp = layer.self_attn, layer.mlp
    norms = (layer.input_layernorm, layer.post_attention_layernorm)
    linears = (attn.qkv_proj, attn.o_proj, mlp.gate_up_proj, mlp.down_proj)
    if type(attn) is not KernelAttention or type(mlp) is not KernelMLP or any(type(n) is not KernelRMSNorm or
                                                                                n.eps != eps for n in norms):
        return None
    # the stack runs every matmul one way: layers must agree with it on int8 activations
    if not all(isinstance(li, GGUFLinear) and li.int8_activations == int8_activations
               and (li.bias is None or li.bias.dtype == torch.float32) for li in linears):
        return None
    tensors = [kv[0], kv[1], *(n.weight for n in norms)]
    if not all(t.dtype == torch.float32 and t.is_contiguous() for t in tensors):
        return None
    return cpu.StackLayer(norms[0].weight, norms[1].weight, *((li.qweight, li.bias) for li in linears), kv[0], kv[1])


def use_cpu_kernels(model: nn.Module) -> int:
    """Switch eligible modules of a float32 CPU model to the kernel subclasses; returns how many."""
    if cpu.load() is None:
        return 0
    n = 0
    if type(model) is LlamaForCausalLM:
        model.__class__ = KernelLlamaForCausalLM
    for mod in model.modules():
        new = {RMSNorm: KernelRMSNorm, MLP: KernelMLP}.get(type(mod))
        if type(mod) is Attention and not mod.qk_norm and mod.head_dim % 2 == 0:
            new = KernelAttention
        if new is not None:
            mod.__class__ = new  # same state, other forward
            n += 1
    return n


def use_int8_activations(model: nn.Module) -> int:
    """Switch a kernel model's decoder-layer GGUF linears (and its one-call stack) to int8
    activations for few-row matmuls; returns how many linears. Numerics change: opt-in only.
    The lm_head keeps float32 activations: its error lands on the logits directly (a hidden
    state with |x| = 33 in a block rounds its neighbours by 0.13), and its Q8_0 kernel already
    runs near memory speed in float32, so int8 would buy it ~8%."""
    if type(model) is KernelLlamaForCausalLM:
        model.__class__ = KernelLlamaInt8Act
    n = 0
    for name, mod in model.named_modules():
        if type(mod) is GGUFLinear and name != "lm_head":
            mod.__class__ = GGUFLinearInt8Act
            n += 1
    return n
