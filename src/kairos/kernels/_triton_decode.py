"""The Triton kernel of :mod:`kairos.kernels.triton_attention` (imported only where Triton is)."""

import triton
import triton.language as tl


@triton.jit
def paged_decode(q_ptr, k_ptr, v_ptr, tables_ptr, lens_ptr, out_ptr, scale,
                 stride_qb, stride_qh, stride_kb, stride_kt, stride_kh, stride_tb, stride_ob, stride_oh,
                 G: tl.constexpr, GP: tl.constexpr, D: tl.constexpr, DP: tl.constexpr, BS: tl.constexpr):
    b = tl.program_id(0)
    h = tl.program_id(1)  # KV head; its query heads are h * G .. h * G + G - 1 (HF repeat_kv order)
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
    for j in range(0, tl.cdiv(n, BS)):
        block = tl.load(tables_ptr + b * stride_tb + j).to(tl.int64)
        valid = j * BS + t < n  # [BS]
        td = valid[:, None] & (d[None, :] < D)
        off = block * stride_kb + t[:, None] * stride_kt + h * stride_kh + d[None, :]  # [BS, DP]
        k = tl.load(k_ptr + off, mask=td, other=0.0).to(tl.float32)
        v = tl.load(v_ptr + off, mask=td, other=0.0).to(tl.float32)
        s = tl.sum(q[:, None, :] * k[None, :, :], axis=2)  # [GP, BS]
        s = tl.where(valid[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        p = tl.exp(s - m_new[:, None])
        alpha = tl.exp(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.sum(p[:, :, None] * v[None, :, :], axis=1)
        m_i = m_new
    out = acc / l_i[:, None]
    tl.store(out_ptr + b * stride_ob + (h * G + g)[:, None] * stride_oh + d[None, :],
             out.to(out_ptr.dtype.element_ty), mask=gd)
