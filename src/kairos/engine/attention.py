"""Paged attention over a flat slot-indexed KV cache (CPU and CUDA, via SDPA).

KV cache of one layer: ``k_cache, v_cache: [num_blocks * block_size, num_kv_heads, head_dim]``;
token ``t`` of a sequence lives at slot ``block_table[t // block_size] * block_size + t % block_size``.
Decode tokens are batched into one SDPA call over gathered, padded contexts; each prefill
chunk is one SDPA call (few per step, so the Python loop stays short).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class PrefillChunk:
    q_start: int  # index of the chunk's first token in the flat batch
    q_end: int
    kv_slots: torch.Tensor | None  # [context_len] slots of all tokens up to q_end; None: no past, use fresh k/v
    mask: torch.Tensor | None  # [q_len, context_len] bool, True = attend; None with kv_slots None means causal


@dataclass
class AttentionMetadata:
    """Built once per step by the runner, shared by every layer."""

    slot_mapping: torch.Tensor  # [T] where each new token's k/v is written
    decode_idx: torch.Tensor | None  # [Bd] flat indices of single-token (decode) queries
    decode_slots: torch.Tensor | None  # [Bd, Lmax] context slots, padded with slot 0
    decode_mask: torch.Tensor | None  # [Bd, 1, 1, Lmax] bool, True = real context token
    prefills: list[PrefillChunk]


def paged_attention(
    q: torch.Tensor,  # [T, Hq, D]
    k: torch.Tensor,  # [T, Hkv, D]
    v: torch.Tensor,  # [T, Hkv, D]
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    meta: AttentionMetadata,
    scale: float,
) -> torch.Tensor:  # [T, Hq, D]
    k_cache[meta.slot_mapping] = k
    v_cache[meta.slot_mapping] = v
    out = torch.empty_like(q)
    if meta.decode_idx is not None:
        qd = q[meta.decode_idx].unsqueeze(2)  # [Bd, Hq, 1, D]
        kd = k_cache[meta.decode_slots].transpose(1, 2)  # [Bd, Hkv, Lmax, D]
        vd = v_cache[meta.decode_slots].transpose(1, 2)
        od = F.scaled_dot_product_attention(qd, kd, vd, attn_mask=meta.decode_mask, scale=scale, enable_gqa=True)
        out[meta.decode_idx] = od.squeeze(2)
    for p in meta.prefills:
        qp = q[p.q_start : p.q_end].transpose(0, 1).unsqueeze(0)  # [1, Hq, n, D]
        if p.kv_slots is None:
            kp = k[p.q_start : p.q_end].transpose(0, 1).unsqueeze(0)  # [1, Hkv, n, D]
            vp = v[p.q_start : p.q_end].transpose(0, 1).unsqueeze(0)
            op = F.scaled_dot_product_attention(qp, kp, vp, is_causal=True, scale=scale, enable_gqa=True)
        else:
            kp = k_cache[p.kv_slots].transpose(0, 1).unsqueeze(0)  # [1, Hkv, L, D]
            vp = v_cache[p.kv_slots].transpose(0, 1).unsqueeze(0)
            op = F.scaled_dot_product_attention(qp, kp, vp, attn_mask=p.mask, scale=scale, enable_gqa=True)
        out[p.q_start : p.q_end] = op.squeeze(0).transpose(0, 1)
    return out
