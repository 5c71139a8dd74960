"""ModelRunner: a scheduled batch -> flat tensors -> model forward -> logits of the sampling rows."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from kairos.config import CacheConfig, parse_size
from kairos.kernels import triton_attention
from kairos.kernels.cpu import decode_attention_supported
from kairos.kv.block_table import BlockTableRows
from kairos.kv.manager import NULL_BLOCK
from kairos.layers.attention import AttentionMetadata, PrefillChunk
from kairos.models import ArchConfig
from kairos.sched.scheduler import ScheduledSeq
from kairos.worker.decode_graphs import Capture, DecodeGraphs
from kairos.worker.h2d import h2d
from kairos.worker.sampler import PromptLogprobs, prompt_logprobs


def kv_bytes_per_block(arch: ArchConfig, block_size: int, dtype: torch.dtype) -> int:
    elem = torch.empty((), dtype=dtype).element_size()
    return 2 * arch.num_layers * block_size * arch.num_kv_heads * arch.head_dim * elem


CPU_KV_CACHE_MEMORY = "2GiB"
GPU_ACTIVATION_RESERVE = 2 << 30  # a step's activations and the CUDA graphs' pool, beside the KV cache


def kv_cache_bytes(cache: CacheConfig, device: torch.device,
                   mem_get_info: Callable[[torch.device], tuple[int, int]] | None = None) -> int:
    """Bytes for the KV cache: ``--kv-cache-memory`` when set; else 2 GiB on CPUs; on GPUs the
    ``gpu_memory_utilization`` share of the device less what is in use already (the weights,
    other processes) and a reserve for activations. Call once the weights are on the device."""
    if cache.kv_cache_memory is not None:
        return parse_size(cache.kv_cache_memory)
    if device.type != "cuda":
        return parse_size(CPU_KV_CACHE_MEMORY)
    free, total = (mem_get_info or torch.cuda.mem_get_info)(device)
    if mem_get_info is None:  # what torch's allocator holds but no tensor uses (an engine freed before) is free to us
        free += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    budget = int(cache.gpu_memory_utilization * total) - (total - free) - GPU_ACTIVATION_RESERVE
    if budget <= 0:
        raise ValueError(f"no GPU memory left for the KV cache: {free / 2**30:.1f} GiB free of {total / 2**30:.1f}, "
                         f"gpu_memory_utilization {cache.gpu_memory_utilization} (raise it, or set --kv-cache-memory)")
    return budget


class ModelRunner:
    """Owns the KV tensors: per layer ``(k, v)``, each ``[num_blocks, block_size, Hkv, D]``."""

    def __init__(self, model: nn.Module, arch: ArchConfig, num_blocks: int, block_size: int,
                 device: torch.device, dtype: torch.dtype, cpu_kernels: bool = False):
        self.model = model
        # decode attention by a kernel that reads the paged cache in place instead of gathering it:
        # the C one on float32 CPUs, the Triton one on GPUs (after a check against the torch path)
        if device.type == "cuda":
            self.decode_kernel = triton_attention.available() and triton_attention.self_check(
                device, dtype, arch.num_heads, arch.num_kv_heads, arch.head_dim, block_size)
        else:
            self.decode_kernel = (cpu_kernels and device.type == "cpu" and dtype == torch.float32
                                  and decode_attention_supported(arch.num_heads, arch.num_kv_heads, arch.head_dim))
        self.block_size = block_size
        self.device = device
        shape = (num_blocks, block_size, arch.num_kv_heads, arch.head_dim)
        # torch.empty: pages are touched only when used, so an idle cache costs no RSS.
        self.kv_caches = [(torch.empty(shape, dtype=dtype, device=device), torch.empty(shape, dtype=dtype, device=device))
                          for _ in range(arch.num_layers)]
        for k, v in self.kv_caches:  # the null block pads gathers: keep it finite
            k[NULL_BLOCK].zero_()
            v[NULL_BLOCK].zero_()
        self.graphs: DecodeGraphs | None = None  # enable_decode_graphs
        self.table_rows = BlockTableRows()

    def enable_decode_graphs(self, sizes: list[int], max_model_len: int, capture: Capture, budget_s: float,
                             trusted: frozenset[int] = frozenset()) -> DecodeGraphs:
        """Capture decode steps at these batch sizes (``engine.decode_graphs``; ``trusted`` sizes
        skip their check); needs the decode kernel (static block tables). Call before any request
        runs. Returns the graphs (kept in ``self.graphs`` when any size was captured and held)."""
        if not self.decode_kernel:
            raise ValueError("decode graphs need a decode-attention kernel (Triton on GPUs)")

        model, caches = self.model, self.kv_caches  # (not self: no runner <-> graphs cycle to outlive a del)

        def forward(ids: torch.Tensor, pos: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
            return model.compute_logits(model(ids, pos, caches, meta))

        graphs = DecodeGraphs(forward, sizes, -(-max_model_len // self.block_size), self.device,
                              self.kv_caches[0][0].dtype)
        graphs.capture(capture, budget_s, self.block_size, self.kv_caches[0][0].shape[0], trusted)
        self.graphs = graphs if graphs.graphs else None
        return graphs

    @torch.inference_mode()
    def execute(self, batch: list[ScheduledSeq], prev_tokens: torch.Tensor | None = None,
                prev_rows: dict[int, int] | None = None) -> tuple[torch.Tensor, PromptLogprobs | None]:
        """Run one step; returns float32 logits ``[S, vocab]`` for the entries that sample, in order,
        and the logprobs of the prompt tokens the step's chunks predict for sequences that asked
        (``prompt_logprobs``; None when none did). An input token that is a ``PLACEHOLDER`` (its
        step still in flight) is read on the device from ``prev_tokens`` ``[R]``, that step's
        sampled ids, at row ``prev_rows[seq_id]``."""
        ids, pos, meta, logits_idx, fill, asked = self._prepare(batch, prev_rows)
        if fill:
            at, rows = zip(*fill)
            ids.index_copy_(0, h2d(list(at), self.device, torch.long),
                            prev_tokens.index_select(0, h2d(list(rows), self.device, torch.long)))
        if self.graphs is not None and logits_idx is None and not meta.prefills and not asked:  # decode only
            logits = self.graphs.run(ids, pos, meta)
            if logits is not None:
                return logits, None
        hidden = self.model(ids, pos, self.kv_caches, meta)
        prompt = None
        if asked:
            rows = [q for _, q, lo, hi in asked for q in range(q, q + hi - lo)]
            targets = [t for s, _, lo, hi in asked for t in s.seq.token_ids[lo + 1 : hi + 1]]
            k = max(s.seq.params.prompt_logprobs for s, *_ in asked)
            prompt = prompt_logprobs(self.model.compute_logits, hidden.index_select(0, h2d(rows, self.device, torch.long)),
                                     h2d(targets, self.device, torch.long), k, [(s.seq, lo, hi) for s, _, lo, hi in asked])
        if logits_idx is not None:
            hidden = hidden[logits_idx]
        return self.model.compute_logits(hidden), prompt

    @torch.inference_mode()
    def copy_blocks(self, pairs: list[tuple[int, int]]) -> None:
        for src, dst in pairs:
            for k, v in self.kv_caches:
                k[dst] = k[src]
                v[dst] = v[src]

    def _prepare(self, batch: list[ScheduledSeq], prev_rows: dict[int, int] | None = None):
        # Plain Python lists, one tensor each at the end: a step makes a handful of small tensors.
        bs = self.block_size
        ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        logits_idx: list[int] = []
        decode_idx: list[int] = []
        decode_tables: list[list[int]] = []
        decode_lens: list[int] = []
        prefills: list[PrefillChunk] = []
        decode_seq_ids: list[int] = []
        fill: list[tuple[int, int]] = []  # (input index, row of prev_tokens): placeholders
        # prompt_logprobs: (entry, input index of position lo, lo, hi): positions lo..hi-1 predict tokens lo+1..hi
        asked: list[tuple[ScheduledSeq, int, int, int]] = []
        dev = self.device
        for s in batch:
            seq, n, table = s.seq, s.num_new_tokens, s.block_table
            start = seq.num_computed
            q0 = len(ids)
            if seq.num_pending and start + n > seq.num_known:
                # (only the last token can be one: the step that samples it is the one in flight)
                fill.append((q0 + n - 1, prev_rows[seq.seq_id]))
            if seq.prompt_logprobs is not None:  # (a recompute after preemption skips those found)
                lo, hi = max(start, seq.num_prompt_logprobs), min(start + n, seq.num_prompt_tokens - 1)
                if lo < hi:
                    asked.append((s, q0 + lo - start, lo, hi))
            if s.draft:
                # speculative: its last token and the draft are decode rows of their own, each seeing
                # the context up to itself (every new token's KV is written before attention), so
                # the step stays on the decode path (kernels, graphs); every row samples
                for i, tok in enumerate(seq.token_ids[start : start + 1] + s.draft):
                    p = start + i
                    ids.append(tok)
                    positions.append(p)
                    slots.append(table[p // bs] * bs + p % bs)
                    logits_idx.append(q0 + i)
                    decode_idx.append(q0 + i)
                    decode_seq_ids.append(seq.seq_id)
                    decode_tables.append(table)
                    decode_lens.append(p + 1)
                continue
            if n == 1:  # decode (most rows of most steps): no ranges, no generators
                ids.append(seq.token_ids[start])
                positions.append(start)
                slots.append(table[start // bs] * bs + start % bs)
                if start + 1 == len(seq.token_ids):  # (s.samples)
                    logits_idx.append(q0)
                decode_idx.append(q0)
                decode_seq_ids.append(seq.seq_id)
                decode_tables.append(table)
                decode_lens.append(start + 1)
                continue
            ids.extend(seq.token_ids[start : start + n])
            positions.extend(range(start, start + n))
            slots.extend(table[p // bs] * bs + p % bs for p in range(start, start + n))
            if s.samples:
                logits_idx.append(q0 + n - 1)
            if start == 0:
                prefills.append(PrefillChunk(q0, q0 + n, None, None))
            else:
                ctx = start + n
                nblk = -(-ctx // bs)
                # query i (position start + i) sees keys 0 .. start + i; made where it is used, not
                # built on the host and copied (1 GiB of pinned memory at 8k x 128k)
                mask = torch.arange(nblk * bs, device=dev)[None, :] <= torch.arange(start, ctx, device=dev)[:, None]
                prefills.append(PrefillChunk(q0, q0 + n, h2d(table[:nblk], dev, torch.long), mask))
        meta = AttentionMetadata(slot_mapping=h2d(slots, dev, torch.long), decode_idx=None,
                                 decode_blocks=None, decode_mask=None, prefills=prefills)
        if decode_idx:
            nblk = -(-max(decode_lens) // bs)
            tables = torch.from_numpy(self.table_rows.gather(decode_seq_ids, decode_tables, nblk))  # [Bd, nblk]
            meta.decode_idx = h2d(decode_idx, dev, torch.long)
            if self.decode_kernel:
                meta.decode_tables = h2d(tables, dev)
                meta.decode_lens = h2d(decode_lens, dev, torch.int32)
            else:
                valid = torch.arange(nblk * bs)[None, :] < torch.tensor(decode_lens)[:, None]  # [Bd, L]
                meta.decode_blocks = h2d(tables.flatten(), dev, torch.long)
                meta.decode_mask = h2d(valid[:, None, None, :], dev)
        all_rows = len(logits_idx) == len(ids)  # pure decode: every row samples, in order
        return (h2d(ids, dev, torch.long), h2d(positions, dev, torch.long), meta,
                None if all_rows else h2d(logits_idx, dev, torch.long), fill, asked)
