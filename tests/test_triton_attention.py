"""The Triton paged decode attention (the GPU decode path) against SDPA over gathered contexts.

On a GPU it runs compiled; without one, on CPU tensors in Triton's interpreter. Skips where
Triton is not installed (it ships with CUDA builds of torch, not with the CPU wheel).
"""

from __future__ import annotations

import os

import pytest
import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu":  # Triton reads this when it is first imported, which is below
    os.environ.setdefault("TRITON_INTERPRET", "1")

from kairos.kernels import triton_attention  # noqa: E402

from engine_helpers import reference_decode_attention  # noqa: E402

pytestmark = pytest.mark.skipif(not triton_attention.available(), reason="triton is not installed")


@pytest.fixture(autouse=True)
def _runs_somewhere():
    if DEVICE == "cpu":
        import triton.language as tl
        from triton.runtime.interpreter import InterpretedFunction

        if not isinstance(tl.cdiv, InterpretedFunction):
            pytest.skip("triton was imported before this module could select its interpreter")


@pytest.mark.parametrize("hq,hkv,d,bs,splits", [(4, 2, 16, 4, 1), (4, 2, 16, 4, 4), (9, 3, 64, 16, 1),
                                                 (9, 3, 64, 16, 2), (8, 8, 32, 8, 1), (12, 2, 96, 16, 3)])
def test_triton_decode_attention_matches_sdpa(hq, hkv, d, bs, splits):
    # splits > 1: each context's blocks cut in pieces merged by a second kernel; short contexts
    # leave later pieces empty (lens 1 and bs fit in the first block)
    gen = torch.Generator().manual_seed(hq * 100 + d)
    lens = torch.tensor([1, bs, bs + 1, 3 * bs - 1, 37], dtype=torch.int32)
    nblk = -(-int(lens.max()) // bs)
    num_blocks = len(lens) * nblk + 1
    k_cache = torch.randn(num_blocks, bs, hkv, d, generator=gen)
    v_cache = torch.randn(num_blocks, bs, hkv, d, generator=gen)
    k_cache[0] = float("nan")  # block 0 pads the tables: never read
    v_cache[0] = float("nan")
    tables = torch.zeros(len(lens), nblk, dtype=torch.int32)
    perm = torch.randperm(num_blocks - 1, generator=gen) + 1
    for b, n in enumerate(lens.tolist()):
        used = -(-n // bs)
        tables[b, :used] = perm[b * nblk : b * nblk + used]
    q = torch.randn(len(lens), hq, d, generator=gen)
    args = [t.to(DEVICE) for t in (q, k_cache, v_cache, tables, lens)]
    out = triton_attention.paged_decode_attention(*args, d**-0.5, splits=splits)
    assert out.shape == q.shape and out.dtype == q.dtype
    torch.testing.assert_close(out.cpu(), reference_decode_attention(q, k_cache, v_cache, tables, lens, d**-0.5),
                               rtol=1e-4, atol=1e-4)


def test_triton_decode_attention_reads_strided_queries_and_keeps_the_dtype():
    gen = torch.Generator().manual_seed(0)
    qkv = torch.randn(3, (4 + 2 * 2) * 16, generator=gen).to(DEVICE)  # fused projection rows: q is a strided view
    q = qkv[:, : 4 * 16].view(3, 4, 16)
    assert not q.is_contiguous()
    k_cache = torch.randn(7, 4, 2, 16, generator=gen)
    v_cache = torch.randn(7, 4, 2, 16, generator=gen)
    tables = torch.tensor([[1, 2], [3, 4], [5, 6]], dtype=torch.int32)
    lens = torch.tensor([5, 8, 2], dtype=torch.int32)
    ref = reference_decode_attention(q.cpu(), k_cache, v_cache, tables, lens, 0.25)
    out = triton_attention.paged_decode_attention(q, *(t.to(DEVICE) for t in (k_cache, v_cache, tables, lens)), 0.25)
    torch.testing.assert_close(out.cpu(), ref, rtol=1e-4, atol=1e-4)
    half = triton_attention.paged_decode_attention(*(t.to(DEVICE) for t in (
        q.bfloat16(), k_cache.bfloat16(), v_cache.bfloat16(), tables, lens)), 0.25)  # (q contiguous here)
    assert half.dtype == torch.bfloat16  # float32 inside, the caches' dtype out
    torch.testing.assert_close(half.float().cpu(), ref, rtol=2e-2, atol=2e-2)


def test_splits_fill_the_gpu_only_when_the_batch_does_not(monkeypatch):
    cuda = torch.device("cuda")
    monkeypatch.setattr(triton_attention, "_sm_count", lambda device: 132)  # an H100
    assert triton_attention.num_splits(3, 128, cuda) == 64  # batch 1, 3 KV heads: 88 for 264 programs, capped
    assert triton_attention.num_splits(3, 4, cuda) == 4  # at most one split per block
    assert triton_attention.num_splits(24, 128, cuda) == 11  # batch 8
    assert triton_attention.num_splits(192, 128, cuda) == 2
    assert triton_attention.num_splits(264, 128, cuda) == 1
    assert triton_attention.num_splits(3, 128, torch.device("cpu")) == 1


def test_self_check_accepts_the_kernel_and_falls_back_when_it_fails(monkeypatch, caplog):
    check = triton_attention.self_check.__wrapped__  # uncached
    assert check(torch.device(DEVICE), torch.float32)
    assert check(torch.device(DEVICE), torch.float32, 9, 3, 64, 16)  # SmolLM2's heads: a group of 3 in a tile of 4
    assert check(torch.device(DEVICE), torch.float32, 4, 4, 32, 1)  # no grouping, one-token blocks

    def broken(*args, **kwargs):
        raise RuntimeError("no kernel image for this GPU")

    monkeypatch.setattr(triton_attention, "paged_decode_attention", broken)
    assert not check(torch.device(DEVICE), torch.float32)
    assert "no kernel image for this GPU" in caplog.text and "using the torch path" in caplog.text
