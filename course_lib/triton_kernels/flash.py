"""FlashAttention-2 forward in Triton — Chapter 5's algorithm as a GPU kernel.

Grid ``(cdiv(N, BLOCK_M), B·H)``: program ``(i, b·H + h)`` owns the query block
``Q_i = Q[b, h, i·BLOCK_M : (i+1)·BLOCK_M]`` and keeps, in registers (on-chip SRAM),

* ``m``   — the running row maximum of the scores seen so far (``[BLOCK_M]``),
* ``ℓ``   — the running sum of ``exp(s − m)`` (``[BLOCK_M]``),
* ``acc`` — the **unnormalised** output ``Σ_j exp(s_j − m) v_j`` (``[BLOCK_M, d]``, fp32).

It streams the key/value blocks ``K_j, V_j`` (``BLOCK_N`` rows each) from HBM, and for each one
does the online-softmax update (FlashAttention-2, Dao 2023)::

    S     = Q_i K_jᵀ · scale                      # [BLOCK_M, BLOCK_N], fp32
    m_new = max(m, rowmax(S))
    P     = exp(S − m_new)
    α     = exp(m − m_new)                         # rescales what was accumulated so far
    ℓ     = α · ℓ + rowsum(P)
    acc   = α · acc + P V_j
    m     = m_new

and only after the last block normalises once, ``O_i = acc / ℓ``, and stores the log-sum-exp
``LSE_i = m + log ℓ`` (what the backward pass needs to recompute ``P``). ``S`` and ``P`` never
reach HBM. This is ``course_lib.flash``'s FA2 loop order, one program per query block.

Causal attention (query ``r`` sees keys ``c ≤ r``) skips the key blocks wholly above the
diagonal — they are never loaded — and masks only the blocks that cross it. The kernel therefore
runs the inner loop in two stages: blocks ``[0, lo)`` that need no mask at all (wholly below the
diagonal, or full blocks when not causal), then blocks ``[lo, hi)`` with the mask (the diagonal
blocks when causal; the ragged last block when ``N`` is not a multiple of ``BLOCK_N``).

Two GPU details: the exponentials are computed as ``exp2`` with the scale multiplied by
``log2(e)`` (one multiply folded into the score scale; ``exp2`` is the hardware instruction),
so ``m`` lives in base-2 units inside the kernel; and on a GPU the block sizes, ``num_warps``
and ``num_stages`` are picked by ``triton.autotune`` from a short list (only when compiled:
the interpreter would time every configuration).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from course_lib.triton_kernels.mode import INTERPRETED
from course_lib.triton_kernels._common import check_block, check_kernel_input, check_same

__all__ = ["flash_attention_forward", "flash_fwd_kernel", "HEAD_DIMS"]

#: Head dimensions the kernel supports (powers of two: the d axis is one tl.arange block).
HEAD_DIMS = (16, 32, 64, 128)
_LOG2E = 1.4426950408889634
_LN2 = 0.6931471805599453


@triton.jit
def _attn_fwd_inner(acc, l_i, m_i, q, k_base, v_base, stride_kn, stride_kd, stride_vn, stride_vd,
                    offs_m, offs_n, offs_d, lo, hi, N, qk_scale,
                    IS_CAUSAL: tl.constexpr, MASKED: tl.constexpr, BLOCK_N: tl.constexpr,
                    PRECISION: tl.constexpr):
    """Online-softmax update of (acc, ℓ, m) over key blocks ``start_n = lo, lo + BLOCK_N, … < hi``."""
    for start_n in range(lo, hi, BLOCK_N):
        start_n = tl.multiple_of(start_n, BLOCK_N)
        cols = start_n + offs_n                                           # [BLOCK_N] key indices
        k_ptrs = k_base + cols[None, :] * stride_kn + offs_d[:, None] * stride_kd   # Kᵀ block [d, BLOCK_N]
        v_ptrs = v_base + cols[:, None] * stride_vn + offs_d[None, :] * stride_vd   # V block  [BLOCK_N, d]
        if MASKED:
            k = tl.load(k_ptrs, mask=cols[None, :] < N, other=0.0)
            v = tl.load(v_ptrs, mask=cols[:, None] < N, other=0.0)
        else:
            k = tl.load(k_ptrs)
            v = tl.load(v_ptrs)
        qk = tl.dot(q, k, input_precision=PRECISION) * qk_scale          # scores, base-2 units
        if MASKED:
            keep = cols[None, :] < N
            if IS_CAUSAL:
                keep = keep & (offs_m[:, None] >= cols[None, :])
            qk = tl.where(keep, qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        p = tl.math.exp2(qk - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        acc = tl.dot(p.to(v.dtype), v, acc, input_precision=PRECISION)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def flash_fwd_kernel(Q, K, V, O, LSE, sm_scale,
                     stride_qb, stride_qh, stride_qn, stride_qd,
                     stride_kb, stride_kh, stride_kn, stride_kd,
                     stride_vb, stride_vh, stride_vn, stride_vd,
                     stride_ob, stride_oh, stride_on, stride_od,
                     H, N,
                     HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                     IS_CAUSAL: tl.constexpr, PRECISION: tl.constexpr):
    """One query block of one (batch, head): O_i and LSE_i. Q, K, V, O: [B, H, N, d]; LSE: [B, H, N]."""
    start_m = tl.program_id(0)
    off_bh = tl.program_id(1)
    off_b = (off_bh // H).to(tl.int64)          # 64-bit offsets: B·H·N·d can exceed 2³¹
    off_h = (off_bh % H).to(tl.int64)
    q_base = Q + off_b * stride_qb + off_h * stride_qh
    k_base = K + off_b * stride_kb + off_h * stride_kh
    v_base = V + off_b * stride_vb + off_h * stride_vh
    o_base = O + off_b * stride_ob + off_h * stride_oh

    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)      # query rows of this program
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < N

    q = tl.load(q_base + offs_m[:, None] * stride_qn + offs_d[None, :] * stride_qd,
                mask=row_ok[:, None], other=0.0)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    qk_scale = sm_scale * 1.4426950408889634                # log2(e): exp(x) = exp2(x·log2 e)

    if IS_CAUSAL:
        lo = start_m * BLOCK_M                     # key blocks [0, lo) lie wholly below the diagonal
        hi = tl.minimum((start_m + 1) * BLOCK_M, N)  # blocks from hi on lie above it: skipped
    else:
        lo = (N // BLOCK_N) * BLOCK_N              # full key blocks need no mask
        hi = N
    acc, l_i, m_i = _attn_fwd_inner(acc, l_i, m_i, q, k_base, v_base, stride_kn, stride_kd,
                                    stride_vn, stride_vd, offs_m, offs_n, offs_d, 0, lo, N, qk_scale,
                                    IS_CAUSAL, False, BLOCK_N, PRECISION)
    acc, l_i, m_i = _attn_fwd_inner(acc, l_i, m_i, q, k_base, v_base, stride_kn, stride_kd,
                                    stride_vn, stride_vd, offs_m, offs_n, offs_d, lo, hi, N, qk_scale,
                                    IS_CAUSAL, True, BLOCK_N, PRECISION)

    acc = acc / l_i[:, None]                                  # normalise once, at the end
    lse = (m_i + tl.math.log2(l_i)) * 0.6931471805599453      # back to natural log: m + ln ℓ
    tl.store(LSE + off_bh.to(tl.int64) * N + offs_m, lse, mask=row_ok)
    tl.store(o_base + offs_m[:, None] * stride_on + offs_d[None, :] * stride_od,
             acc.to(O.dtype.element_ty), mask=row_ok[:, None])


# On a GPU: a short autotuning list (BLOCK_M a multiple of BLOCK_N, as the causal split needs).
_CONFIGS = [
    triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
    for bm, bn, w, s in [
        (128, 64, 4, 3), (128, 64, 8, 3), (128, 128, 8, 3), (128, 32, 4, 4),
        (64, 64, 4, 3), (64, 32, 4, 4), (128, 64, 4, 4), (128, 128, 8, 2),
    ]
]
flash_fwd_kernel_autotuned = None if INTERPRETED else triton.autotune(
    configs=_CONFIGS, key=["N", "HEAD_DIM", "IS_CAUSAL", "PRECISION"])(flash_fwd_kernel)


def _check_qkv(q, k, v) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_kernel_input(name, t, ndim=4)
    check_same("k", k, "q", q)
    check_same("v", v, "q", q)
    d = q.shape[-1]
    if d not in HEAD_DIMS:
        raise ValueError(f"q: expected head_dim (last dimension) in {HEAD_DIMS}; got shape {tuple(q.shape)}")
    if q.shape[2] == 0:
        raise ValueError(f"q: expected a sequence length ≥ 1; got shape {tuple(q.shape)}")


def flash_attention_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                            scale: float | None = None, block_m: int | None = None,
                            block_n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """FlashAttention-2 forward: ``O = softmax(Q Kᵀ · scale [+ causal mask]) V`` and its log-sum-exp.

    Args:
        q, k, v: ``[B, H, N, d]``, same shape, fp32 or fp16, ``d`` in :data:`HEAD_DIMS`
            (self-attention; ``causal`` means query ``r`` sees keys ``c ≤ r``).
        causal: apply the causal mask (key blocks above the diagonal are skipped).
        scale: multiplies the scores; defaults to ``1/√d`` (the name used by ``course_lib.flash``).
        block_m, block_n: query / key block sizes, powers of two ≥ 16 with ``block_m`` a multiple
            of ``block_n``. Default: autotuned on a GPU; 32 and 16 in the interpreter.

    Returns:
        ``(O, LSE)``: ``O`` of the shape and dtype of ``q``; ``LSE`` ``[B, H, N]`` in fp32,
        ``LSE[b, h, r] = log Σ_c exp(s_rc)`` over the keys query ``r`` sees.
    """
    _check_qkv(q, k, v)
    B, H, N, d = q.shape
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    o = torch.empty_like(q)
    lse = torch.empty((B, H, N), dtype=torch.float32, device=q.device)
    # fp32 inputs: exact fp32 dot products (the GPU default would be tf32); fp16: tensor cores.
    precision = "ieee" if q.dtype == torch.float32 else "tf32"
    strides = (*q.stride(), *k.stride(), *v.stride(), *o.stride())
    if block_m is None and block_n is None and not INTERPRETED:
        grid = lambda meta: (triton.cdiv(N, meta["BLOCK_M"]), B * H)  # noqa: E731
        flash_fwd_kernel_autotuned[grid](q, k, v, o, lse, scale, *strides, H, N, HEAD_DIM=d,
                                         IS_CAUSAL=bool(causal), PRECISION=precision)
        return o, lse
    block_m = 32 if block_m is None else block_m
    block_n = min(16, block_m) if block_n is None else block_n
    check_block("block_m", block_m, minimum=16)
    check_block("block_n", block_n, minimum=16)
    if block_m % block_n:
        raise ValueError(f"block_m: expected a multiple of block_n = {block_n}; got {block_m}")
    grid = (triton.cdiv(N, block_m), B * H)
    flash_fwd_kernel[grid](q, k, v, o, lse, scale, *strides, H, N, HEAD_DIM=d, BLOCK_M=block_m,
                           BLOCK_N=block_n, IS_CAUSAL=bool(causal), PRECISION=precision,
                           num_warps=4, num_stages=2)
    return o, lse
