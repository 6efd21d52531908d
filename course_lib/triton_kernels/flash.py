"""FlashAttention-2 in Triton — Chapter 5's algorithm as GPU kernels, forward and backward.

**Forward.** Grid ``(cdiv(N, BLOCK_M), B·H)``: program ``(i, b·H + h)`` owns the query block
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

**Backward** (FlashAttention-2, Dao 2023, §3.1; the structure of Triton's tutorial 06). With
``P = exp(S − LSE)`` recomputed from the forward's log-sum-exp, never stored::

    D   = rowsum(dO ∘ O)                            # [N], one small kernel (flash_bwd_preprocess_kernel)
    dV  = Pᵀ dO
    dP  = dO Vᵀ
    dS  = P ∘ (dP − D)                              # softmax backward: D_i = Σ_j P_ij dP_ij
    dQ  = dS K · scale,      dK = dSᵀ Q · scale

Two kernels share the work so that no two programs ever write the same output rows:

* :func:`flash_bwd_dkdv_kernel` — one program per **key block** ``j``: ``K_j``, ``V_j`` and the
  accumulators ``dK_j``, ``dV_j`` stay in registers while the program loops over the **query
  blocks** (from the diagonal on, when causal), recomputing ``Pᵀ`` for each;
* :func:`flash_bwd_dq_kernel` — one program per **query block** ``i``, looping over the key
  blocks exactly as the forward does, accumulating ``dQ_i``.

The alternative is one kernel that adds each key block's contribution to ``dQ`` with
``tl.atomic_add`` (FlashAttention-2's CUDA code does this). Counting ``[block × block × d]``
products per (query block, key block) pair: the atomic version does 5 (``S``, ``dV``, ``dP``,
``dK``, ``dQ``), the two-kernel version 7 (the dQ kernel recomputes ``S`` and ``dP``), 40 % more
backward FLOPs. What that buys: fp32 atomics add in whatever order the programs happen to
finish, so ``dQ`` would differ in its last bits from run to run, and every key block would do an
HBM read-modify-write of ``dQ_i``. We take deterministic gradients and simpler code; Triton's
tutorial 06 also computes ``dQ`` in a separate loop, without atomics.

:func:`flash_attention` wraps forward and backward in a ``torch.autograd.Function``.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from course_lib.triton_kernels.mode import INTERPRETED
from course_lib.triton_kernels._common import check_block, check_kernel_input, check_same, dot_precision

__all__ = ["flash_attention", "FlashAttention", "flash_attention_forward", "flash_attention_backward",
           "flash_fwd_kernel", "flash_bwd_preprocess_kernel", "flash_bwd_dkdv_kernel", "flash_bwd_dq_kernel",
           "HEAD_DIMS"]

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


def _blocks(block_m: int | None, block_n: int | None) -> tuple[int, int]:
    """Fixed block sizes (interpreter defaults 32 × 16), checked: powers of two ≥ 16, m a multiple of n."""
    block_m = 32 if block_m is None else block_m
    block_n = min(16, block_m) if block_n is None else block_n
    check_block("block_m", block_m, minimum=16)
    check_block("block_n", block_n, minimum=16)
    if block_m % block_n:
        raise ValueError(f"block_m: expected a multiple of block_n = {block_n}; got {block_m}")
    return block_m, block_n


def flash_attention_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                            scale: float | None = None, block_m: int | None = None,
                            block_n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """FlashAttention-2 forward: ``O = softmax(Q Kᵀ · scale [+ causal mask]) V`` and its log-sum-exp.

    Args:
        q, k, v: ``[B, H, N, d]``, same shape, fp32 or fp16 (or bf16 compiled on sm ≥ 80), ``d`` in
            :data:`HEAD_DIMS`
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
    precision = dot_precision(q.dtype)   # fp32: exact "ieee" products (the GPU default is tf32)
    strides = (*q.stride(), *k.stride(), *v.stride(), *o.stride())
    if block_m is None and block_n is None and not INTERPRETED:
        grid = lambda meta: (triton.cdiv(N, meta["BLOCK_M"]), B * H)  # noqa: E731
        flash_fwd_kernel_autotuned[grid](q, k, v, o, lse, scale, *strides, H, N, HEAD_DIM=d,
                                         IS_CAUSAL=bool(causal), PRECISION=precision)
        return o, lse
    block_m, block_n = _blocks(block_m, block_n)
    grid = (triton.cdiv(N, block_m), B * H)
    flash_fwd_kernel[grid](q, k, v, o, lse, scale, *strides, H, N, HEAD_DIM=d, BLOCK_M=block_m,
                           BLOCK_N=block_n, IS_CAUSAL=bool(causal), PRECISION=precision,
                           num_warps=4, num_stages=2)
    return o, lse


