"""Decode-only steps replayed from CUDA graphs at padded batch sizes.

Once a decode step's inputs live in static buffers — token ids, positions and KV slots ``[B]``,
block tables ``[B, max_blocks]`` and context lengths ``[B]`` (the decode-attention kernel walks
each row to its own length) — its kernels depend on nothing but B. A step of ``b`` sequences
replays the graph captured at the smallest size ``>= b``; rows ``b..size`` are padding that
writes its K/V into the null block and attends to that alone. Replaying one graph replaces a
few hundred kernel launches (and their Python) per step.

Capture runs at start-up, largest size first so the smaller graphs reuse its memory pool,
within a time budget: a batch pads up to the next size that was captured; batches above the
largest and every step with prefill run eagerly. Each captured size is then replayed once
against the eager forward (row r: one token at position 0 in block r + 1); any mismatch turns
all graphs off (wrong answers are worse than slow ones). The check covers one-token contexts
only: the kernels do not change with the length, the data they read does.

The capture function is pluggable: :func:`cuda_capture` records a ``torch.cuda.CUDAGraph``;
:func:`eager_capture` (tests, CPU) re-runs the callable over the same buffers, so the buffer,
padding and dispatch logic is exercised without a GPU.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import torch

from kairos.kv.manager import NULL_BLOCK
from kairos.layers.attention import AttentionMetadata

logger = logging.getLogger(__name__)

# (replay, output) for a callable; replay() recomputes output in place from the static buffers
Capture = Callable[[Callable[[], torch.Tensor]], tuple[Callable[[], None], torch.Tensor]]
Forward = Callable[[torch.Tensor, torch.Tensor, AttentionMetadata], torch.Tensor]  # ids, positions -> logits


def eager_capture(fn: Callable[[], torch.Tensor]) -> tuple[Callable[[], None], torch.Tensor]:
    out = fn()
    return (lambda: out.copy_(fn())), out


def cuda_capture() -> Capture:
    """A capture function whose graphs share one memory pool."""
    pool = None

    side = torch.cuda.Stream()

    def capture(fn: Callable[[], torch.Tensor]) -> tuple[Callable[[], None], torch.Tensor]:
        nonlocal pool
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up off the capture (lazy inits, autotuning)
            fn()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool):
            out = fn()
        pool = graph.pool()
        return graph.replay, out

    return capture


def capture_sizes(max_num_seqs: int) -> list[int]:
    """1, 2, 4, 8, then every 8 up to ``max_num_seqs`` (padding wastes at most 7 rows)."""
    sizes = [s for s in (1, 2, 4) if s < max_num_seqs] + list(range(8, max_num_seqs + 1, 8))
    return sorted(set(sizes + [max_num_seqs]))


class DecodeGraphs:
    """Static decode buffers and the graphs captured over them."""

    def __init__(self, forward: Forward, sizes: list[int], max_blocks: int, device: torch.device,
                 dtype: torch.dtype = torch.float32):
        n = max(sizes)
        self.forward = forward
        self.forward_dtype = dtype  # the model's: sets how close replay and eager must be
        self.sizes = sorted(sizes)
        self.device = device
        self.ids = torch.zeros(n, dtype=torch.long, device=device)
        self.positions = torch.zeros(n, dtype=torch.long, device=device)
        self.slots = torch.zeros(n, dtype=torch.long, device=device)  # padding: slot 0 of the null block
        self.tables = torch.full((n, max_blocks), NULL_BLOCK, dtype=torch.int32, device=device)
        self.lens = torch.ones(n, dtype=torch.int32, device=device)
        self.rows = torch.arange(n, device=device)
        self.out: torch.Tensor | None = None  # [n, vocab] logits: every graph's output is a view of it
        self.graphs: dict[int, tuple[Callable[[], None], torch.Tensor]] = {}
        self.failed_at: int | None = None  # the size whose replay disagreed with the eager step
        self.seconds = 0.0  # what capture took

    def _meta(self, n: int) -> AttentionMetadata:
        return AttentionMetadata(slot_mapping=self.slots[:n], decode_idx=self.rows[:n], decode_blocks=None,
                                 decode_mask=None, prefills=[], decode_tables=self.tables[:n], decode_lens=self.lens[:n])

    def _eager(self, n: int) -> torch.Tensor:
        return self.forward(self.ids[:n], self.positions[:n], self._meta(n))

    def _into_out(self, n: int) -> torch.Tensor:
        # One output buffer for every size, allocated outside the graphs: a graph's own output
        # stays allocated in the pool the graphs share, and 35 sizes up to 256 rows of a 49k
        # vocabulary in float32 would hold 0.8 GiB (2.4 GiB for a 152k one) beside the KV cache.
        # Replays are read in stream order before the next one, so they can share it.
        out = self.out[:n]
        out.copy_(self._eager(n))
        return out

    @torch.inference_mode()
    def capture(self, capture: Capture, budget_s: float, block_size: int, num_blocks: int,
                trusted: frozenset[int] = frozenset()) -> None:
        """Capture every size (largest first) until ``budget_s`` runs out, then check each not in
        ``trusted`` (sizes an earlier start on this stack checked: engine.capture_record) against
        the eager forward; the time it took is left in ``seconds``. Call before any request runs: the check
        writes K/V into free blocks (row r into block r + 1, which it alone reads)."""
        t0 = time.perf_counter()
        self._pad(0)
        probe = self._eager(1)  # the logits' width and dtype
        self.out = torch.empty((max(self.sizes), probe.shape[1]), dtype=probe.dtype, device=self.device)
        del probe
        for n in reversed(self.sizes):
            if time.perf_counter() - t0 > budget_s:
                logger.warning("decode graphs: capture budget of %.0f s spent; batches up to %d pad to a larger size",
                               budget_s, n)
                break
            self.graphs[n] = capture(lambda n=n: self._into_out(n))
        for n, (replay, out) in sorted(self.graphs.items()):
            if n in trusted:
                continue
            if n >= num_blocks:  # rows use blocks 1..n (padding rows share the null block's slot 0 and race)
                logger.warning("decode graphs: %d KV blocks cannot check batch %d; graphs from it on dropped", num_blocks, n)
                self.graphs = {m: g for m, g in self.graphs.items() if m < n}
                break
            rows = torch.arange(n, device=self.device)
            self.ids[:n] = rows % 97 + 1
            self.slots[:n] = (rows + 1) * block_size
            self.tables[:n, 0] = (rows + 1).to(torch.int32)
            self.out.fill_(float("nan"))  # (the shared buffer holds the last size's rows: a replay must write its own)
            replay()
            eager = self._eager(n)
            # float32 logits of a bf16/fp16 model carry its rounding (a step of 0.125 at 20); the
            # absolute part shrinks with logits far below 1 (dummy weights: ~1e-5), where it would pass anything
            tol = 1e-3 if self.forward_dtype == torch.float32 else 2e-2
            ok = torch.allclose(out, eager, rtol=tol, atol=10 * tol * min(1.0, eager.abs().max().item()))
            self._pad(0)
            if not ok:
                logger.warning("decode graphs: replay at batch %d disagrees with the eager step; not using graphs", n)
                self.failed_at = n
                self.graphs.clear()
                break
        self.seconds = time.perf_counter() - t0

    def _pad(self, b: int) -> None:
        self.ids[b:].zero_()
        self.positions[b:].zero_()
        self.slots[b:].zero_()
        self.tables[b:].fill_(NULL_BLOCK)
        self.lens[b:].fill_(1)

    def size_for(self, b: int) -> int | None:
        return next((n for n in self.sizes if n >= b and n in self.graphs), None)

    @torch.inference_mode()
    def run(self, ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor | None:
        """Logits ``[b, vocab]`` of a decode-only step (the runner's inputs and metadata, with
        ``decode_tables``/``decode_lens``), or None when no graph fits it (run it eagerly)."""
        b, width = meta.decode_tables.shape
        n = self.size_for(b)
        if n is None or width > self.tables.shape[1]:
            return None
        self.ids[:b].copy_(ids)
        self.positions[:b].copy_(positions)
        self.slots[:b].copy_(meta.slot_mapping)
        self.tables[:b, :width].copy_(meta.decode_tables)
        self.tables[:b, width:].fill_(NULL_BLOCK)  # (never read: lens)
        self.lens[:b].copy_(meta.decode_lens)
        self._pad(b)
        replay, out = self.graphs[n]
        replay()
        return out[:b]
