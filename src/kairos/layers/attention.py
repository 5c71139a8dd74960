"""Paged attention over a block-structured KV cache (CPU and CUDA, via SDPA).

KV cache of one layer: ``k_cache, v_cache: [num_blocks, block_size, num_kv_heads, head_dim]``;
token ``t`` of a sequence lives in block ``block_table[t // block_size]`` at offset
``t % block_size``. Contexts are gathered a whole block at a time (one contiguous row copy per
block, not one per token), padded with the null block and masked. Decode tokens are batched
into one SDPA call; grouped-query heads ride along as extra query rows of their KV head, so
SDPA never expands K/V. Each prefill chunk is one SDPA call (few per step). On float32 CPUs
and on GPUs the runner may instead set ``decode_tables``/``decode_lens``: decode tokens then go
to a kernel that reads the cache in place (C: ``kairos.kernels.cpu``, Triton:
``kairos.kernels.triton_attention``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kairos.kernels import triton_attention
from kairos.kernels.cpu import paged_decode_attention


@dataclass
class PrefillChunk:
    q_start: int  # index of the chunk's first token in the flat batch
    q_end: int
    blocks: torch.Tensor | None  # [nblk] block ids covering tokens 0 .. q_end; None: no past, use fresh k/v
    mask: torch.Tensor | None  # [q_len, nblk * block_size] bool, True = attend


@dataclass
class AttentionMetadata:
    """Built once per step by the runner, shared by every layer."""

    slot_mapping: torch.Tensor  # [T] flat slot (block * block_size + offset) where each new token's k/v goes
    decode_idx: torch.Tensor | None  # [Bd] flat indices of single-token (decode) queries
    decode_blocks: torch.Tensor | None  # [Bd * nblk] block ids of each decode context, padded with the null block
    decode_mask: torch.Tensor | None  # [Bd, 1, 1, nblk * block_size] bool, True = real context token
    prefills: list[PrefillChunk]
    # set instead of decode_blocks/decode_mask when a decode kernel runs (C on CPUs, Triton on GPUs)
    decode_tables: torch.Tensor | None = None  # [Bd, nblk] int32 block ids, padded with the null block
    decode_lens: torch.Tensor | None = None  # [Bd] int32 context lengths


def _gather(cache: torch.Tensor, blocks: torch.Tensor, rows: int) -> torch.Tensor:
    """``cache [NB, bs, H, D]``, ``blocks [rows * nblk]`` -> ``[rows, H, nblk * bs, D]`` (a strided view)."""
    nb, bs, h, d = cache.shape
    g = torch.index_select(cache.view(nb, bs * h * d), 0, blocks)  # [rows * nblk, bs*H*D]
    return g.view(rows, -1, h, d).transpose(1, 2)


def paged_attention(
    q: torch.Tensor,  # [T, Hq, D]
    k: torch.Tensor,  # [T, Hkv, D]
    v: torch.Tensor,  # [T, Hkv, D]
    k_cache: torch.Tensor,  # [NB, bs, Hkv, D]
    v_cache: torch.Tensor,
    meta: AttentionMetadata,
    scale: float,
    store: bool,  # write k/v to their slots first (False: the caller already did)
) -> torch.Tensor:  # [T, Hq, D]
    hq, hkv, d = q.shape[1], k.shape[1], q.shape[2]
    if store:
        k_cache.view(-1, hkv, d)[meta.slot_mapping] = k
        v_cache.view(-1, hkv, d)[meta.slot_mapping] = v
    if meta.decode_idx is not None and not meta.prefills and meta.decode_idx.shape[0] == q.shape[0]:
        return _decode(q, k_cache, v_cache, meta, scale)  # pure decode step: no scatter back
    out = torch.empty_like(q)
    if meta.decode_idx is not None:
        out[meta.decode_idx] = _decode(q[meta.decode_idx], k_cache, v_cache, meta, scale)
    for p in meta.prefills:
        qp = q[p.q_start : p.q_end].transpose(0, 1).unsqueeze(0)  # [1, Hq, n, D]
        if p.blocks is None:
            kp = k[p.q_start : p.q_end].transpose(0, 1).unsqueeze(0)  # [1, Hkv, n, D]
            vp = v[p.q_start : p.q_end].transpose(0, 1).unsqueeze(0)
            op = F.scaled_dot_product_attention(qp, kp, vp, is_causal=True, scale=scale, enable_gqa=hq != hkv)
        else:
            # slots past the context may hold anything (unwritten memory, even NaN): a masked score
            # still multiplies its value, and 0 * NaN poisons the row, so clear them
            unused = ~p.mask[-1].view(-1, 1)  # [L, 1]: the last query sees every real key
            kp = _gather(k_cache, p.blocks, 1).masked_fill_(unused, 0.0)  # [1, Hkv, L, D]
            vp = _gather(v_cache, p.blocks, 1).masked_fill_(unused, 0.0)
            if hq != hkv and expand_masked_gqa(q.device):
                # CUDA's SDPA runs a mask with enable_gqa only in its math kernel, which holds the
                # [Hq, n, L] scores in float32 (2.4 GB for a 8192-token chunk of 9 heads); with K/V
                # expanded to the query heads (HF repeat_kv order) the memory-efficient kernel takes it
                kp = kp.repeat_interleave(hq // hkv, dim=1)
                vp = vp.repeat_interleave(hq // hkv, dim=1)
            op = F.scaled_dot_product_attention(qp, kp, vp, attn_mask=p.mask, scale=scale,
                                                enable_gqa=kp.shape[1] != hq)
        out[p.q_start : p.q_end] = op.squeeze(0).transpose(0, 1)
    return out


def expand_masked_gqa(device: torch.device) -> bool:
    """Whether a masked grouped-query prefill expands K/V to the query heads first (see above)."""
    return device.type == "cuda"


def _decode(qd: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, meta: AttentionMetadata,
            scale: float) -> torch.Tensor:  # qd: [Bd, Hq, D] -> [Bd, Hq, D]
    if meta.decode_lens is not None:
        kernel = triton_attention.paged_decode_attention if qd.is_cuda else paged_decode_attention
        return kernel(qd, k_cache, v_cache, meta.decode_tables, meta.decode_lens, scale)
    bd, hq, d = qd.shape
    hkv = k_cache.shape[2]
    unused = ~meta.decode_mask.view(bd, 1, -1, 1)  # padding slots: cleared, as for prefill chunks
    kd = _gather(k_cache, meta.decode_blocks, bd).masked_fill_(unused, 0.0)  # [Bd, Hkv, L, D]
    vd = _gather(v_cache, meta.decode_blocks, bd).masked_fill_(unused, 0.0)
    # query heads h*G .. h*G+G-1 share KV head h (HF repeat_kv order): [Bd, Hkv, G, D]
    od = F.scaled_dot_product_attention(qd.view(bd, hkv, hq // hkv, d), kd, vd,
                                        attn_mask=meta.decode_mask, scale=scale)
    return od.reshape(bd, hq, d)
