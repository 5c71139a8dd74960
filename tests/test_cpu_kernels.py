"""The C kernels (kairos.kernels.cpu) against torch on the same float32 values."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from gguf import GGMLQuantizationType
from gguf.quants import dequantize, quantize
from torch import nn

from kairos.kernels import cpu
from kairos.models.gguf_linear import GGUFLinear, GGUFLinearInt8Act, attach_gguf_blocks

from engine_helpers import reference_decode_attention

pytestmark = pytest.mark.skipif(cpu.load() is None, reason="CPU kernels need x86-64 with AVX2/FMA/F16C and a C compiler")

KINDS = {"q4_1": GGMLQuantizationType.Q4_1, "q8_0": GGMLQuantizationType.Q8_0}


def _blocks(n: int, k: int, kind: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random weights quantized by the gguf package: (uint8 blocks [n, k/32*bytes], dequantized [n, k])."""
    w = np.random.default_rng(seed).standard_normal((n, k)).astype(np.float32)
    q = quantize(w, KINDS[kind])
    return torch.from_numpy(np.ascontiguousarray(q)), torch.from_numpy(dequantize(q, KINDS[kind]).astype(np.float32))


@pytest.mark.parametrize("kind", ["q4_1", "q8_0"])
@pytest.mark.parametrize("m", [1, 2, 3, 4, 5, 7, 8, 9, 16, 17, 40])  # row tiles, their remainders, x panels of 16
@pytest.mark.parametrize("tiled", [None, False, True])  # chosen by rows, the few-row kernel, the tiled GEMM
def test_gguf_gemm_matches_dense(kind, m, tiled):
    blocks, w = _blocks(70, 160, kind)  # 70 rows: the tiled kernel's last task has 4 of its 6 rows
    assert blocks.shape == (70, 160 // 32 * cpu.BLOCK_BYTES[kind])
    x = torch.randn(m, 160, generator=torch.Generator().manual_seed(m))
    ref = (x.double() @ w.double().T).float()
    torch.testing.assert_close(cpu.gguf_gemm(x, cpu.GGUFWeight.from_blocks(kind, blocks), tiled), ref, rtol=1e-5, atol=1e-4)
    xs = torch.randn(m, 200)[:, 20:180]  # strided rows are read in place
    torch.testing.assert_close(cpu.gguf_gemm(xs, cpu.GGUFWeight.from_blocks(kind, blocks), tiled),
                               (xs.double() @ w.double().T).float(), rtol=1e-5, atol=1e-4)


def _int8_rows(x: torch.Tensor) -> torch.Tensor:
    """x as gguf_gemm_q8.c quantizes it, dequantized: per block of 32, scale max|x| / 127 and
    x * (1 / scale) rounded half to even, all in float32 as the kernel does."""
    m, k = x.shape
    xb = x.contiguous().view(m, k // 32, 32)
    d = xb.abs().amax(-1, keepdim=True) / 127
    q = torch.round(xb * torch.where(d > 0, 1 / d, 0.0))
    assert q.abs().max() <= 127
    return (q.double() * d.double()).view(m, k)


@pytest.mark.parametrize("kind", ["q4_1", "q8_0"])
@pytest.mark.parametrize("m", [1, 2, 3, 8, 9])  # 9: above the few-row shapes, the float32 tiled GEMM
def test_int8_activation_gemm_is_the_quantized_rows_times_w(kind, m):
    blocks, w = _blocks(70, 160, kind)
    qw = cpu.GGUFWeight.from_blocks(kind, blocks)
    x = torch.randn(m, 200, generator=torch.Generator().manual_seed(m))[:, 20:180] * 3  # strided rows
    x[0, 32:64] = 0.0  # an all-zero block: scale 0
    y = cpu.gguf_gemm(x, qw, int8_activations=True)
    exact = (x.double() @ w.double().T).float()
    if m > 8:
        torch.testing.assert_close(y, cpu.gguf_gemm(x, qw))  # batches stay float32
        return
    torch.testing.assert_close(y, (_int8_rows(x) @ w.double().T).float(), rtol=1e-5, atol=1e-4)
    # and so it is not the float32 product: each activation is off by up to half its block's step
    assert not torch.allclose(y, exact, rtol=1e-5, atol=1e-4)
    step = (x.view(m, 5, 32).abs().amax(-1) / 127).repeat_interleave(32, dim=1)  # [m, K]
    bound = (step.double() / 2) @ w.double().abs().T + 1e-4
    assert ((y.double() - exact.double()).abs() <= bound).all()
    with pytest.raises(ValueError, match="leave tiled as None"):
        cpu.gguf_gemm(x, qw, tiled=False, int8_activations=True)


HAS = {name: set(need) <= cpu.cpu_flags() for name, (_, need, _) in cpu.VARIANTS.items()}


@pytest.fixture
def set_isa():
    """cpu.set_isa, the choice in force before the test restored after it."""
    prev = cpu.set_isa("auto")
    yield cpu.set_isa
    cpu.set_isa(prev)


def _both_isas(set_isa, fn):
    out = {}
    for choice in ("avx2", "avx512"):
        set_isa(choice)
        out[choice] = fn()
    return out["avx2"], out["avx512"]


@pytest.mark.skipif(not HAS["gemm"], reason="no AVX-512 F/BW/VL/DQ on this CPU: only the AVX2 kernels run")
@pytest.mark.parametrize("kind", ["q4_1", "q8_0"])
@pytest.mark.parametrize("k", [160, 576])  # an odd and an even number of blocks (the default model's K)
def test_avx512_gemm_is_the_avx2_gemm_bit_for_bit(kind, k, set_isa):
    """gguf_gemm_avx512.c does in each lane what the AVX2 kernel does in the lane it stands for,
    in the same order: the same bits at every row count (tiles of 8, 4 and 1-3 rows)."""
    blocks, w = _blocks(70, k, kind)
    qw = cpu.GGUFWeight.from_blocks(kind, blocks)
    for m in range(1, 19):
        x = torch.randn(m, k + 40, generator=torch.Generator().manual_seed(m))[:, 20 : 20 + k]  # strided rows
        a, b = _both_isas(set_isa, lambda x=x: cpu.gguf_gemm(x, qw, tiled=False))
        assert torch.equal(a, b), m
        torch.testing.assert_close(b, (x.double() @ w.double().T).float(), rtol=1e-5, atol=1e-4)
        if 8 < m <= 16:
            # picked by rows: the few-row kernel under AVX-512, the tiled GEMM under AVX2, which adds
            # each output's products in k order: the same float32 products summed in another order
            a, b = _both_isas(set_isa, lambda x=x: cpu.gguf_gemm(x, qw))
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)
            assert torch.equal(b, cpu.gguf_gemm(x, qw, tiled=False))


@pytest.mark.skipif(not HAS["q8_vnni"], reason="no AVX-512 VNNI on this CPU: the int8 path runs its AVX2 tiles")
@pytest.mark.parametrize("kind", ["q4_1", "q8_0"])
@pytest.mark.parametrize("k", [160, 576])
def test_vnni_int8_gemm_is_the_avx2_int8_gemm_bit_for_bit(kind, k, set_isa):
    """vpdpbusd gives the int32 sums vpmaddubsw + vpmaddwd give, and the float FMAs follow the
    AVX2 tile's even/odd accumulators lane for lane (gguf_gemm_q8_vnni.c): the same bits."""
    blocks, w = _blocks(70, k, kind)
    if kind == "q8_0":
        blocks.view(70, -1, 34)[:5, :, 2:] = 0x80  # weights of -128: |w| = 128 still fits vpdpbusd's unsigned side
    qw = cpu.GGUFWeight.from_blocks(kind, blocks)
    w = cpu.dequantize(qw)
    for m in range(1, 9):
        x = torch.randn(m, k + 40, generator=torch.Generator().manual_seed(m))[:, 20 : 20 + k] * 3
        x[0, 32:64] = 0.0  # an all-zero block: scale 0
        a, b = _both_isas(set_isa, lambda x=x: cpu.gguf_gemm(x, qw, int8_activations=True))
        assert torch.equal(a, b), m
        torch.testing.assert_close(b, (_int8_rows(x) @ w.double().T).float(), rtol=1e-5, atol=1e-4)


def test_isa_choice_follows_the_cpu_flags(monkeypatch):
    avx2 = {"fpu", "sse2", "avx", "avx2", "fma", "f16c"}
    skylake = avx2 | {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512cd"}
    gemm, vnni = cpu.VARIANTS["gemm"][0], cpu.VARIANTS["q8_vnni"][0]
    assert cpu.isa_bits(avx2, "auto") == cpu.isa_bits(avx2, "avx512") == 0  # nothing the CPU lacks
    assert cpu.isa_bits(avx2 | {"avx512f"}, "avx512") == 0  # AVX-512 F alone is not enough
    assert cpu.isa_bits(skylake, "auto") == gemm
    assert cpu.isa_bits(skylake | {"avx512_vnni"}, "auto") == gemm | vnni
    assert cpu.isa_bits(skylake | {"avx512_vnni"}, "avx2") == 0
    with pytest.raises(ValueError, match="CPU ISA must be one of"):
        cpu.isa_bits(skylake, "sse4")
    # the environment's choice, read when the library loads
    monkeypatch.setenv(cpu.ISA_ENV, "avx2")
    cpu.load.cache_clear()
    try:
        assert ctypes.c_int.in_dll(cpu.load(), "kairos_isa").value == 0
    finally:
        monkeypatch.delenv(cpu.ISA_ENV)
        cpu.load.cache_clear()
    assert ctypes.c_int.in_dll(cpu.load(), "kairos_isa").value == cpu.isa_bits(cpu.cpu_flags(), "auto")


def test_gguf_gemm_tiled_sums_in_k_order():
    """The tiled kernel adds each output's K products in order, in float32 (one FMA per product):
    exactly a sequential float32 loop over the dequantized weights, whatever the row position."""
    blocks, w = _blocks(13, 64, "q8_0", seed=7)
    x = torch.randn(19, 64, generator=torch.Generator().manual_seed(1))
    y = cpu.gguf_gemm(x, cpu.GGUFWeight.from_blocks("q8_0", blocks), tiled=True)
    xn, wn = x.numpy(), w.numpy()
    for r, n in ((0, 0), (18, 12), (7, 5), (16, 6)):
        acc = np.float32(0)
        for k in range(64):  # fma(a, b, acc) in float32: the product is exact in float64, one rounding
            acc = np.float32(np.float64(wn[n, k]) * np.float64(xn[r, k]) + np.float64(acc))
        assert y[r, n].item() == acc


def test_gguf_linear_keeps_bias_and_no_dense_weight():
    blocks, w = _blocks(48, 64, "q4_1", seed=1)
    dense = nn.Linear(64, 48, bias=True)
    lin = GGUFLinear(dense, cpu.GGUFWeight.from_blocks("q4_1", blocks))
    assert lin.weight is None and "weight" not in dict(lin.named_parameters())
    assert lin.bias is dense.bias
    for rows in (1, 3, 9, 40):  # both kernels
        x = torch.randn(rows, 64)
        torch.testing.assert_close(lin(x), F.linear(x, w, dense.bias), rtol=1e-5, atol=1e-5)
    xb = torch.randn(5, 64, dtype=torch.bfloat16)  # not float32: a matmul over the dequantized weights
    assert torch.equal(lin(xb), F.linear(xb, w.to(torch.bfloat16), dense.bias.to(torch.bfloat16)))


@pytest.mark.parametrize("kind", ["q4_1", "q8_0"])
def test_dequantize_is_gguf_py_bit_for_bit(kind):
    blocks, w = _blocks(40, 96, kind, seed=3)
    assert torch.equal(cpu.dequantize(cpu.GGUFWeight.from_blocks(kind, blocks)), w)


@pytest.mark.parametrize("kind", ["q4_1", "q8_0"])
def test_gguf_embedding_rows_are_the_dequantized_rows(kind):
    from kairos.models.gguf_linear import GGUFEmbedding

    blocks, w = _blocks(50, 128, kind, seed=5)
    emb = GGUFEmbedding(cpu.GGUFWeight.from_blocks(kind, blocks))
    ids = torch.tensor([7, 0, 49, 7, 13])
    assert (emb.num_embeddings, emb.embedding_dim) == (50, 128)
    assert torch.equal(emb(ids), w[ids])


def test_attach_packs_shards_in_row_order_and_skips_mixed_kinds():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv_proj = nn.Linear(64, 96, bias=False)  # q (32 rows) | k (32) | v (32)
            self.o_proj = nn.Linear(64, 64, bias=False)

    model = nn.Module()
    model.layer = Block()
    q, k, v = (_blocks(32, 64, "q4_1", seed=s) for s in (2, 3, 4))
    o = _blocks(64, 64, "q8_0", seed=5)
    with torch.no_grad():
        model.layer.qkv_proj.weight.copy_(torch.cat([q[1], k[1], v[1]]))
        model.layer.o_proj.weight.copy_(o[1])
    blocks = {"layer.q_proj.weight": ("q4_1", q[0]), "layer.k_proj.weight": ("q4_1", k[0]),
              "layer.v_proj.weight": ("q4_1", v[0]), "layer.o_proj.weight": ("q8_0", o[0])}
    packed = {"qkv_proj": ["q_proj", "k_proj", "v_proj"]}
    assert attach_gguf_blocks(model, blocks, packed, tied_lm_head=False) == 2
    assert isinstance(model.layer.qkv_proj, GGUFLinear) and model.layer.o_proj.qweight.kind == "q8_0"
    x = torch.randn(2, 64)
    qkv = torch.cat([q[1], k[1], v[1]])  # the dequantized shards in row order
    torch.testing.assert_close(model.layer.qkv_proj(x), F.linear(x, qkv), rtol=1e-5, atol=1e-5)

    mixed = nn.Module()
    mixed.layer = Block()
    blocks["layer.k_proj.weight"] = ("q8_0", _blocks(32, 64, "q8_0")[0])
    assert attach_gguf_blocks(mixed, blocks, packed, tied_lm_head=False) == 1  # qkv stays dense
    assert type(mixed.layer.qkv_proj) is nn.Linear


@pytest.mark.parametrize("hq,hkv,d", [(9, 3, 64), (4, 4, 32), (8, 1, 128), (6, 2, 96)])
def test_paged_decode_attention_matches_sdpa(hq, hkv, d):
    gen = torch.Generator().manual_seed(hq * d)
    nb, bs = 64, 4
    k_cache = torch.randn(nb, bs, hkv, d, generator=gen) * 2  # spread scores so softmax is not flat
    v_cache = torch.randn(nb, bs, hkv, d, generator=gen)
    lens = torch.tensor([1, 4, 5, 37, 13], dtype=torch.int32)  # one token, a full block, block + 1, ...
    perm = torch.randperm(nb - 1, generator=gen) + 1
    tables = perm[: 5 * 10].view(5, 10).to(torch.int32)  # scattered blocks, padded past each length
    q = torch.randn(5, hq, d, generator=gen)
    got = cpu.paged_decode_attention(q, k_cache, v_cache, tables, lens, d**-0.5)
    torch.testing.assert_close(got, reference_decode_attention(q, k_cache, v_cache, tables, lens, d**-0.5), rtol=1e-5, atol=1e-5)


def test_paged_decode_attention_softmax_extremes():
    # one dominant key (the others underflow to 0 in exp) and long equal-score runs
    k_cache = torch.zeros(3, 16, 1, 8)
    v_cache = torch.arange(3 * 16 * 8, dtype=torch.float32).view(3, 16, 1, 8)
    k_cache[2, 3, 0] = 50.0
    q = torch.ones(1, 1, 8)
    tables = torch.tensor([[1, 2]], dtype=torch.int32)
    got = cpu.paged_decode_attention(q, k_cache, v_cache, tables, torch.tensor([20], dtype=torch.int32), 1.0)
    torch.testing.assert_close(got[0, 0], v_cache[2, 3, 0])
    flat = cpu.paged_decode_attention(q, torch.zeros(3, 16, 1, 8), v_cache, tables, torch.tensor([32], dtype=torch.int32), 1.0)
    torch.testing.assert_close(flat[0, 0], v_cache[1:3].reshape(32, 8).mean(0))


def test_add_rms_norm_matches_reference_and_updates_residual():
    x, r, w = torch.randn(5, 96), torch.randn(5, 96), torch.randn(96)
    res = r.clone()
    out = cpu.add_rms_norm(x, res, w, 1e-5)
    ref_r = x + r
    ref = w * (ref_r * torch.rsqrt(ref_r.pow(2).mean(-1, keepdim=True) + 1e-5))  # Hugging Face's LlamaRMSNorm
    torch.testing.assert_close(res, ref_r, rtol=0, atol=0)
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)
    alone = r.clone()
    torch.testing.assert_close(cpu.add_rms_norm(None, alone, w, 1e-5),
                               w * (r * torch.rsqrt(r.pow(2).mean(-1, keepdim=True) + 1e-5)), rtol=1e-6, atol=1e-6)
    assert torch.equal(alone, r)  # no x: the residual is only read


def test_silu_mul_matches_torch_including_extremes():
    gu = torch.randn(3, 2 * 45) * 4  # 45: a vector body and a scalar tail
    gu[0, :4] = torch.tensor([100.0, -100.0, 0.0, 88.5])
    g, u = gu.chunk(2, dim=-1)
    torch.testing.assert_close(cpu.silu_mul(gu), F.silu(g) * u, rtol=1e-6, atol=1e-6)


def test_rope_store_kv_matches_reference_rope_and_writes_slots():
    from kairos.models.rope import RotaryEmbedding, apply_rope

    t, hq, hkv, d = 5, 6, 2, 16
    rope = RotaryEmbedding(d, 512, 10000.0, None)
    cos, sin = rope.lookup(torch.tensor([0, 3, 100, 7, 511]), torch.float32)  # [T, 1, D] each
    qkv = torch.randn(t, (hq + 2 * hkv) * d)
    q, k, v = (p.clone() for p in qkv.split([hq * d, hkv * d, hkv * d], dim=-1))
    rq, rk = apply_rope(q.view(t, hq, d), k.view(t, hkv, d), cos, sin)
    k_cache, v_cache = torch.zeros(12, hkv, d), torch.zeros(12, hkv, d)
    slots = torch.tensor([3, 1, 11, 7, 0])
    cpu.rope_store_kv(qkv, hq, hkv, d, cos, sin, k_cache, v_cache, slots)
    torch.testing.assert_close(qkv[:, : hq * d].view(t, hq, d), rq, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(k_cache[slots], rk, rtol=1e-6, atol=1e-6)
    assert torch.equal(v_cache[slots], v.view(t, hkv, d))
    assert v_cache[[2, 4, 5, 6, 8, 9, 10]].abs().sum() == 0  # nothing else written


AVX2 = "fpu sse2 avx avx2 fma f16c bmi2"
CPUS = {  # (platform.machine(), /proc/cpuinfo flags) -> what dtype="auto" picks for a GGUF, an HF dir
    "avx2-only (AMD Zen 3)": ("x86_64", AVX2, "float32", "float32"),
    "avx-512 (Skylake-SP)": ("x86_64", AVX2 + " avx512f avx512bw avx512vl avx512_vnni", "float32", "float32"),
    "avx512-bf16 and amx (Sapphire Rapids)": ("x86_64", AVX2 + " avx512f avx512_bf16 amx_bf16 amx_tile amx_int8",
                                              "float32", "bfloat16"),
    "non-x86 (aarch64)": ("aarch64", "", "float32", "float32"),
}


@pytest.mark.parametrize("cpu", list(CPUS))
def test_auto_dtype_and_kernels_on_a_faked_cpu(cpu, monkeypatch, tiny_llama, tmp_path, auto_dtype_is_float32):
    """The decision alone, on each kind of CPU (its flags faked; the kernels' build is not run):
    a GGUF stays float32 where the kernels run (they read its blocks), else bfloat16 where the CPU
    has bfloat16 units; an HF directory is bfloat16 only there."""
    from kairos.config import ModelConfig
    from kairos.kernels import cpu as kernels
    from kairos.loader import model as model_loader

    machine, flags, want_gguf, want_hf = CPUS[cpu]
    monkeypatch.setattr(kernels, "cpu_flags", lambda: set(flags.split()))
    monkeypatch.setattr(kernels.platform, "machine", lambda: machine)
    monkeypatch.setattr(kernels, "_build", lambda flags: "built")  # (no compile for a CPU that is not this one)
    monkeypatch.setattr(model_loader, "cpu_has_bf16", auto_dtype_is_float32)  # (the real one: the tests pin it)
    kernels.load.cache_clear()
    try:
        assert kernels.load() == ("built" if machine == "x86_64" else None)
        gguf = tmp_path / "m.gguf"
        gguf.write_bytes(b"")  # only the suffix is read
        cpu_dev = torch.device("cpu")

        def auto(**kw) -> str:
            return str(model_loader.resolve_dtype(ModelConfig(**kw), cpu_dev)).removeprefix("torch.")

        assert auto(model=str(gguf)) == want_gguf
        assert auto(model=str(tiny_llama[1])) == want_hf
        # without the kernels a GGUF is dense: bfloat16 where the CPU has the units for it
        assert auto(model=str(gguf), cpu_kernels=False) == want_hf
        assert auto(model=str(tiny_llama[1]), dtype="float32") == "float32"
    finally:
        kernels.load.cache_clear()  # (the next test loads this CPU's kernels)


def _quantize_linears(model, tied: bool) -> dict[str, tuple[str, torch.Tensor]]:
    """GGUF blocks for every linear of a loaded model, by checkpoint name (Q4_1; the lm_head Q8_0)."""
    from kairos.models.llama import PACKED_SHARDS

    blocks = {}
    for name, mod in model.named_modules():
        if not isinstance(mod, nn.Linear) or (name == "lm_head" and tied):
            continue
        kind = "q8_0" if name == "lm_head" else "q4_1"
        q = quantize(mod.weight.detach().numpy(), KINDS[kind])
        prefix, _, leaf = name.rpartition(".")
        shards = PACKED_SHARDS.get(leaf, [leaf])
        sizes = model._shard_sizes(leaf) if len(shards) > 1 else [mod.out_features]
        rows = torch.from_numpy(np.ascontiguousarray(q)).split(sizes)
        for shard, part in zip(shards, rows):
            blocks[f"{prefix}.{shard}.weight" if prefix else f"{shard}.weight"] = (kind, part)
    return blocks


@pytest.mark.parametrize("kind,int8", [("llama", False), ("qwen2", False), ("llama", True)])  # qwen2: biased qkv
def test_decode_stack_is_the_module_path_in_one_call(kind, int8, tmp_path_factory, monkeypatch):
    """Whole-stack decode (one C call) gives bit-identical logits to the per-module kernels
    (also with int8 activations, which both paths then use)."""
    from kairos.models.cpu_layers import (
        KernelLlamaForCausalLM,
        KernelLlamaInt8Act,
        use_int8_activations,
    )
    from kairos.models.gguf_linear import attach_gguf_blocks
    from kairos.models.llama import PACKED_SHARDS, LlamaForCausalLM
    from kairos.wire.sampling_params import SamplingParams

    from conftest import make_tiny
    from engine_helpers import GREEDY, make_engine, run

    _, path = make_tiny(tmp_path_factory, kind)
    calls = []
    real = cpu.decode_stack
    monkeypatch.setattr(cpu, "decode_stack", lambda *a, **k: calls.append(a[1].shape[0]) or real(*a, **k))
    results = []
    for fused in (True, False):
        engine = make_engine(path, block_size=4)
        model = engine.runner.model
        assert type(model) is KernelLlamaForCausalLM
        tied = model.config.tie_word_embeddings
        assert attach_gguf_blocks(model, _quantize_linears(model, tied), PACKED_SHARDS, tied) == 4 * 2 + (not tied)
        if int8:
            assert use_int8_activations(model) == 4 * 2 and type(model) is KernelLlamaInt8Act  # not the lm_head
            assert type(model.lm_head) is not GGUFLinearInt8Act
        if not fused:
            model.__class__ = LlamaForCausalLM  # same modules, one Python call per layer operation
        logits = []
        execute = engine.runner.execute
        engine.runner.execute = lambda batch, ex=execute, out=logits: out.append(ex(batch)) or out[-1]  # (logits, None)
        prompts = [[(i * 7 + j * 13 + 5) % 300 + 3 for j in range(n)] for i, n in enumerate((5, 9, 3, *range(2, 11)))]
        done = run(engine, {0: [(f"r{i}", p, SamplingParams(max_tokens=6, **GREEDY)) for i, p in enumerate(prompts[:2])],
                            2: [("r2", prompts[2], SamplingParams(max_tokens=6, **GREEDY))],
                            9: [(f"r{i}", p, SamplingParams(max_tokens=4, **GREEDY)) for i, p in enumerate(prompts) if i > 2]})
        results.append((done, logits))
    # decode steps of 2 and 3 sequences (few-row matmuls) and of 9 (tiled) went through the stack
    assert calls and set(calls) >= {2, 3, 9}
    (done_a, logits_a), (done_b, logits_b) = results
    assert done_a == done_b and len(logits_a) == len(logits_b)
    for (a, _), (b, _) in zip(logits_a, logits_b):  # every later step also reads the KV the stack wrote
        assert torch.equal(a, b)


def test_int8_activations_are_refused_without_gguf_blocks(tiny_llama):
    from kairos.config import ModelConfig

    from engine_helpers import make_engine

    with pytest.raises(ValueError, match="activation_quant='int8' needs a GGUF model"):
        make_engine(tiny_llama[1], activation_quant="int8")  # an HF directory: float weights, nothing to quantize against
    with pytest.raises(ValueError, match="activation_quant must be one of"):
        ModelConfig(activation_quant="int4")
    with pytest.raises(ValueError, match="activation_quant needs cpu_kernels"):
        ModelConfig(activation_quant="int8", cpu_kernels=False)
