"""ModelRunner: a scheduled batch -> flat tensors -> model forward -> logits of the sampling rows."""

from __future__ import annotations

import torch
from torch import nn

from kairos.engine.attention import AttentionMetadata, PrefillChunk
from kairos.engine.kv_cache import NULL_BLOCK
from kairos.engine.scheduler import ScheduledSeq
from kairos.models import ArchConfig


def kv_bytes_per_block(arch: ArchConfig, block_size: int, dtype: torch.dtype) -> int:
    elem = torch.empty((), dtype=dtype).element_size()
    return 2 * arch.num_layers * block_size * arch.num_kv_heads * arch.head_dim * elem


class ModelRunner:
    """Owns the KV tensors: per layer ``(k, v)``, each ``[num_blocks * block_size, Hkv, D]``."""

    def __init__(self, model: nn.Module, arch: ArchConfig, num_blocks: int, block_size: int,
                 device: torch.device, dtype: torch.dtype):
        self.model = model
        self.block_size = block_size
        self.device = device
        slots = num_blocks * block_size
        shape = (slots, arch.num_kv_heads, arch.head_dim)
        # torch.empty: pages are touched only when used, so an idle cache costs no RSS.
        self.kv_caches = [(torch.empty(shape, dtype=dtype, device=device), torch.empty(shape, dtype=dtype, device=device))
                          for _ in range(arch.num_layers)]
        for k, v in self.kv_caches:  # the null block pads gathers: keep it finite
            k[NULL_BLOCK * block_size : (NULL_BLOCK + 1) * block_size].zero_()
            v[NULL_BLOCK * block_size : (NULL_BLOCK + 1) * block_size].zero_()

    @torch.inference_mode()
    def execute(self, batch: list[ScheduledSeq]) -> torch.Tensor:
        """Run one step; returns float32 logits ``[S, vocab]`` for the entries that sample, in order."""
        ids, pos, meta, logits_idx = self._prepare(batch)
        hidden = self.model(ids, pos, self.kv_caches, meta)
        return self.model.compute_logits(hidden[logits_idx])

    @torch.inference_mode()
    def copy_blocks(self, pairs: list[tuple[int, int]]) -> None:
        bs = self.block_size
        for src, dst in pairs:
            for k, v in self.kv_caches:
                k[dst * bs : (dst + 1) * bs] = k[src * bs : (src + 1) * bs]
                v[dst * bs : (dst + 1) * bs] = v[src * bs : (src + 1) * bs]

    def _slots(self, table: list[int], start: int, end: int) -> torch.Tensor:
        pos = torch.arange(start, end)
        return torch.tensor(table, dtype=torch.long)[pos // self.block_size] * self.block_size + pos % self.block_size

    def _prepare(self, batch: list[ScheduledSeq]):
        ids: list[int] = []
        positions: list[torch.Tensor] = []
        slot_mapping: list[torch.Tensor] = []
        logits_idx: list[int] = []
        decode_idx: list[int] = []
        decode_tables: list[list[int]] = []
        decode_lens: list[int] = []
        prefills: list[PrefillChunk] = []
        for s in batch:
            start, n = s.seq.num_computed, s.num_new_tokens
            q0 = len(ids)
            ids.extend(s.seq.token_ids[start : start + n])
            positions.append(torch.arange(start, start + n))
            slot_mapping.append(self._slots(s.block_table, start, start + n))
            if s.samples:
                logits_idx.append(q0 + n - 1)
            if n == 1:
                decode_idx.append(q0)
                decode_tables.append(s.block_table)
                decode_lens.append(start + 1)
            elif start == 0:
                prefills.append(PrefillChunk(q0, q0 + n, None, None))
            else:
                ctx = start + n
                # query i (position start + i) sees keys 0 .. start + i
                mask = torch.arange(ctx)[None, :] <= torch.arange(start, ctx)[:, None]
                prefills.append(PrefillChunk(q0, q0 + n, self._slots(s.block_table, 0, ctx).to(self.device),
                                             mask.to(self.device)))
        dev = self.device
        meta = AttentionMetadata(
            slot_mapping=torch.cat(slot_mapping).to(dev),
            decode_idx=None, decode_slots=None, decode_mask=None, prefills=prefills,
        )
        if decode_idx:
            lmax = max(decode_lens)
            nb = -(-lmax // self.block_size)
            tables = torch.tensor([t[:nb] + [NULL_BLOCK] * (nb - len(t[:nb])) for t in decode_tables], dtype=torch.long)
            pos = torch.arange(lmax)
            valid = pos[None, :] < torch.tensor(decode_lens)[:, None]  # [Bd, Lmax]
            slots = tables[:, pos // self.block_size] * self.block_size + pos % self.block_size
            meta.decode_idx = torch.tensor(decode_idx, device=dev)
            meta.decode_slots = torch.where(valid, slots, NULL_BLOCK * self.block_size).to(dev)
            meta.decode_mask = valid[:, None, None, :].to(dev)
        return (torch.tensor(ids, dtype=torch.long, device=dev), torch.cat(positions).to(dev), meta,
                torch.tensor(logits_idx, dtype=torch.long, device=dev))
