"""int8 cross-attention cache: quantisation and the decode-step attention kernel.

Each decode step reads every row's cross-attention keys/values (2 x layers x 1500 x d):
at batch 64 that is ~90 % of the bytes a large-v3 step moves. Storing them as int8 with one
scale per (row, head, position) halves those bytes. The scales fold into the maths, so the
kernel never materialises fp16 keys: score_s = ks_s * (q . k8_s), out = sum_s p_s vs_s v8_s.

The Triton kernel serves CUDA; ``attend_int8_reference`` is the same function in plain
PyTorch (CPU tests, and the check the benchmark runs before timing the kernel).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def quantize(x: Tensor) -> tuple[Tensor, Tensor]:
    """[..., S, D] -> int8 values and a float16 scale per [..., S] (symmetric, absmax)."""
    scale = x.float().abs().amax(-1).clamp(min=1e-6) / 127.0
    q = torch.round(x.float() / scale[..., None]).clamp(-127, 127).to(torch.int8)
    return q, scale.to(torch.float16)


def attend_int8_reference(q: Tensor, k8: Tensor, ks: Tensor, v8: Tensor, vs: Tensor) -> Tensor:
    """q [B, H, T, D]; k8/v8 [B, H, S, D] int8; ks/vs [B, H, S] -> [B, H, T, D]."""
    k = k8.float() * ks.float()[..., None]
    v = v8.float() * vs.float()[..., None]
    att = (q.float() @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    return (att.softmax(-1) @ v).to(q.dtype)


try:
    import triton
    import triton.language as tl
except ImportError:  # CPU images: the reference path serves
    triton = None

if triton is not None:

    @triton.jit
    def _cross_int8_kernel(Q, K, V, KS, VS, O, S, sm_scale,
                           sqb, sqh, skb, skh, sks, ssb, ssh, sob, soh,
                           H: tl.constexpr, D: tl.constexpr, BLOCK: tl.constexpr):
        pid = tl.program_id(0)
        b = pid // H
        h = pid % H
        d = tl.arange(0, D)
        q = tl.load(Q + b * sqb + h * sqh + d).to(tl.float32) * sm_scale
        m = tl.zeros([1], dtype=tl.float32) - float("inf")
        l_sum = tl.zeros([1], dtype=tl.float32)
        acc = tl.zeros([D], dtype=tl.float32)
        k_base = K + b * skb + h * skh
        v_base = V + b * skb + h * skh
        s_base = b * ssb + h * ssh
        for start in range(0, S, BLOCK):
            s = start + tl.arange(0, BLOCK)
            valid = s < S
            k = tl.load(k_base + s[:, None] * sks + d[None, :], mask=valid[:, None], other=0).to(tl.float32)
            ks = tl.load(KS + s_base + s, mask=valid, other=0).to(tl.float32)
            scores = tl.sum(k * q[None, :], axis=1) * ks
            scores = tl.where(valid, scores, float("-inf"))
            m_new = tl.maximum(m, tl.max(scores, axis=0))
            alpha = tl.exp(m - m_new)
            p = tl.exp(scores - m_new)
            l_sum = l_sum * alpha + tl.sum(p, axis=0)
            vs = tl.load(VS + s_base + s, mask=valid, other=0).to(tl.float32)
            v = tl.load(v_base + s[:, None] * sks + d[None, :], mask=valid[:, None], other=0).to(tl.float32)
            acc = acc * alpha + tl.sum((p * vs)[:, None] * v, axis=0)
            m = m_new
        tl.store(O + b * sob + h * soh + d, (acc / l_sum).to(O.dtype.element_ty))


def attend_int8(q: Tensor, k8: Tensor, ks: Tensor, v8: Tensor, vs: Tensor) -> Tensor:
    """Decode-step cross-attention over an int8 cache (q has one position per row)."""
    if triton is None or not q.is_cuda or q.shape[2] != 1:
        return attend_int8_reference(q, k8, ks, v8, vs)
    b, h, _, d = q.shape
    s = k8.shape[2]
    q2 = q[:, :, 0, :].contiguous()
    out = torch.empty_like(q2)
    assert k8.stride() == v8.stride() and ks.stride() == vs.stride() and k8.stride(3) == 1
    _cross_int8_kernel[(b * h,)](
        q2, k8, v8, ks, vs, out, s, 1.0 / math.sqrt(d),
        q2.stride(0), q2.stride(1), k8.stride(0), k8.stride(1), k8.stride(2), ks.stride(0), ks.stride(1),
        out.stride(0), out.stride(1), H=h, D=d, BLOCK=128, num_warps=8)
    return out[:, :, None, :]
