"""Paged decode attention for GPUs, in Triton: one query token per sequence against the paged
KV cache, read in place (the torch path gathers every context into a padded copy first).

Same contract as the CPU kernel (:func:`kairos.kernels.cpu.paged_decode_attention`), so the
runner fills the same metadata on either device. One program per (sequence, KV head, split): it
loads the query heads of that KV head's group once and walks its share of the sequence's blocks
with an online softmax (running max and sum in float32), so K and V are read once per group,
never expanded for grouped-query heads. When sequences x KV heads are too few to fill the GPU
(batch 1: 3 programs for SmolLM2), each context is cut into up to 64 splits whose partial
softmax states a second kernel merges (flash-decoding). Scores use broadcast multiply + sum
rather than ``tl.dot``: decode is bound by reading the cache, and this works for any group size
(``tl.dot`` wants 16 rows).

Triton ships with the CUDA builds of torch; where it is missing :func:`available` is False and
the runner keeps the torch path. Tests run the kernel on CPU tensors in Triton's interpreter
(``TRITON_INTERPRET=1``) when no GPU is present.
"""

from __future__ import annotations

import functools
import logging

import torch

logger = logging.getLogger(__name__)


@functools.cache
def available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def paged_decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, tables: torch.Tensor,
                           lens: torch.Tensor, scale: float, splits: int | None = None) -> torch.Tensor:
    """``q [B, Hq, D]`` (rows may be strided; last dim contiguous), caches ``[NB, bs, Hkv, D]``
    (contiguous), ``tables [B, n]`` int32 block ids and ``lens [B]`` int32 context lengths
    (every ``lens[b] >= 1``, covered by ``tables[b]``) -> ``[B, Hq, D]`` in q's dtype.

    ``splits``: how many pieces each context's blocks are cut into, evenly by its own length
    (default :func:`num_splits` of the batch and the table width, both static under a CUDA
    graph; ``lens`` is not, so the kernel divides by it)."""
    import triton

    from kairos.kernels._triton_decode import combine_splits, paged_decode

    b, hq, d = q.shape
    nb, bs, hkv, _ = k_cache.shape
    if not (k_cache.is_contiguous() and v_cache.is_contiguous() and k_cache.shape == v_cache.shape):
        raise ValueError("the K and V caches must be contiguous and of one shape")
    if q.stride(2) != 1:
        q = q.contiguous()
    width = tables.shape[1]
    splits = num_splits(b * hkv, width, q.device) if splits is None else max(1, min(splits, width, MAX_SPLITS))
    out = torch.empty((b, hq, d), dtype=q.dtype, device=q.device)
    dp = triton.next_power_of_2(d)
    if splits > 1:
        part_o = torch.empty((b, hq, splits, dp), dtype=torch.float32, device=q.device)
        part_ml = torch.empty((b, hq, splits, 2), dtype=torch.float32, device=q.device)
    else:
        part_o = part_ml = out  # (not touched)
    g = hq // hkv
    paged_decode[(b, hkv, splits)](q, k_cache, v_cache, tables, lens, out, part_o, part_ml, scale, splits,
                                   q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
                                   tables.stride(0), out.stride(0), out.stride(1),
                                   G=g, GP=triton.next_power_of_2(g), D=d, DP=dp,
                                   BS=bs,  # a power of two (CacheConfig checks)
                                   PARTIAL=splits > 1)
    if splits > 1:  # (splits is a runtime value, SP a fixed tile: one compile of each kernel for every split count)
        combine_splits[(b, hq)](part_o, part_ml, out, splits, out.stride(0), out.stride(1), D=d, DP=dp, SP=MAX_SPLITS)
    return out


MAX_SPLITS = 64  # the merge kernel's tile: [MAX_SPLITS, D] partials in registers


def num_splits(programs: int, width: int, device: torch.device) -> int:
    """Splits per context so that ``programs`` (sequences x KV heads) x splits fill the device
    about twice over: at batch 1 a 3-KV-head model would otherwise keep 3 of an H100's 132
    SMs busy reading the cache. At least a block per split; one split where the batch alone
    fills the device (or on CPUs, in the interpreter)."""
    if device.type != "cuda":
        return 1
    target = 2 * _sm_count(device)
    return max(1, min(width, MAX_SPLITS, -(-target // programs) if programs < target else 1))


@functools.cache
def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


@functools.cache
def self_check(device: torch.device, dtype: torch.dtype, hq: int = 8, hkv: int = 2, d: int = 64,
               bs: int = 16) -> bool:
    """Whether the kernel compiles and agrees with the engine's torch decode path (gathered
    blocks + SDPA) on this device and dtype, for the model's heads (``hq`` query, ``hkv`` KV, of
    ``d``) and KV block size ``bs`` (the variant its steps compile), on a small case (a partial
    block, a one-token context). The runner keeps the torch path when not: a GPU stack where
    Triton fails costs speed, not answers."""
    from kairos.layers.attention import AttentionMetadata, _decode

    gen = torch.Generator().manual_seed(0)
    k_cache, v_cache = (torch.randn(7, bs, hkv, d, generator=gen) for _ in range(2))
    tables = torch.tensor([[1, 0, 0], [2, 3, 0], [4, 5, 6]], dtype=torch.int32)
    lens = torch.tensor([1, bs + min(4, bs - 1), 2 * bs + 1], dtype=torch.int32)
    q = torch.randn(3, hq, d, generator=gen)
    mask = (torch.arange(tables.shape[1] * bs)[None, :] < lens[:, None])[:, None, None, :]  # [B, 1, 1, L]
    ref = _decode(q, k_cache, v_cache, AttentionMetadata(None, None, tables.flatten().long(), mask, []), d**-0.5)
    args = (q.to(device, dtype), k_cache.to(device, dtype), v_cache.to(device, dtype), tables.to(device), lens.to(device))
    try:  # whole contexts, and each cut in up to 3 splits merged by the second kernel
        outs = [paged_decode_attention(*args, d**-0.5, splits=n).float().cpu() for n in (1, 3)]
    except Exception as e:  # noqa: BLE001 - any failure to build or run means: use the torch path
        logger.warning("Triton decode attention unavailable on %s (%s: %s); using the torch path", device,
                       type(e).__name__, e)
        return False
    tol = 1e-3 if dtype == torch.float32 else 3e-2
    if not all(torch.allclose(out, ref, rtol=tol, atol=tol) for out in outs):
        logger.warning("Triton decode attention disagrees with SDPA on %s/%s; using the torch path", device, dtype)
        return False
    return True
