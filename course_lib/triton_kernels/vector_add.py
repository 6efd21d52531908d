"""Vector add — Triton's programming model in one kernel.

A Triton kernel is written for **one program instance**. The launch grid says how many
instances run (``grid = (cdiv(n, BLOCK),)``); each asks ``tl.program_id(0)`` which one it is and
works on one **block** of ``BLOCK`` consecutive elements. It does not index elements one by one:
``tl.arange(0, BLOCK)`` is a whole vector of offsets, ``x_ptr + offsets`` a vector of
**pointers**, and ``tl.load`` / ``tl.store`` move the whole block between global memory (HBM)
and registers. When ``n`` is not a multiple of ``BLOCK`` the last block runs past the end: the
**mask** ``offsets < n`` switches those lanes off in the load and in the store.

``BLOCK`` is a ``tl.constexpr``: known when the kernel is compiled, and a power of two
(``tl.arange`` requires one).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from course_lib.triton_kernels._common import check_block, check_kernel_input, check_same

__all__ = ["add_kernel", "add"]


@triton.jit
def add_kernel(x_ptr, y_ptr, out_ptr, n_elements, BLOCK: tl.constexpr):
    """out[i] = x[i] + y[i] for the block of this program instance."""
    pid = tl.program_id(axis=0)                  # which block this instance owns
    offsets = pid * BLOCK + tl.arange(0, BLOCK)  # [BLOCK] element indices
    mask = offsets < n_elements                  # the tail of the last block is switched off
    x = tl.load(x_ptr + offsets, mask=mask)
    y = tl.load(y_ptr + offsets, mask=mask)
    tl.store(out_ptr + offsets, x + y, mask=mask)


def add(x: torch.Tensor, y: torch.Tensor, *, block: int = 1024) -> torch.Tensor:
    """``x + y`` computed by :func:`add_kernel`.

    Args:
        x, y: tensors of the same shape, dtype (fp32 or fp16) and device (any shape; they are
            treated as flat vectors).
        block: elements per program instance, a power of two.

    Returns:
        A new tensor of the shape and dtype of ``x``.
    """
    check_kernel_input("x", x)
    check_kernel_input("y", y)
    check_same("y", y, "x", x)
    check_block("block", block)
    x, y = x.contiguous(), y.contiguous()
    out = torch.empty_like(x)
    n = x.numel()
    if n == 0:
        return out
    grid = (triton.cdiv(n, block),)
    add_kernel[grid](x, y, out, n, BLOCK=block)
    return out
