"""Fused RMSNorm forward — ``y = x / sqrt(mean(x²) + eps) · w`` in one read and one write.

RMSNorm (Zhang & Sennrich, 2019) normalises each row of ``x`` (``[..., N]``) by its root mean
square and scales by a learned weight ``w`` (``[N]``); no mean subtraction, no bias. As for the
softmax, one program instance owns one row (``BLOCK = next_power_of_2(N)``): it loads the row,
computes ``mean(x²)`` in fp32 — dividing by ``N``, not by ``BLOCK``: the masked lanes are loaded
as 0 and add nothing to the sum of squares —, scales, and stores.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from course_lib.triton_kernels._common import check_kernel_input
from course_lib.triton_kernels.softmax import _num_warps, as_rows

__all__ = ["rms_norm_kernel", "rms_norm"]


@triton.jit
def rms_norm_kernel(out_ptr, in_ptr, w_ptr, in_row_stride, out_row_stride, n_cols, eps,
                    BLOCK: tl.constexpr):
    """RMSNorm of row ``program_id(0)``: ``x · rsqrt(mean(x²) + eps) · w``."""
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    x = tl.load(in_ptr + row * in_row_stride + cols, mask=mask, other=0.0).to(tl.float32)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    mean_sq = tl.sum(x * x, axis=0) / n_cols
    y = x * tl.rsqrt(mean_sq + eps) * w
    tl.store(out_ptr + row * out_row_stride + cols, y.to(out_ptr.dtype.element_ty), mask=mask)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """RMSNorm over the last dimension, like ``F.rms_norm(x, (N,), weight, eps)``.

    Args:
        x: ``[..., N]``, fp32 or fp16.
        weight: ``[N]``, same dtype and device as ``x``.
        eps: added to the mean square before the square root.
    """
    check_kernel_input("x", x, min_dim=1)
    check_kernel_input("weight", weight, ndim=1)
    n_cols = x.shape[-1]
    if weight.shape[0] != n_cols:
        raise ValueError(f"weight: expected shape ({n_cols},) (the last dimension of x); got {tuple(weight.shape)}")
    if weight.dtype != x.dtype:
        raise ValueError(f"weight: expected the dtype of x, {x.dtype}; got {weight.dtype}")
    if not eps >= 0:
        raise ValueError(f"eps: expected a number ≥ 0; got {eps!r}")
    x2, out, block = as_rows(x)
    if x2.numel():
        rms_norm_kernel[(x2.shape[0],)](out, x2, weight.contiguous(), x2.stride(0), out.stride(0), n_cols,
                                        float(eps), BLOCK=block, num_warps=_num_warps(block))
    return out.reshape(x.shape)
