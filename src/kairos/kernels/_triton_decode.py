"""The Triton kernels of :mod:`kairos.kernels.triton_attention` (imported only where Triton is).

``paged_decode``: one program per (sequence, KV head, split) walks the blocks of its split with
an online softmax. With one split it writes the normalised output; with more it writes the
split's partial state — its running max ``m``, sum ``l`` and unnormalised ``acc`` — for
``combine_splits`` to merge (flash-decoding), so a few long sequences still fill the GPU.
"""

import triton
import triton.language as tl


@triton.jit(do_not_specialize=["splits"])  # (a split count of 1 or of 16 would compile anew)
def paged_decode(q_ptr, k_ptr, v_ptr, tables_ptr, lens_ptr, out_ptr, part_o_ptr, part_ml_ptr, scale,
                 splits,
                 stride_qb, stride_qh, stride_kb, stride_kt, stride_kh, stride_tb, stride_ob, stride_oh,
                 G: tl.constexpr, GP: tl.constexpr, D: tl.constexpr, DP: tl.constexpr, BS: tl.constexpr,
                 PARTIAL: tl.constexpr):
    b = tl.program_id(0)
    h = tl.program_id(1)  # KV head; its query heads are h * G .. h * G + G - 1 (HF repeat_kv order)
    s = tl.program_id(2)
    n = tl.load(lens_ptr + b)
    g = tl.arange(0, GP)
    d = tl.arange(0, DP)
    t = tl.arange(0, BS)
    gd = (g[:, None] < G) & (d[None, :] < D)
    q = tl.load(q_ptr + b * stride_qb + (h * G + g)[:, None] * stride_qh + d[None, :], mask=gd, other=0.0)
    q = q.to(tl.float32) * scale  # [GP, DP]
    m_i = tl.full([GP], float("-inf"), tl.float32)
    l_i = tl.zeros([GP], tl.float32)
    acc = tl.zeros([GP, DP], tl.float32)
    # this sequence's blocks, cut evenly by its own length (not the table's width, which under a
    # CUDA graph is the longest a context may be); a split past a short context does nothing
    nblocks = tl.cdiv(n, BS)
    per_split = tl.cdiv(nblocks, splits)
    first = s * per_split
    last = tl.minimum(first + per_split, nblocks)
    for j in range(first, last):
        block = tl.load(tables_ptr + b * stride_tb + j).to(tl.int64)
        valid = j * BS + t < n  # [BS]
        td = valid[:, None] & (d[None, :] < D)
        off = block * stride_kb + t[:, None] * stride_kt + h * stride_kh + d[None, :]  # [BS, DP]
        k = tl.load(k_ptr + off, mask=td, other=0.0).to(tl.float32)
        v = tl.load(v_ptr + off, mask=td, other=0.0).to(tl.float32)
        sc = tl.sum(q[:, None, :] * k[None, :, :], axis=2)  # [GP, BS]
        sc = tl.where(valid[None, :], sc, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(sc, axis=1))
        p = tl.exp(sc - m_new[:, None])
        alpha = tl.exp(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.sum(p[:, :, None] * v[None, :, :], axis=1)
        m_i = m_new
    heads = h * G + g  # [GP]
    if not PARTIAL:
        tl.store(out_ptr + b * stride_ob + heads[:, None] * stride_oh + d[None, :],
                 (acc / l_i[:, None]).to(out_ptr.dtype.element_ty), mask=gd)
    else:
        # partials: part_o [B, Hq, splits, DP], part_ml [B, Hq, splits, 2] (contiguous float32)
        row = (b * (tl.num_programs(1) * G) + heads) * splits + s  # [GP]
        tl.store(part_o_ptr + row[:, None] * DP + d[None, :], acc, mask=gd)
        tl.store(part_ml_ptr + row * 2, m_i, mask=g < G)
        tl.store(part_ml_ptr + row * 2 + 1, l_i, mask=g < G)


@triton.jit(do_not_specialize=["splits"])
def combine_splits(part_o_ptr, part_ml_ptr, out_ptr, splits, stride_ob, stride_oh,
                   D: tl.constexpr, DP: tl.constexpr, SP: tl.constexpr):
    b = tl.program_id(0)
    hq = tl.program_id(1)
    s = tl.arange(0, SP)
    d = tl.arange(0, DP)
    row = (b * tl.num_programs(1) + hq) * splits + s  # [SP]
    live = s < splits
    m = tl.load(part_ml_ptr + row * 2, mask=live, other=float("-inf"))
    l_s = tl.load(part_ml_ptr + row * 2 + 1, mask=live, other=0.0)
    o = tl.load(part_o_ptr + row[:, None] * DP + d[None, :], mask=live[:, None] & (d[None, :] < D), other=0.0)
    m_all = tl.max(m, axis=0)  # finite: split 0 holds the first token of every context
    w = tl.where(m > float("-inf"), tl.exp(m - m_all), 0.0)  # empty splits weigh nothing
    out = tl.sum(w[:, None] * o, axis=0) / tl.sum(w * l_s, axis=0)
    tl.store(out_ptr + b * stride_ob + hq * stride_oh + d, out.to(out_ptr.dtype.element_ty), mask=d < D)