# ============================================================================= backward
@triton.jit
def flash_bwd_preprocess_kernel(O, DO, Delta, stride_ob, stride_oh, stride_on, stride_od,
                                stride_dob, stride_doh, stride_don, stride_dod, H, N,
                                HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr):
    """``D = rowsum(dO ∘ O)`` for one query block of one (batch, head); Delta: ``[B, H, N]`` fp32."""
    start_m = tl.program_id(0)
    off_bh = tl.program_id(1)
    off_b = (off_bh // H).to(tl.int64)
    off_h = (off_bh % H).to(tl.int64)
    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < N
    o = tl.load(O + off_b * stride_ob + off_h * stride_oh + offs_m[:, None] * stride_on
                + offs_d[None, :] * stride_od, mask=row_ok[:, None], other=0.0).to(tl.float32)
    do = tl.load(DO + off_b * stride_dob + off_h * stride_doh + offs_m[:, None] * stride_don
                 + offs_d[None, :] * stride_dod, mask=row_ok[:, None], other=0.0).to(tl.float32)
    tl.store(Delta + off_bh.to(tl.int64) * N + offs_m, tl.sum(o * do, axis=1), mask=row_ok)


@triton.jit
def _attn_bwd_dkdv(dk, dv, k, v, q_base, do_base, lse_base, delta_base,
                   stride_qn, stride_qd, stride_don, stride_dod, offs_n, offs_d, lo, N, qk_scale,
                   IS_CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, PRECISION: tl.constexpr):
    """Accumulate ``dK_j``, ``dV_j`` of one key block over the query blocks ``start_m = lo, … < N``.

    Works with transposed scores, ``[BLOCK_N, BLOCK_M]``, so that the key block stays the row
    index: ``Pᵀ = exp2(K Qᵀ·scale·log2e − LSE·log2e)``, ``dV += Pᵀ dO``, ``dPᵀ = V dOᵀ``,
    ``dSᵀ = Pᵀ ∘ (dPᵀ − D)``, ``dK += dSᵀ Q`` (times ``scale`` once, by the caller).
    """
    for start_m in range(lo, N, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)                       # query rows of this step
        row_ok = offs_m < N
        q = tl.load(q_base + offs_m[:, None] * stride_qn + offs_d[None, :] * stride_qd,
                    mask=row_ok[:, None], other=0.0)                    # [BLOCK_M, d]
        do = tl.load(do_base + offs_m[:, None] * stride_don + offs_d[None, :] * stride_dod,
                     mask=row_ok[:, None], other=0.0)                   # [BLOCK_M, d]
        lse = tl.load(lse_base + offs_m, mask=row_ok, other=0.0)       # [BLOCK_M], natural log
        delta = tl.load(delta_base + offs_m, mask=row_ok, other=0.0)   # [BLOCK_M]
        qk_t = tl.dot(k, tl.trans(q), input_precision=PRECISION)       # K Qᵀ: [BLOCK_N, BLOCK_M]
        p_t = tl.math.exp2(qk_t * qk_scale - lse[None, :] * 1.4426950408889634)
        keep = (offs_n[:, None] < N) & row_ok[None, :]
        if IS_CAUSAL:
            keep = keep & (offs_m[None, :] >= offs_n[:, None])         # query r sees key c ≤ r
        p_t = tl.where(keep, p_t, 0.0)
        dv = tl.dot(p_t.to(do.dtype), do, dv, input_precision=PRECISION)
        dp_t = tl.dot(v, tl.trans(do), input_precision=PRECISION)      # V dOᵀ: [BLOCK_N, BLOCK_M]
        ds_t = p_t * (dp_t - delta[None, :])
        dk = tl.dot(ds_t.to(q.dtype), q, dk, input_precision=PRECISION)
    return dk, dv


@triton.jit
def flash_bwd_dkdv_kernel(Q, K, V, DO, DK, DV, LSE, Delta, sm_scale,
                          stride_qb, stride_qh, stride_qn, stride_qd,
                          stride_kb, stride_kh, stride_kn, stride_kd,
                          stride_vb, stride_vh, stride_vn, stride_vd,
                          stride_dob, stride_doh, stride_don, stride_dod,
                          H, N,
                          HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                          IS_CAUSAL: tl.constexpr, PRECISION: tl.constexpr):
    """dK_j and dV_j of one key block of one (batch, head). DK, DV have the strides of K, V."""
    start_n = tl.program_id(0) * BLOCK_N
    off_bh = tl.program_id(1)
    off_b = (off_bh // H).to(tl.int64)
    off_h = (off_bh % H).to(tl.int64)
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    col_ok = offs_n < N
    k_off = off_b * stride_kb + off_h * stride_kh + offs_n[:, None] * stride_kn + offs_d[None, :] * stride_kd
    v_off = off_b * stride_vb + off_h * stride_vh + offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vd
    k = tl.load(K + k_off, mask=col_ok[:, None], other=0.0)                  # [BLOCK_N, d]
    v = tl.load(V + v_off, mask=col_ok[:, None], other=0.0)
    dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    # causal: queries before start_n see none of these keys; start at the query block holding start_n
    if IS_CAUSAL:
        lo = (start_n // BLOCK_M) * BLOCK_M
    else:
        lo = 0
    dk, dv = _attn_bwd_dkdv(dk, dv, k, v,
                            Q + off_b * stride_qb + off_h * stride_qh,
                            DO + off_b * stride_dob + off_h * stride_doh,
                            LSE + off_bh.to(tl.int64) * N, Delta + off_bh.to(tl.int64) * N,
                            stride_qn, stride_qd, stride_don, stride_dod, offs_n, offs_d, lo, N,
                            sm_scale * 1.4426950408889634, IS_CAUSAL, BLOCK_M, PRECISION)
    tl.store(DK + k_off, (dk * sm_scale).to(DK.dtype.element_ty), mask=col_ok[:, None])
    tl.store(DV + v_off, dv.to(DV.dtype.element_ty), mask=col_ok[:, None])


@triton.jit
def flash_bwd_dq_kernel(Q, K, V, DO, DQ, LSE, Delta, sm_scale,
                        stride_qb, stride_qh, stride_qn, stride_qd,
                        stride_kb, stride_kh, stride_kn, stride_kd,
                        stride_vb, stride_vh, stride_vn, stride_vd,
                        stride_dob, stride_doh, stride_don, stride_dod,
                        H, N,
                        HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                        IS_CAUSAL: tl.constexpr, PRECISION: tl.constexpr):
    """dQ_i of one query block of one (batch, head): ``Σ_j (P ∘ (dO Vᵀ − D)) K_j · scale``."""
    start_m = tl.program_id(0) * BLOCK_M
    off_bh = tl.program_id(1)
    off_b = (off_bh // H).to(tl.int64)
    off_h = (off_bh % H).to(tl.int64)
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < N
    q_off = off_b * stride_qb + off_h * stride_qh + offs_m[:, None] * stride_qn + offs_d[None, :] * stride_qd
    q = tl.load(Q + q_off, mask=row_ok[:, None], other=0.0)
    do = tl.load(DO + off_b * stride_dob + off_h * stride_doh + offs_m[:, None] * stride_don
                 + offs_d[None, :] * stride_dod, mask=row_ok[:, None], other=0.0)
    lse = tl.load(LSE + off_bh.to(tl.int64) * N + offs_m, mask=row_ok, other=0.0)
    delta = tl.load(Delta + off_bh.to(tl.int64) * N + offs_m, mask=row_ok, other=0.0)
    k_base = K + off_b * stride_kb + off_h * stride_kh
    v_base = V + off_b * stride_vb + off_h * stride_vh
    qk_scale = sm_scale * 1.4426950408889634
    dq = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    if IS_CAUSAL:
        hi = tl.minimum(start_m + BLOCK_M, N)     # key blocks past the diagonal are skipped
    else:
        hi = N
    for start_n in range(0, hi, BLOCK_N):
        cols = start_n + offs_n
        k = tl.load(k_base + cols[:, None] * stride_kn + offs_d[None, :] * stride_kd,
                    mask=cols[:, None] < N, other=0.0)                  # [BLOCK_N, d]
        v = tl.load(v_base + cols[:, None] * stride_vn + offs_d[None, :] * stride_vd,
                    mask=cols[:, None] < N, other=0.0)
        qk = tl.dot(q, tl.trans(k), input_precision=PRECISION)         # [BLOCK_M, BLOCK_N]
        p = tl.math.exp2(qk * qk_scale - lse[:, None] * 1.4426950408889634)
        keep = (cols[None, :] < N) & row_ok[:, None]
        if IS_CAUSAL:
            keep = keep & (offs_m[:, None] >= cols[None, :])
        p = tl.where(keep, p, 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)        # [BLOCK_M, BLOCK_N]
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(k.dtype), k, dq, input_precision=PRECISION)
    tl.store(DQ + q_off, (dq * sm_scale).to(DQ.dtype.element_ty), mask=row_ok[:, None])


# On a GPU: short autotuning lists for the two backward kernels (they only store, never
# accumulate into their outputs, so the autotuner may run them several times safely).
_BWD_CONFIGS = [
    triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
    for bm, bn, w, s in [(32, 64, 4, 3), (64, 64, 4, 3), (64, 128, 8, 3), (32, 128, 8, 2), (64, 32, 4, 4)]
]
_BWD_KEY = ["N", "HEAD_DIM", "IS_CAUSAL", "PRECISION"]
flash_bwd_dkdv_kernel_autotuned = None if INTERPRETED else triton.autotune(
    configs=_BWD_CONFIGS, key=_BWD_KEY)(flash_bwd_dkdv_kernel)
flash_bwd_dq_kernel_autotuned = None if INTERPRETED else triton.autotune(
    configs=_BWD_CONFIGS, key=_BWD_KEY)(flash_bwd_dq_kernel)


def flash_attention_backward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor,
                             lse: torch.Tensor, do: torch.Tensor, *, causal: bool = False,
                             scale: float | None = None, block_m: int | None = None,
                             block_n: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """FlashAttention-2 backward: ``(dQ, dK, dV)`` from the forward's ``O`` and ``LSE`` and ``dO``.

    Args:
        q, k, v, o, do: ``[B, H, N, d]``, one dtype (as in :func:`flash_attention_forward`).
        lse: ``[B, H, N]`` fp32, the forward's log-sum-exp.
        causal, scale: as in the forward.
        block_m, block_n: query / key block sizes (powers of two ≥ 16); default autotuned on a
            GPU, 32 and 16 in the interpreter.

    Returns:
        ``dQ, dK, dV``, contiguous, with the shape and dtype of ``q``.
    """
    _check_qkv(q, k, v)
    check_same("o", o, "q", q)
    check_same("do", do, "q", q)
    check_kernel_input("lse", lse, ndim=3, dtypes=(torch.float32,))
    if tuple(lse.shape) != tuple(q.shape[:3]):
        raise ValueError(f"lse: expected shape {tuple(q.shape[:3])} ([B, H, N] of q); got {tuple(lse.shape)}")
    B, H, N, d = q.shape
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    # the gradient kernels store dQ, dK, dV with the strides of q, k, v: make all of them dense
    # (a no-op for contiguous inputs; strided views such as slices of a packed QKV are copied once)
    q, k, v, o, do, lse = (t.contiguous() for t in (q, k, v, o, do, lse))
    precision = dot_precision(q.dtype)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    delta = torch.empty((B, H, N), dtype=torch.float32, device=q.device)
    flash_bwd_preprocess_kernel[(triton.cdiv(N, 64), B * H)](o, do, delta, *o.stride(), *do.stride(), H, N,
                                                             HEAD_DIM=d, BLOCK_M=64)
    common = dict(HEAD_DIM=d, IS_CAUSAL=bool(causal), PRECISION=precision)
    strides = (*q.stride(), *k.stride(), *v.stride(), *do.stride())
    if block_m is None and block_n is None and not INTERPRETED:
        flash_bwd_dkdv_kernel_autotuned[lambda meta: (triton.cdiv(N, meta["BLOCK_N"]), B * H)](
            q, k, v, do, dk, dv, lse, delta, scale, *strides, H, N, **common)
        flash_bwd_dq_kernel_autotuned[lambda meta: (triton.cdiv(N, meta["BLOCK_M"]), B * H)](
            q, k, v, do, dq, lse, delta, scale, *strides, H, N, **common)
        return dq, dk, dv
    block_m, block_n = _blocks(block_m, block_n)
    meta = dict(BLOCK_M=block_m, BLOCK_N=block_n, num_warps=4, num_stages=2, **common)
    flash_bwd_dkdv_kernel[(triton.cdiv(N, block_n), B * H)](q, k, v, do, dk, dv, lse, delta, scale,
                                                            *strides, H, N, **meta)
    flash_bwd_dq_kernel[(triton.cdiv(N, block_m), B * H)](q, k, v, do, dq, lse, delta, scale,
                                                          *strides, H, N, **meta)
    return dq, dk, dv


class FlashAttention(torch.autograd.Function):
    """``O = softmax(Q Kᵀ · scale [+ causal mask]) V`` with the Triton forward and backward.

    Saves ``q, k, v, O`` and the ``[B, H, N]`` log-sum-exp — not the ``N × N`` probabilities.
    """

    @staticmethod
    def forward(ctx, q, k, v, causal=False, scale=None, block_m=None, block_n=None):
        o, lse = flash_attention_forward(q, k, v, causal=causal, scale=scale, block_m=block_m, block_n=block_n)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.args = dict(causal=causal, scale=scale, block_m=block_m, block_n=block_n)
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse = ctx.saved_tensors
        dq, dk, dv = flash_attention_backward(q, k, v, o, lse, do, **ctx.args)
        return dq, dk, dv, None, None, None, None


def flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False, *,
                    scale: float | None = None, block_m: int | None = None,
                    block_n: int | None = None) -> torch.Tensor:
    """FlashAttention-2, differentiable: equals ``F.scaled_dot_product_attention(q, k, v,
    is_causal=causal, scale=scale)`` and so do its gradients with respect to ``q, k, v``.

    Shapes and dtypes as in :func:`flash_attention_forward`; returns ``O`` only.
    """
    return FlashAttention.apply(q, k, v, causal, scale, block_m, block_n)
