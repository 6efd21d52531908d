"""Fused row softmax — one program instance per row, one read and one write of the matrix.

PyTorch's unfused ``softmax`` as separate ops (``x.max`` → ``x - m`` → ``exp`` → ``sum`` →
divide) reads and writes the ``[M, N]`` matrix several times; the fused kernel loads a row into
registers once, does all the arithmetic there, and stores the result once: ``2·M·N`` elements
of HBM traffic, the minimum.

One program per row needs the whole row in one block, so ``BLOCK = next_power_of_2(N) ≥ N``;
the lanes past ``N`` are loaded with ``other=-inf`` so that they drop out of the max and give
``exp(-inf) = 0`` in the sum. The row maximum is subtracted before ``exp`` (softmax is shift
invariant; without it ``exp`` overflows for logits above ~88 in fp32, ~11 in fp16).
Arithmetic is in fp32 whatever the storage dtype.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from course_lib.triton_kernels._common import check_kernel_input

__all__ = ["softmax_kernel", "softmax", "MAX_BLOCK"]

#: The largest row the one-block-per-row kernel accepts (registers run out beyond it on a GPU).
MAX_BLOCK = 65536


@triton.jit
def softmax_kernel(out_ptr, in_ptr, in_row_stride, out_row_stride, n_cols, BLOCK: tl.constexpr):
    """Softmax of row ``program_id(0)`` of ``in``, written to the same row of ``out``."""
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    x = tl.load(in_ptr + row * in_row_stride + cols, mask=mask, other=float("-inf")).to(tl.float32)
    x = x - tl.max(x, axis=0)            # max-subtracted: exp never overflows
    num = tl.exp(x)                      # masked lanes: exp(-inf) = 0
    den = tl.sum(num, axis=0)
    tl.store(out_ptr + row * out_row_stride + cols, (num / den).to(out_ptr.dtype.element_ty), mask=mask)


def _num_warps(block: int) -> int:
    # the tutorial's heuristic: more warps for longer rows
    return 16 if block >= 4096 else 8 if block >= 2048 else 4


def softmax(x: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dimension of ``x`` (``[..., N]``, fp32 or fp16) by :func:`softmax_kernel`."""
    check_kernel_input("x", x, min_dim=1)
    x2, out, block = as_rows(x)
    if x2.numel():
        softmax_kernel[(x2.shape[0],)](out, x2, x2.stride(0), out.stride(0), x2.shape[1],
                                       BLOCK=block, num_warps=_num_warps(block))
    return out.reshape(x.shape)


def as_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Prepare ``x`` ``[..., N]`` for a one-program-per-row kernel.

    Returns ``x2`` ``[R, N]`` (a view when the last dimension is contiguous), an empty output
    ``[R, N]`` and ``BLOCK = next_power_of_2(N)``; raises ``ValueError`` when a row is longer
    than :data:`MAX_BLOCK`.
    """
    n_cols = x.shape[-1]
    block = triton.next_power_of_2(max(n_cols, 1))
    if block > MAX_BLOCK:
        raise ValueError(f"x: expected at most {MAX_BLOCK} columns for the one-row-per-program kernel; "
                         f"got shape {tuple(x.shape)}")
    x2 = x.reshape(-1, n_cols)
    if x2.numel() and x2.stride(-1) != 1:
        x2 = x2.contiguous()
    return x2, torch.empty(x2.shape, dtype=x.dtype, device=x.device), block
